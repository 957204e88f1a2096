"""Honeytokens: minted per session, recognised by their tag, found in requests, filled into replies."""

from __future__ import annotations

import base64
import secrets
import uuid

import pytest

from feint.camouflage.engine.events import EventId, EventSink
from feint.camouflage.engine.honeytokens import (
    HITS_MAX,
    Honeytokens,
    HoneytokenWatch,
    TokenKind,
    fill,
    fill_reply,
    find_tokens,
)
from feint.platform.keys import KEY_PREFIX, new_key
from tests.unit.camouflage.engine.fakes import TokenStore, request

pytestmark = pytest.mark.unit
SECRET = b"\x01" * 32


def test_minted_tokens_are_unique_and_recognised() -> None:
    """Each session gets distinct tokens; each tagged kind verifies; the API key has a real key's shape."""
    h = Honeytokens(SECRET)
    a, b = h.mint(uuid.uuid4()), h.mint(uuid.uuid4())
    assert set(a.values.values()).isdisjoint(b.values.values())
    assert h.kind_of(a.values[TokenKind.API_KEY]) is TokenKind.API_KEY
    assert h.kind_of(a.values[TokenKind.AWS_ACCESS_KEY_ID]) is TokenKind.AWS_ACCESS_KEY_ID
    assert h.kind_of(a.values[TokenKind.DATABASE_PASSWORD]) is TokenKind.DATABASE_PASSWORD
    api = a.values[TokenKind.API_KEY]
    assert api.startswith(KEY_PREFIX) and len(api) == len(new_key())
    assert a.values[TokenKind.DATABASE_PASSWORD] in a.values[TokenKind.DATABASE_URL]


def test_real_keys_and_other_secrets_are_not_honeytokens() -> None:
    """Real Feint keys, tokens under another secret, and altered tokens do not verify."""
    h = Honeytokens(SECRET)
    other = Honeytokens(b"\x02" * 32).mint(uuid.uuid4())
    assert all(h.kind_of(new_key()) is None for _ in range(200))
    assert all(h.kind_of(v) is None for v in other.values.values())
    mine = h.mint(uuid.uuid4()).values[TokenKind.API_KEY]
    flipped = mine[:-1] + ("A" if mine[-1] != "A" else "B")
    assert h.kind_of(flipped) is None
    # The last of 43 base64 digits carries 2 spare bits: every other spelling of the same bytes is refused.
    for digit in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        assert h.kind_of(mine[:-1] + digit) is (TokenKind.API_KEY if digit == mine[-1] else None)
    assert h.kind_of("AKIA" + "!" * 16) is None
    with pytest.raises(Exception, match="32 bytes"):
        Honeytokens(b"short")


def test_find_in_headers_query_body_and_basic_auth() -> None:
    """A token anywhere (query, header, body, inside Basic credentials) is found, with where."""
    h = Honeytokens(SECRET)
    tokens = h.mint(uuid.uuid4()).values
    api, aws, pw = tokens[TokenKind.API_KEY], tokens[TokenKind.AWS_ACCESS_KEY_ID], tokens[TokenKind.DATABASE_PASSWORD]
    basic = base64.b64encode(f"app_rw:{pw}".encode())
    req = request(
        b"/api?key=" + api.encode(),
        headers=((b"X-Amz-Credential", aws.encode() + b"/20260101/us-east-1"), (b"Authorization", b"Basic " + basic)),
        body=b'{"token": "' + api.encode() + b'"}',
    )
    hits = h.find_in_request(req)
    assert {(hit.kind, hit.where) for hit in hits} == {
        (TokenKind.API_KEY, "target"),
        (TokenKind.AWS_ACCESS_KEY_ID, "header:x-amz-credential"),
        (TokenKind.DATABASE_PASSWORD, "header:authorization"),
    }
    same = find_tokens(h, target=req.target, headers=list(req.headers), body=req.body)
    assert [x.value for x in same] == [x.value for x in hits]


def test_benign_requests_have_no_hits_and_scans_are_bounded() -> None:
    """Ordinary traffic and look-alike noise give no hit; hits per request are capped."""
    h = Honeytokens(SECRET)
    noise = b" ".join(
        [new_key().encode(), b"AKIAIOSFODNN7EXAMPLE", b"ftabcdefghijklmnop", secrets.token_hex(40).encode()]
    )
    assert h.find([("body", noise * 50)]) == []
    many = b" ".join(h.mint(uuid.uuid4()).values[TokenKind.API_KEY].encode() for _ in range(HITS_MAX + 5))
    assert len(h.find([("body", many)])) == HITS_MAX


def test_fill_replaces_placeholders_and_fixes_content_length() -> None:
    """Placeholders become the session's values; Content-Length follows; unknown kinds stay visible."""
    tokens = Honeytokens(SECRET).mint(uuid.uuid4())
    body = b"A={{honeytoken:api_key}}\nB={{honeytoken:nope}}\n"
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    filled, count = fill_reply(raw, tokens)
    head, _, new_body = filled.partition(b"\r\n\r\n")
    assert count == 1
    assert tokens.values[TokenKind.API_KEY].encode() in new_body and b"{{honeytoken:nope}}" in new_body
    assert f"Content-Length: {len(new_body)}".encode() in head
    assert fill(b"plain", tokens) == (b"plain", 0)
    assert fill_reply(b"no head", tokens) == (b"no head", 0)


async def test_watch_alerts_naming_the_session() -> None:
    """A stored token coming back raises HONEYTOKEN_USED naming its session; a stranger's key does not."""
    store = TokenStore()
    sink = EventSink()
    seen = []
    sink.listen(seen.append)
    watch = HoneytokenWatch(honeytokens=Honeytokens(SECRET), store=store, events=sink)
    tenant, session = uuid.uuid4(), uuid.uuid4()
    tokens = await watch.plant(tenant_id=tenant, session_id=session)
    owners = await watch.failed_key(tokens.values[TokenKind.API_KEY], service="credits", path="/v1/accounts")
    assert [(o.tenant_id, o.session_id) for o in owners] == [(tenant, session)]
    assert seen[-1].event_id is EventId.HONEYTOKEN_USED and seen[-1].session_id == session
    assert seen[-1].details["seen_by"] == "platform:credits"
    assert store.used == [owners[0].digest]
    assert await watch.failed_key(new_key(), service="credits", path="/") == []
    assert await watch.used([], seen_by="gateway") == []
