"""Honeytokens: fake credentials planted per session, recognisable wherever they come back.

Each kind carries a short tag (a truncated HMAC-SHA-256 under a secret derived from the master
key) inside its random part, so that any process holding the master key tells a honeytoken
from a real credential with one HMAC and no lookup; the session that took it is then found
by the token's SHA-256 in the database. The API key has exactly the shape of a real Feint key
(``feint_`` + 43 URL-safe base64 characters), so the platform can recognise one presented to
any service (see `HoneytokenWatch.failed_key`, called only when a key fails, so valid keys
pay nothing).

Personas mark where tokens go with ``{{honeytoken:KIND}}`` placeholders (`PLACEHOLDER`);
`fill` replaces them with the session's values. `Honeytokens.find` scans request bytes with
one compiled pattern and keeps only candidates whose tag verifies.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from feint.camouflage.decoy.contract import Request
from feint.camouflage.decoy.responder import default_filler
from feint.camouflage.engine.events import EventId, EventSink
from feint.errors import InvariantViolated

API_KEY_PREFIX: Final = "feint_"  # the same as feint.platform.keys.KEY_PREFIX
API_RANDOM_BYTES: Final = 24
API_TAG_BYTES: Final = 8
AWS_RANDOM_BYTES: Final = 5
AWS_TAG_BYTES: Final = 5
DB_RANDOM_BYTES: Final = 5
DB_TAG_BYTES: Final = 5
DB_PASSWORD_PREFIX: Final = "ft"  # noqa: S105 - the prefix of fake passwords
SCAN_BYTES_MAX: Final = 1024 * 1024  # of one request; beyond it is not scanned
HITS_MAX: Final = 16  # per request
PLACEHOLDERS_MAX: Final = 256  # per reply


class TokenKind(enum.StrEnum):
    API_KEY = "api_key"
    AWS_ACCESS_KEY_ID = "aws_access_key_id"
    # Kind names, not secrets (ruff S105, bandit B105).
    AWS_SECRET_ACCESS_KEY = "aws_secret_access_key"  # noqa: S105  # nosec B105
    DATABASE_URL = "database_url"
    DATABASE_PASSWORD = "database_password"  # noqa: S105  # nosec B105


# The kinds a token can be recognised by (the AWS secret is only ever sent with its key id).
_TAGGED: Final = {
    TokenKind.API_KEY: (b"api", API_RANDOM_BYTES, API_TAG_BYTES),
    TokenKind.AWS_ACCESS_KEY_ID: (b"aws", AWS_RANDOM_BYTES, AWS_TAG_BYTES),
    TokenKind.DATABASE_PASSWORD: (b"db", DB_RANDOM_BYTES, DB_TAG_BYTES),
}
_PATTERN: Final = re.compile(
    rb"(?<![A-Za-z0-9_-])(?P<api_key>feint_[A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])"
    rb"|(?<![A-Za-z0-9])(?P<aws_access_key_id>AKIA[A-Z2-7]{16})(?![A-Za-z0-9])"
    rb"|(?<![A-Za-z0-9])(?P<database_password>ft[a-z2-7]{16})(?![A-Za-z0-9])"
)
PLACEHOLDER: Final = re.compile(rb"\{\{honeytoken:([a-z_]{1,40})\}\}")
_BASIC: Final = re.compile(rb"(?i)basic\s+([A-Za-z0-9+/=]{8,2048})")


def digest(value: str) -> str:
    """What the database keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenSet:
    """The fake credentials of one session, by kind."""

    session_id: uuid.UUID
    values: Mapping[TokenKind, str]

    def digests(self) -> dict[TokenKind, str]:
        return {kind: digest(value) for kind, value in self.values.items()}


@dataclass(frozen=True, slots=True)
class TokenHit:
    """A honeytoken found in a request (its tag verified)."""

    kind: TokenKind
    value: str
    where: str  # "target", "header:<name>", "body"

    @property
    def digest(self) -> str:
        return digest(self.value)


