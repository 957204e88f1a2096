"""The persona's cache of rendered answers: a cached answer is the answer rendered from scratch."""

from __future__ import annotations

import dataclasses
import re

import pytest

from feint.camouflage.decoy import persona, probes, recorder
from feint.camouflage.decoy import responder as responder_module
from feint.camouflage.decoy.contract import Connection, Request
from feint.camouflage.decoy.persona import Template
from feint.camouflage.decoy.responder import REPLY_CACHE_ENTRIES_MAX, PersonaResponder

pytestmark = pytest.mark.unit

_DATE = re.compile(rb"\r\nDate: [^\r]*")
# Spring prints the time of the request in its error bodies (Jackson ISO and java.util.Date forms).
_STAMPS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00|\w{3} \w{3} \d\d \d\d:\d\d:\d\d UTC \d{4}")
EXTRA = (
    b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept-Encoding: gzip, deflate\r\n\r\n",
    b"GET /index.html HTTP/1.1\r\nHost: example.com:8443\r\nConnection: close\r\n\r\n",
    b"HEAD /missing HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /missing HTTP/1.1\r\nhost: a\r\nHOST: b\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /.git/config HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n",
)


def _conn(served: int) -> Connection:
    return Connection(
        peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=8080, requests_served=served
    )


def _requests(p: persona.Persona) -> list[Request]:
    payloads = [probe.render(hostport="127.0.0.1:8080", mtime=p.site_mtime) for probe in probes.load()] + list(EXTRA)
    return [request for payload in payloads for request in recorder.requests_of(payload, p)]


@pytest.mark.parametrize("name", persona.available())
def test_cached_answers_equal_fresh_renders(name: str) -> None:
    """For every probe of the corpus, on a fresh and a late connection, twice (a miss, then a
    hit), the answer is the one rendered without the cache, Date aside, close flag included."""
    p = persona.load(name)
    cached, fresh = PersonaResponder(p), PersonaResponder(p)
    last = p.limits.keepalive_requests_max - 1
    for request in _requests(p):
        for served in (0, 7, last):
            conn = _conn(served)
            want = fresh._respond(request, conn)
            for _ in range(2):
                got = cached.respond(request, conn)
                assert _STAMPS.sub(b"", _DATE.sub(b"", got.data)) == _STAMPS.sub(b"", _DATE.sub(b"", want.data)), (
                    request.request_line
                )
                assert got.close == want.close
    assert cached.cache_hits > 0


def test_keepalive_max_follows_the_connection() -> None:
    """A cached head with Apache's Keep-Alive max= counts down with the requests served."""
    p = persona.load("apache-debian")
    responder = PersonaResponder(p)
    request = recorder.requests_of(b"GET /missing HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", p)[0]
    first = responder.respond(request, _conn(0)).data
    later = responder.respond(request, _conn(9)).data
    assert responder.cache_hits == 1
    assert b"max=" in first and first != later
    assert later == _DATE.sub(b"\r\nDate: " + _date_of(later), responder._respond(request, _conn(9)).data)


def _date_of(data: bytes) -> bytes:
    found = re.search(rb"\r\nDate: ([^\r]*)", data)
    assert found is not None
    return found.group(1)


def test_the_cache_is_bounded() -> None:
    """Unique paths (a scanner) never hold more than REPLY_CACHE_ENTRIES_MAX answers."""
    p = persona.load("nginx-debian")
    responder = PersonaResponder(p)
    for n in range(REPLY_CACHE_ENTRIES_MAX + 50):
        request = recorder.requests_of(f"GET /p{n} HTTP/1.1\r\nHost: h\r\n\r\n".encode(), p)[0]
        responder.respond(request, _conn(0))
    assert 0 < len(responder._cache) <= REPLY_CACHE_ENTRIES_MAX


def test_the_cache_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers held never pass REPLY_CACHE_BYTES_MAX together, and an answer over
    REPLY_CACHE_ANSWER_BYTES_MAX is not held at all (it is rendered per request, still right)."""
    p = persona.load("nginx-debian")
    monkeypatch.setattr(responder_module, "REPLY_CACHE_BYTES_MAX", 5_000)
    responder = PersonaResponder(p)
    for n in range(100):
        request = recorder.requests_of(f"GET /p{n} HTTP/1.1\r\nHost: h\r\n\r\n".encode(), p)[0]
        responder.respond(request, _conn(0))
        assert 0 < responder._cache_bytes <= 5_000
    monkeypatch.setattr(responder_module, "REPLY_CACHE_ANSWER_BYTES_MAX", 100)
    big = PersonaResponder(p)
    request = recorder.requests_of(b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n", p)[0]
    first = big.respond(request, _conn(0))
    key = big._cache_key(request, _conn(0))
    assert key is not None and big._cache[key].render and big._cache_bytes == 0
    assert _DATE.sub(b"", big.respond(request, _conn(0)).data) == _DATE.sub(b"", first.data)


def test_a_volatile_body_is_rendered_every_time() -> None:
    """A page that prints the date (or a placeholder the cache does not know) is not reused."""
    p = persona.load("nginx-debian")
    request = recorder.requests_of(b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n", p)[0]
    original = p.responses[PersonaResponder(p).rule_for(request)[0].response]
    page = dataclasses.replace(original.body, page=Template.parse("now {{date}} {{unknown_value}}"))
    changed = dataclasses.replace(p, responses={**p.responses, original.id: dataclasses.replace(original, body=page)})
    responder = PersonaResponder(changed)
    first = responder.respond(request, _conn(0)).data
    key = responder._cache_key(request, _conn(0))
    assert key is not None
    answer = responder._cache[key]
    assert answer.render and answer.reply is None
    assert b"now " in first and b"now " in responder.respond(request, _conn(0)).data


def test_a_nul_in_the_host_is_never_taken_for_a_slot() -> None:
    """A request built outside the parser with a NUL in Host is rendered every time."""
    p = persona.load("nginx-debian")
    responder = PersonaResponder(p)
    request = Request(
        request_line=b"GET /x HTTP/1.1",
        method=b"GET",
        target=b"/x",
        version=b"HTTP/1.1",
        headers=((b"Host", b"\x00date\x00"),),
        body=b"",
        problems=frozenset(),
    )
    got, want = responder.respond(request, _conn(0)).data, responder._respond(request, _conn(0)).data
    assert _DATE.sub(b"", got) == _DATE.sub(b"", want)
    key = responder._cache_key(request, _conn(0))
    assert key is not None and responder._cache[key].render
