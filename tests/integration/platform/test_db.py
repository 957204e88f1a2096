"""Migrations, the app role's rights, API keys and the pool on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager

import psycopg
import pytest
from psycopg.rows import dict_row

from feint.errors import Conflict, DependencyUnavailable, NotFound, ValidationFailed
from feint.platform import keys, migrations
from feint.platform.db import POOL_TIMEOUT_SECONDS, Conn, Database, connect_sync
from feint.platform.migrations import MigrationError
from tests.conftest import _with_database

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_db(pg_admin_url: str) -> Iterator[str]:
    """An empty database of its own, for tests that migrate up and down."""
    name = f"feint_scratch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(pg_admin_url, name)
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_migrations_up_down_up_idempotent(scratch_db: str) -> None:
    """Every migration applies, reverts and applies again; a second run does nothing."""
    newest = migrations.available()[-1].version
    done = migrations.migrate(scratch_db)
    assert len(done) == newest
    assert migrations.migrate(scratch_db) == []
    assert set(migrations.applied(scratch_db)) == set(range(1, newest + 1))
    assert {"tenants", "api_keys", "keysets"} <= _tables(scratch_db)
    down = migrations.migrate(scratch_db, target=0)
    assert [d.split()[0] for d in down] == ["down"] * newest
    assert _tables(scratch_db) == {"feint_migrations"}
    assert len(migrations.migrate(scratch_db)) == newest


def test_edited_migration_is_refused(scratch_db: str) -> None:
    """A migration changed after it was applied stops the run with a clear error."""
    migrations.migrate(scratch_db)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("UPDATE feint_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(MigrationError, match="was edited"):
        migrations.migrate(scratch_db)
    with pytest.raises(MigrationError, match="outside"):
        migrations.migrate(scratch_db, target=999)


def test_app_role_has_no_ddl(clean_db: str) -> None:
    """The services' role can read and write data but cannot create, alter or drop tables."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("SET ROLE feint_app")
        conn.execute("SELECT count(*) FROM tenants")
        for ddl in ("CREATE TABLE evil (x int)", "DROP TABLE tenants", "ALTER TABLE tenants ADD COLUMN x int"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(ddl)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM api_keys")
        flags = conn.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert flags == (False, False, False)


def test_key_lifecycle(clean_db: str) -> None:
    """Keys are created once, listed without secrets, revoked once; bad input is refused."""
    hasher = keys.KeyHasher(b"k" * 32)
    with psycopg.connect(clean_db, autocommit=True, row_factory=dict_row) as conn:
        key, info = keys.create_key(conn, hasher, tenant="acme", scope="write", name="ci")
        _, op = keys.create_key(conn, hasher, tenant=None, scope="operator")
        assert info.tenant == "acme" and op.tenant is None
        stored = conn.execute("SELECT key_hash FROM api_keys WHERE id = %s", (info.id,)).fetchone()
        assert stored is not None and key.encode() not in bytes(stored["key_hash"])
        listed = keys.list_keys(conn)
        assert {k.id for k in listed} == {info.id, op.id}
        assert [k.id for k in keys.list_keys(conn, tenant="acme")] == [info.id]
        keys.revoke_key(conn, info.id)
        with pytest.raises(Conflict, match="already revoked"):
            keys.revoke_key(conn, info.id)
        with pytest.raises(NotFound):
            keys.revoke_key(conn, uuid.uuid4())
        with pytest.raises(ValidationFailed):
            keys.create_key(conn, hasher, tenant=None, scope="read")
        with pytest.raises(ValidationFailed):
            keys.create_key(conn, hasher, tenant="acme", scope="operator")


async def test_resolver_caches_and_sees_revocation(clean_db: str) -> None:
    """A revoked key stops resolving once the cache interval has passed (immediately at 0 s)."""
    hasher = keys.KeyHasher(b"k" * 32)
    with psycopg.connect(clean_db, autocommit=True, row_factory=dict_row) as conn:
        key, info = keys.create_key(conn, hasher, tenant="acme", scope="read")
    db = Database(clean_db, role="feint_app", size_max=2)
    await db.open()
    try:
        cached = keys.KeyResolver(db, hasher, cache_seconds=60)
        fresh = keys.KeyResolver(db, hasher, cache_seconds=0)
        principal = await cached.resolve(key)
        assert principal is not None and principal.tenant_name == "acme"
        assert await fresh.resolve("not-a-key") is None
        assert await fresh.resolve(keys.KEY_PREFIX + "x" * 200) is None
        with psycopg.connect(clean_db, autocommit=True, row_factory=dict_row) as conn:
            keys.revoke_key(conn, info.id)
        assert await fresh.resolve(key) is None
        assert await cached.resolve(key) == principal  # within its cache interval
        assert await fresh.tenant_id("acme") == principal.tenant_id
        assert await fresh.tenant_id("ghost") is None
        stats = db.pool_stats()
        assert stats["max"] == 2
    finally:
        await db.close()


class _CountingDatabase(Database):
    """The real pool, counting the connections taken from it."""

    def __init__(self, url: str) -> None:
        super().__init__(url, role="feint_app", size_max=1)
        self.taken = 0

    def connection(self, *, timeout: float = POOL_TIMEOUT_SECONDS) -> AbstractAsyncContextManager[Conn]:
        self.taken += 1
        return super().connection(timeout=timeout)


async def test_resolver_misses_for_one_key_share_one_lookup(clean_db: str) -> None:
    """Requests that miss the cache together for one key wait for one query, and a caller that gives
    up does not cancel that query for the others."""
    hasher = keys.KeyHasher(b"k" * 32)
    with psycopg.connect(clean_db, autocommit=True, row_factory=dict_row) as conn:
        key, _ = keys.create_key(conn, hasher, tenant="acme", scope="read")
        other, _ = keys.create_key(conn, hasher, tenant="acme", scope="write")
    db = _CountingDatabase(clean_db)
    await db.open()
    try:
        resolver = keys.KeyResolver(db, hasher, cache_seconds=60)
        answers = await asyncio.gather(*(resolver.resolve(key) for _ in range(50)))
        assert db.taken == 1
        assert len(set(answers)) == 1 and answers[0] is not None and answers[0].scope == "read"

        # The pool's only connection is held, so the lookup for `other` waits; its first caller gives up.
        async with db.connection():
            first = asyncio.create_task(resolver.resolve(other))
            second = asyncio.create_task(resolver.resolve(other))
            await asyncio.sleep(0.05)
            first.cancel()
            await asyncio.sleep(0.05)
            assert not second.done()
        principal = await asyncio.wait_for(second, timeout=10)
        assert principal is not None and principal.scope == "write"
        assert first.cancelled()
        assert db.taken == 3  # the held one and one lookup
        assert await resolver.resolve(other) == principal and db.taken == 3  # cached now
    finally:
        await db.close()


async def test_unreachable_database_is_dependency_error() -> None:
    """A server that does not answer becomes DependencyUnavailable naming the database."""
    db = Database("postgresql://postgres@127.0.0.1:1/none", role=None, size_max=1)
    await db.open()
    try:
        with pytest.raises(DependencyUnavailable) as caught:
            await db.ping()
        assert caught.value.dependency == "database"
    finally:
        await db.close()
    with pytest.raises(DependencyUnavailable, match="cannot connect"):
        connect_sync("postgresql://postgres@127.0.0.1:1/none")


async def test_serialization_failure_is_not_an_outage(clean_db: str) -> None:
    """A deadlock or serialization failure reaches the caller as itself (to retry), not as a 503."""
    db = Database(clean_db, role="feint_app", size_max=1)
    await db.open()
    try:
        with pytest.raises(psycopg.errors.SerializationFailure):
            async with db.transaction() as conn:
                await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        assert await db.ping() >= 0  # the pool is healthy afterwards
    finally:
        await db.close()


@pytest.fixture
def service_login(pg_admin_url: str) -> Iterator[tuple[str, str]]:
    """A NOINHERIT login with the app role only, as docs/operations.md sets up for the pods: (name, password)."""
    name, password = f"feint_service_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' NOINHERIT")
        conn.execute(f"GRANT feint_app TO {name}")
    try:
        yield name, password
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {name}")
            conn.execute(f"DROP ROLE {name}")


def _as(url: str, login: tuple[str, str]) -> str:
    import httpx

    parts = httpx.URL(url)
    if parts.host == "":  # the embedded server's socket URL: trust for every local role
        return url.replace("postgres:@", f"{login[0]}:{login[1]}@", 1)
    return str(parts.copy_with(username=login[0], password=login[1]))


def test_a_least_privilege_login_sees_nothing_pending_and_cannot_migrate(
    scratch_db: str, service_login: tuple[str, str]
) -> None:
    """The service login reads the version table through feint_app; migrating with it is a clear error."""
    service = _as(scratch_db, service_login)
    with pytest.raises(MigrationError, match="FEINT_MIGRATION_DATABASE_URL"):
        migrations.migrate(service)
    assert [m.version for m in migrations.pending(service, role="feint_app")] == [
        m.version for m in migrations.available()
    ]
    migrations.migrate(scratch_db)
    assert migrations.pending(service, role="feint_app") == []  # `feint serve` starts without migrating