class Honeytokens:
    """Mints, recognises and finds honeytokens under one secret (derive(master_key, "honeytoken"))."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise InvariantViolated("the honeytoken secret must be 32 bytes or more")
        self._secret = secret

    def _tag(self, label: bytes, random: bytes, size: int) -> bytes:
        return hmac.new(self._secret, label + random, hashlib.sha256).digest()[:size]

    def _raw(self, kind: TokenKind) -> bytes:
        label, random_bytes, tag_bytes = _TAGGED[kind]
        random = secrets.token_bytes(random_bytes)
        return random + self._tag(label, random, tag_bytes)

    def mint(self, session_id: uuid.UUID) -> TokenSet:
        """A fresh set of fake credentials for one session."""
        api_key = API_KEY_PREFIX + base64.urlsafe_b64encode(self._raw(TokenKind.API_KEY)).decode().rstrip("=")
        aws_id = "AKIA" + base64.b32encode(self._raw(TokenKind.AWS_ACCESS_KEY_ID)).decode()
        password = DB_PASSWORD_PREFIX + base64.b32encode(self._raw(TokenKind.DATABASE_PASSWORD)).decode().lower()
        values = {
            TokenKind.API_KEY: api_key,
            TokenKind.AWS_ACCESS_KEY_ID: aws_id,
            TokenKind.AWS_SECRET_ACCESS_KEY: base64.b64encode(secrets.token_bytes(30)).decode(),
            TokenKind.DATABASE_PASSWORD: password,
            TokenKind.DATABASE_URL: f"postgresql://app_rw:{password}@db-primary.internal:5432/production",
        }
        for kind in _TAGGED:
            if self.kind_of(values[kind]) is not kind:
                raise InvariantViolated(f"a minted {kind} does not verify")
        return TokenSet(session_id=session_id, values=values)

    def kind_of(self, value: str) -> TokenKind | None:
        """The kind of honeytoken ``value`` is, or None (a real credential, or noise)."""
        try:
            if value.startswith(API_KEY_PREFIX) and len(value) == len(API_KEY_PREFIX) + 43:
                kind, raw = TokenKind.API_KEY, base64.urlsafe_b64decode(value[len(API_KEY_PREFIX) :] + "=")
            elif value.startswith("AKIA") and len(value) == 20:
                kind, raw = TokenKind.AWS_ACCESS_KEY_ID, base64.b32decode(value[4:])
            elif value.startswith(DB_PASSWORD_PREFIX) and len(value) == 18:
                kind, raw = TokenKind.DATABASE_PASSWORD, base64.b32decode(value[2:].upper())
            else:
                return None
        except (binascii.Error, ValueError):
            return None
        label, random_bytes, tag_bytes = _TAGGED[kind]
        if len(raw) != random_bytes + tag_bytes:
            return None
        spelled = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if kind is TokenKind.API_KEY and spelled != value[len(API_KEY_PREFIX) :]:
            return None  # 43 base64 digits carry 2 spare bits: only the one spelling we minted counts
        expected = self._tag(label, raw[:random_bytes], tag_bytes)
        return kind if hmac.compare_digest(expected, raw[random_bytes:]) else None

    def find(self, parts: Sequence[tuple[str, bytes]]) -> list[TokenHit]:
        """Honeytokens in ``(where, bytes)`` parts, at most `HITS_MAX`; the first `SCAN_BYTES_MAX`
        bytes in all are scanned. HTTP Basic credentials are decoded and scanned too."""
        hits: list[TokenHit] = []
        budget = SCAN_BYTES_MAX
        seen: set[str] = set()
        for where, data in parts:
            if budget <= 0 or len(hits) >= HITS_MAX:
                break
            chunk = data[:budget]
            budget -= len(chunk)
            for candidate in self._candidates(chunk):
                kind = self.kind_of(candidate)
                if kind is not None and candidate not in seen:
                    seen.add(candidate)
                    hits.append(TokenHit(kind=kind, value=candidate, where=where))
                    if len(hits) >= HITS_MAX:
                        break
        return hits

    @staticmethod
    def _candidates(chunk: bytes) -> list[str]:
        found = [m.group(0).decode("ascii") for m in _PATTERN.finditer(chunk)]
        for basic in _BASIC.finditer(chunk):
            try:
                decoded = base64.b64decode(basic.group(1), validate=True)
            except (binascii.Error, ValueError):
                continue
            found.extend(m.group(0).decode("ascii") for m in _PATTERN.finditer(decoded))
        return found

    def find_in_request(self, request: Request) -> list[TokenHit]:
        """Honeytokens anywhere in a decoy-contract request: target, header values, body."""
        parts = [("target", request.target)]
        parts.extend((f"header:{name.decode('latin-1').lower()}", value) for name, value in request.headers)
        parts.append(("body", request.body))
        return self.find(parts)


def find_tokens(
    honeytokens: Honeytokens, *, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> list[TokenHit]:
    """The gateway's check of one request (ASGI-shaped pieces): honeytokens anywhere in it."""
    parts = [("target", target)]
    parts.extend((f"header:{name.decode('latin-1').lower()}", value) for name, value in headers)
    parts.append(("body", body))
    return honeytokens.find(parts)


def fill(data: bytes, tokens: TokenSet) -> tuple[bytes, int]:
    """``data`` with every ``{{honeytoken:KIND}}`` replaced by the session's value; and how many
    were replaced. An unknown kind is left as written (a persona bug shows, it is not hidden)."""
    if b"{{honeytoken:" not in data:
        return data, 0
    count = 0

    def replace(match: re.Match[bytes]) -> bytes:
        nonlocal count
        try:
            kind = TokenKind(match.group(1).decode())
        except ValueError:
            return match.group(0)
        if count >= PLACEHOLDERS_MAX:
            return match.group(0)
        count += 1
        return tokens.values[kind].encode()

    return PLACEHOLDER.sub(replace, data), count


