"""`feint backup verify`: prove a backup restores, and that what it restores is the ledger it was.

Download, check the SHA-256, decrypt and restore into a scratch database created for the
purpose (dropped afterwards, whatever happens); then compare every table's row count with the
manifest, compare each tenant's audit chain head with the one recorded at backup time, and run
the credits ledger's own audit verification (`feint.credits.verify`) on the restored data.
Any difference is a problem in the report and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from feint.backup import postgres
from feint.backup.keys import BackupKeys
from feint.backup.manifest import Manifest
from feint.backup.pipeline import Progress, _no_progress, restore_into
from feint.backup.storage import Storage
from feint.platform.db import Database, connect_sync

SCRATCH_PREFIX = "feint_verify_"
MAINTENANCE_DATABASE = "postgres"


@dataclass
class VerifyReport:
    backup_id: str
    tables: int = 0
    rows: int = 0
    tenants: int = 0
    audit_entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def body(self) -> dict[str, Any]:
        return {
            "backup": self.backup_id,
            "ok": self.ok,
            "tables": self.tables,
            "rows": self.rows,
            "tenants": self.tenants,
            "audit_entries_checked": self.audit_entries,
            "problems": self.problems,
        }


def with_database(url: str, name: str) -> str:
    """The same server and credentials as ``url``, another database."""
    return make_conninfo(url, dbname=name)


def database_name(url: str) -> str:
    return str(conninfo_to_dict(url).get("dbname") or "")


def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Differences between the manifest's row counts and a restored database's (pure)."""
    problems = [f"table {t} is missing after restore" for t in sorted(expected.keys() - actual.keys())]
    problems += [f"table {t} is not in the manifest" for t in sorted(actual.keys() - expected.keys())]
    problems += [
        f"table {t}: {actual[t]} rows restored, the manifest says {expected[t]}"
        for t in sorted(expected.keys() & actual.keys())
        if expected[t] != actual[t]
    ]
    return problems


def compare_heads(expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]]) -> list[str]:
    return [
        f"tenant {tenant}: audit chain head {actual.get(tenant)} restored, the manifest says {head}"
        for tenant, head in sorted(expected.items())
        if actual.get(tenant) != head
    ] + [f"tenant {t}: audit chain not in the manifest" for t in sorted(actual.keys() - expected.keys())]


def verify_backup(
    *, storage: Storage, manifest: Manifest, keys: BackupKeys, server_url: str, progress: Progress = _no_progress
) -> VerifyReport:
    """Restore ``manifest``'s backup into a scratch database on ``server_url``'s server and check it."""
    report = VerifyReport(backup_id=manifest.id)
    scratch = f"{SCRATCH_PREFIX}{secrets.token_hex(6)}"
    admin = with_database(server_url, MAINTENANCE_DATABASE)
    with connect_sync(admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    scratch_url = with_database(server_url, scratch)
    try:
        restore_into(
            storage=storage, manifest=manifest, keys=keys, target_url=scratch_url, clean=False, privileges=False,
            progress=progress,
        )  # fmt: skip
        with psycopg.connect(scratch_url, autocommit=True) as conn:
            counts = postgres.row_counts(conn)
            heads = postgres.audit_heads(conn)
        report.tables, report.rows = len(counts), sum(counts.values())
        report.problems += compare_counts(manifest.row_counts, counts)
        report.problems += compare_heads(manifest.audit_heads, heads)
        if heads or manifest.audit_heads:
            report.problems += asyncio.run(ledger_audit(scratch_url, report))
    finally:
        with connect_sync(admin) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
    return report


async def ledger_audit(url: str, report: VerifyReport) -> list[str]:
    from feint.credits import verify as ledger_verify

    db = Database(url, role=None, size_max=2, name="feint-backup-verify")
    await db.open()
    try:
        audit = await ledger_verify.verify(db, tenant_id=None)
    finally:
        await db.close()
    report.tenants, report.audit_entries = audit.tenants, audit.entries_checked
    problems = list(audit.problems)
    if audit.first_broken is not None:
        broken = audit.first_broken
        problems.append(f"audit chain of tenant {broken.tenant_id} breaks at entry {broken.seq}: {broken.reason}")
    return problems


def target_state(url: str) -> tuple[bool, int]:
    """(database exists, user tables in it) for a restore target."""
    name = database_name(url)
    with connect_sync(with_database(url, MAINTENANCE_DATABASE)) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    if not exists:
        return False, 0
    with psycopg.connect(url, autocommit=True) as conn:
        return True, len(postgres.user_tables(conn))


def create_database(url: str) -> None:
    with connect_sync(with_database(url, MAINTENANCE_DATABASE)) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database_name(url))))
