"""API keys: creation, revocation, listing and the per-request lookup.

A key is ``feint_`` + 32 random bytes in URL-safe base64 (256 bits). Only its HMAC-SHA-256
under a secret derived from the master key is stored, so a database dump does not yield
working keys, and checking a key is one hash and one indexed lookup. Verified keys are kept
in-process for ``AUTH_CACHE_SECONDS`` so that a busy client costs one lookup per interval;
revocation takes effect within that interval in every process.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg
import structlog

from feint.errors import ConfigError, Conflict, NotFound, ValidationFailed
from feint.platform.db import Database

Scope = Literal["read", "write", "admin", "operator"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin", "operator")
TENANT_SCOPE_RANK: dict[str, int] = {"read": 1, "write": 2, "admin": 3}
KEY_PREFIX = "feint_"
KEY_RANDOM_BYTES = 32
KEY_LENGTH_MAX = 128
AUTH_CACHE_SECONDS = 2.0
AUTH_CACHE_ENTRIES_MAX = 10_000
TENANT_NAME_LENGTH_MAX = 63

# The same rule as the CHECK on tenants.name; ASCII only (no look-alike Unicode names).
_TENANT_NAME = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{TENANT_NAME_LENGTH_MAX - 1}}}", re.ASCII)
security_log = structlog.get_logger(component="feint.security")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant key with a scope, or an operator key (no tenant)."""

    key_id: uuid.UUID
    tenant_id: uuid.UUID | None
    tenant_name: str | None
    scope: Scope

    @property
    def is_operator(self) -> bool:
        return self.scope == "operator"

    def allows(self, required: Scope) -> bool:
        """``read`` ⊂ ``write`` ⊂ ``admin`` within a tenant; ``operator`` is needed for operator routes
        and satisfies every tenant scope (it acts across tenants)."""
        if self.scope == "operator":
            return True
        if required == "operator":
            return False
        return TENANT_SCOPE_RANK[self.scope] >= TENANT_SCOPE_RANK[required]


@dataclass(frozen=True)
class KeyInfo:
    id: uuid.UUID
    tenant: str | None
    scope: Scope
    prefix: str
    name: str
    created_at: Any
    revoked_at: Any


