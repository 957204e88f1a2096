"""One migration history for the whole database, applied by ``feint migrate`` and ``feint up``.

Each migration is a file ``feint/migrations/NNNN_name.sql`` with a ``-- migrate:up`` and a
``-- migrate:down`` section (the dbmate layout). We use this instead of Alembic because every
migration is plain PostgreSQL DDL: no ORM models to diff, and one SQL file is what a reviewer
and a DBA read. Applying is idempotent (a version table records what ran, with a checksum that
catches an edited migration) and serialised across processes by an advisory lock, each
migration in its own transaction.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
import psycopg.sql

from feint.errors import FeintError
from feint.platform.db import connect_sync

# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x6665696E74
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_UP = "-- migrate:up"
_DOWN = "-- migrate:down"


class MigrationError(FeintError):
    slug, title = "migration-failed", "Migration failed"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up.encode()).hexdigest()


def available() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("feint.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        text = entry.read_text(encoding="utf-8")
        if _UP not in text or _DOWN not in text:
            raise MigrationError(f"{entry.name}: needs both '{_UP}' and '{_DOWN}' sections")
        up, down = text.split(_UP, 1)[1].split(_DOWN, 1)
        found.append(Migration(version=int(match[1]), name=match[2], up=up.strip(), down=down.strip()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return found


def _ensure_table(conn: psycopg.Connection[dict[str, object]]) -> None:
    # Checked first: CREATE … IF NOT EXISTS still needs the right to create in the schema.
    exists = conn.execute("SELECT to_regclass('feint_migrations') AS t").fetchone()
    if exists is not None and exists["t"] is not None:
        return
    conn.execute(
        """CREATE TABLE IF NOT EXISTS feint_migrations (
               version    integer PRIMARY KEY,
               name       text NOT NULL,
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )


def pending(url: str, *, role: str | None = None) -> list[Migration]:
    """The migrations not yet applied to the database at ``url``, read without any DDL right.

    A service login with data rights only (``feint_service``, NOINHERIT) reads through ``role``
    (``SET ROLE feint_app``), which may read the version table; so a service whose database is
    current starts without the rights to migrate it, and says so when it is not.
    """
    with connect_sync(url) as conn:
        if role:
            # A database never migrated has no app role yet (0001 creates it): everything is pending.
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                return available()
            conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
        exists = conn.execute("SELECT to_regclass('feint_migrations') AS t").fetchone()
        have: set[int] = set()
        if exists is not None and exists["t"] is not None:
            have = {int(str(r["version"])) for r in conn.execute("SELECT version FROM feint_migrations").fetchall()}
    return [m for m in available() if m.version not in have]


def applied(url: str) -> dict[int, str]:
    """Version → checksum of each migration applied to the database at ``url``."""
    with connect_sync(url) as conn:
        exists = conn.execute("SELECT to_regclass('feint_migrations') AS t").fetchone()
        if exists is None or exists["t"] is None:
            return {}
        rows = conn.execute("SELECT version, checksum FROM feint_migrations").fetchall()
        return {int(str(r["version"])): str(r["checksum"]) for r in rows}


def migrate(url: str, *, target: int | None = None) -> list[str]:
    """Bring the database to ``target`` (default: the newest); returns what was done, in order."""
    migrations = available()
    newest = migrations[-1].version if migrations else 0
    goal = newest if target is None else target
    if goal < 0 or goal > newest:
        raise MigrationError(f"target {goal} is outside 0..{newest}")
    done: list[str] = []
    try:
        _migrate(url, migrations, goal, done)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise MigrationError(
            f"this login cannot change the schema ({str(exc).strip().splitlines()[0]}); run `feint migrate` "
            "with the owner's URL in FEINT_MIGRATION_DATABASE_URL"
        ) from exc
    return done


def _migrate(url: str, migrations: list[Migration], goal: int, done: list[str]) -> None:
    with connect_sync(url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            _ensure_table(conn)
            rows = conn.execute("SELECT version, checksum FROM feint_migrations").fetchall()
            have = {int(str(r["version"])): str(r["checksum"]) for r in rows}
            for m in migrations:
                if m.version in have and have[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} was edited after it was applied; "
                        "add a new migration instead"
                    )
            for m in migrations:
                if m.version <= goal and m.version not in have:
                    _run(conn, m, m.up, insert=True)
                    done.append(f"up {m.version:04d}_{m.name}")
            for m in reversed(migrations):
                if m.version > goal and m.version in have:
                    _run(conn, m, m.down, insert=False)
                    done.append(f"down {m.version:04d}_{m.name}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))


def _run(conn: psycopg.Connection[dict[str, object]], m: Migration, text: str, *, insert: bool) -> None:
    try:
        with conn.transaction():
            conn.execute(text.encode())
            if insert:
                conn.execute(
                    "INSERT INTO feint_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (m.version, m.name, m.checksum),
                )
            else:
                conn.execute("DELETE FROM feint_migrations WHERE version = %s", (m.version,))
    except psycopg.Error as exc:
        raise MigrationError(f"migration {m.version:04d}_{m.name} failed: {exc}".strip()) from exc