# Persona site files (`.env`, `.git/config`) carry ``{{token:KIND}}``, which the decoy renders with
# `responder.default_filler`: a stable value per kind, the same for every session. For the kinds
# below, the session's answer swaps that value for the session's own credential, so that a later
# use names the session. Each default is exactly as long as the credential that replaces it
# (tests/unit/camouflage/engine/test_sessions.py checks it), so the Content-Length and ETag the
# decoy computed from the file's size stay true. A body the persona compresses is left alone.
SITE_KINDS: Final = {
    "aws_access_key": TokenKind.AWS_ACCESS_KEY_ID,
    "aws_secret_key": TokenKind.AWS_SECRET_ACCESS_KEY,
    "db_password": TokenKind.DATABASE_PASSWORD,
    "git_password": TokenKind.DATABASE_PASSWORD,
}
SITE_DEFAULTS: Final = {default_filler(name).encode(): kind for name, kind in SITE_KINDS.items()}
_SITE_VALUE: Final = re.compile(b"|".join(re.escape(value) for value in SITE_DEFAULTS))


def swap_site_tokens(data: bytes, tokens: TokenSet) -> tuple[bytes, int]:
    """``data`` with the persona's default credentials replaced by the session's; how many."""
    count = 0

    def own(match: re.Match[bytes]) -> bytes:
        nonlocal count
        count += 1
        return tokens.values[SITE_DEFAULTS[match.group(0)]].encode()

    swapped = _SITE_VALUE.sub(own, data)
    return swapped, count


def fill_reply(data: bytes, tokens: TokenSet) -> tuple[bytes, int]:
    """A whole HTTP response with placeholders filled in its body and its Content-Length fixed."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return fill(data, tokens)
    filled, count = fill(body, tokens)
    if count == 0:
        return data, 0
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        name, colon, _ = line.partition(b":")
        if colon and name.strip().lower() == b"content-length":
            lines[i] = name + b": " + str(len(filled)).encode()
    return b"\r\n".join(lines) + sep + filled, count


@dataclass(frozen=True, slots=True)
class TokenOwner:
    """Whose a honeytoken is: the tenant and the session that took it."""

    digest: str
    kind: TokenKind
    tenant_id: uuid.UUID
    session_id: uuid.UUID


class HoneytokenStore(Protocol):
    async def insert_tokens(self, *, tenant_id: uuid.UUID, tokens: TokenSet) -> None: ...
    async def owners(self, digests: Sequence[str]) -> list[TokenOwner]: ...
    async def mark_used(self, digests: Sequence[str]) -> None: ...


class HoneytokenWatch:
    """Plants tokens for sessions and raises `HONEYTOKEN_USED` (an alert) when one comes back."""

    def __init__(self, *, honeytokens: Honeytokens, store: HoneytokenStore, events: EventSink) -> None:
        self.honeytokens = honeytokens
        self.store = store
        self.events = events

    async def plant(self, *, tenant_id: uuid.UUID, session_id: uuid.UUID) -> TokenSet:
        """Mint and store the tokens of a new session."""
        tokens = self.honeytokens.mint(session_id)
        await self.store.insert_tokens(tenant_id=tenant_id, tokens=tokens)
        return tokens

    async def used(
        self, hits: Sequence[TokenHit], *, seen_by: str, src_host: str = "", client_key: str = ""
    ) -> list[TokenOwner]:
        """Alert for each hit whose token is stored; the owners found (an unstored tag-valid
        token, e.g. minted under this secret by another deployment's database, is logged only)."""
        if not hits:
            return []
        by_digest = {hit.digest: hit for hit in hits}
        owners = await self.store.owners(list(by_digest))
        for owner in owners:
            hit = by_digest[owner.digest]
            self.events.emit(
                EventId.HONEYTOKEN_USED,
                tenant_id=owner.tenant_id,
                session_id=owner.session_id,
                src_host=src_host,
                client_key=client_key,
                details={"kind": hit.kind.value, "where": hit.where, "seen_by": seen_by},
            )
        if owners:
            await self.store.mark_used([o.digest for o in owners])
        return owners

    async def failed_key(self, key: str, *, service: str, path: str, src_host: str = "") -> list[TokenOwner]:
        """The platform's auth-failure hook: a presented API key that is a honeytoken raises the alert."""
        if self.honeytokens.kind_of(key) is not TokenKind.API_KEY:
            return []
        hit = TokenHit(kind=TokenKind.API_KEY, value=key, where=f"api:{service}{path[:200]}")
        return await self.used([hit], seen_by=f"platform:{service}", src_host=src_host)