class KeyHasher:
    """Hashes presented keys under the server secret (constant work per key)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ConfigError("FEINT_MASTER_KEY", "derived key-hash secret too short", "32 bytes")
        self._secret = secret

    def hash(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def validate_tenant_name(name: str) -> str:
    if _TENANT_NAME.fullmatch(name) is None:
        raise ValidationFailed(
            f"tenant name {name[:80]!r} is invalid",
            errors=[{"field": "tenant", "problem": "use 1-63 of a-z, 0-9, '.', '_', '-', starting alphanumeric"}],
        )
    return name


def create_key(
    conn: psycopg.Connection[dict[str, Any]],
    hasher: KeyHasher,
    *,
    tenant: str | None,
    scope: Scope,
    name: str = "",
) -> tuple[str, KeyInfo]:
    """Create a key (and its tenant when new); returns the key, shown once, and its record."""
    if (scope == "operator") != (tenant is None):
        raise ValidationFailed(
            "an operator key has no tenant; a tenant key needs one",
            errors=[{"field": "tenant", "problem": "operator keys act across tenants"}],
        )
    key = new_key()
    key_id = uuid.uuid4()
    with conn.transaction():
        tenant_id = None
        if tenant is not None:
            validate_tenant_name(tenant)
            conn.execute(
                "INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (uuid.uuid4(), tenant),
            )
            row = conn.execute("SELECT id FROM tenants WHERE name = %s", (tenant,)).fetchone()
            if row is None:  # pragma: no cover - the row was just inserted or already there
                raise Conflict(f"tenant {tenant} vanished while creating a key")
            tenant_id = row["id"]
        row = conn.execute(
            """INSERT INTO api_keys (id, tenant_id, key_hash, prefix, scope, name)
               VALUES (%s, %s, %s, %s, %s, %s) RETURNING created_at""",
            (key_id, tenant_id, hasher.hash(key), key[: len(KEY_PREFIX) + 6], scope, name),
        ).fetchone()
    security_log.info("api_key_created", key_id=str(key_id), tenant=tenant, scope=scope)
    info = KeyInfo(
        id=key_id,
        tenant=tenant,
        scope=scope,
        prefix=key[: len(KEY_PREFIX) + 6],
        name=name,
        created_at=row["created_at"] if row else None,
        revoked_at=None,
    )
    return key, info


def revoke_key(conn: psycopg.Connection[dict[str, Any]], key_id: uuid.UUID) -> None:
    """Revoke a key; revoking twice is an error that says so."""
    row = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING id", (key_id,)
    ).fetchone()
    if row is None:
        exists = conn.execute("SELECT 1 FROM api_keys WHERE id = %s", (key_id,)).fetchone()
        raise (Conflict(f"key {key_id} is already revoked") if exists else NotFound(f"no key {key_id}"))
    security_log.info("api_key_revoked", key_id=str(key_id))


def list_keys(conn: psycopg.Connection[dict[str, Any]], *, tenant: str | None = None) -> list[KeyInfo]:
    rows = conn.execute(
        """SELECT k.id, t.name AS tenant, k.scope, k.prefix, k.name, k.created_at, k.revoked_at
           FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
           WHERE %(tenant)s::text IS NULL OR t.name = %(tenant)s
           ORDER BY k.created_at, k.id""",
        {"tenant": tenant},
    ).fetchall()
    return [KeyInfo(**r) for r in rows]


class FailedKeyHook(Protocol):
    """Told about a key that did not resolve (the camouflage engine recognises honeytokens)."""

    def __call__(self, key: str, *, service: str, path: str, src_host: str) -> Awaitable[None]: ...


class KeyResolver:
    """Resolves a presented bearer key to a Principal, with a short in-process cache."""

    def __init__(self, db: Database, hasher: KeyHasher, *, cache_seconds: float = AUTH_CACHE_SECONDS) -> None:
        self._db = db
        self._hasher = hasher
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._lookups: dict[bytes, asyncio.Future[Principal | None]] = {}  # one query in flight per key
        self.failure_hooks: list[FailedKeyHook] = []

    async def report_failure(self, key: str, *, service: str, path: str, src_host: str) -> None:
        """Run the failure hooks for a key shaped like ours; a hook's failure is logged, never raised
        (the caller answers 401 whatever a hook does)."""
        if not key.startswith(KEY_PREFIX) or len(key) > KEY_LENGTH_MAX:
            return
        for hook in self.failure_hooks:
            try:
                await hook(key, service=service, path=path, src_host=src_host)
            except Exception:  # noqa: BLE001 - an alerting failure must not turn a 401 into a 500
                security_log.exception("failed_key_hook_failed", service=service)

    async def resolve(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None otherwise.

        Concurrent misses for one key share a single lookup: when a key's cache entry expires under
        load, the requests in flight with it wait for one query instead of each taking a pooled
        connection (measured: a stampede of up to 32 queries per worker every
        ``FEINT_AUTH_CACHE_SECONDS`` under the credits benchmark). The lookup runs as its own task,
        so a caller that gives up does not cancel it for the others; a failure reaches every caller
        waiting on it, and the next request looks again."""
        if not key.startswith(KEY_PREFIX) or len(key) > KEY_LENGTH_MAX:
            return None
        digest = self._hasher.hash(key)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(digest, done))
        return await asyncio.shield(lookup)

    def _lookup_done(self, digest: bytes, done: asyncio.Future[Principal | None]) -> None:
        self._lookups.pop(digest, None)
        if not done.cancelled():
            done.exception()  # marks it seen: every waiter got it already, or gave up before it came

    async def _look_up(self, digest: bytes) -> Principal | None:
        now = time.monotonic()
        async with self._db.connection() as conn:
            cur = await conn.execute(
                """SELECT k.id, k.tenant_id, t.name AS tenant_name, k.scope
                   FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
                   WHERE k.key_hash = %s AND k.revoked_at IS NULL""",
                (digest,),
            )
            row = await cur.fetchone()
        principal = (
            Principal(key_id=row["id"], tenant_id=row["tenant_id"], tenant_name=row["tenant_name"], scope=row["scope"])
            if row
            else None
        )
        if self._cache_seconds > 0:
            if len(self._cache) >= AUTH_CACHE_ENTRIES_MAX:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, principal)
        return principal

    async def tenant_id(self, name: str) -> uuid.UUID | None:
        async with self._db.connection() as conn:
            cur = await conn.execute("SELECT id FROM tenants WHERE name = %s", (name,))
            row = await cur.fetchone()
        return row["id"] if row else None
