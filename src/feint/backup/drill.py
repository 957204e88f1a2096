"""The disaster-recovery drill (`make dr-drill`, `feint backup drill`): measured, not assumed.

1. a fresh database, migrated, filled through the credits API (accounts, grants, transfers);
2. `create` a backup; then a few more writes are acknowledged (what a real outage loses);
3. the database is destroyed (DROP DATABASE … WITH (FORCE));
4. restore the latest backup into a new database, compare row counts with the manifest and run
   the ledger's audit verification;
5. print RTO (seconds from the destruction to a verified restore) and the data-loss window (time
   from the backup's consistent point to the last acknowledged write, and how many writes that was).

Storage: ``FEINT_BACKUP_URL`` when set, else a SeaweedFS started from the wheel for the drill.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from psycopg import sql

from feint.backup import keys as backup_keys
from feint.backup import pipeline, verify
from feint.backup.storage import S3Storage, Storage, open_storage
from feint.errors import InvariantViolated
from feint.platform import migrations
from feint.platform.crypto import LocalMasterKey
from feint.platform.db import connect_sync
from feint.platform.secrets import load_master_key
from feint.settings import Settings

DRILL_TENANTS = 2
DRILL_ACCOUNTS_PER_TENANT = 4
AMOUNT_GRANTED = 1_000_000


@dataclass
class DrillResult:
    backup_id: str
    transfers_before_backup: int
    transfers_lost: int
    consistent_at: datetime
    last_ack_at: datetime
    rto_seconds: float
    backup_seconds: float
    problems: list[str]

    @property
    def loss_window_seconds(self) -> float:
        return max(0.0, (self.last_ack_at - self.consistent_at).total_seconds())


class LedgerWriter:
    """Writes to the credits API in-process (ASGI), as tenants would; remembers the last acknowledgement."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self._settings = settings
        self._url = database_url
        self.last_ack_at = datetime.now(UTC)
        self.transfers = 0
        self._accounts: dict[str, list[str]] = {}
        self._headers: dict[str, dict[str, str]] = {}

    def _keys(self) -> None:
        from feint.platform import keys as keys_mod
        from feint.platform.secrets import derive, load_master_key

        hasher = keys_mod.KeyHasher(derive(load_master_key(self._settings), "api-key-hash"))
        with connect_sync(self._url) as conn:
            operator, _ = keys_mod.create_key(conn, hasher, tenant=None, scope="operator", name="drill")
            for index in range(DRILL_TENANTS):
                tenant = f"drill-{index}"
                key, _ = keys_mod.create_key(conn, hasher, tenant=tenant, scope="write", name="drill")
                self._headers[tenant] = {"authorization": f"Bearer {key}"}
                self._headers[f"{tenant}/operator"] = {"authorization": f"Bearer {operator}", "feint-tenant": tenant}

    async def _run(self, body: Callable[[httpx.AsyncClient], Any]) -> None:
        from feint.credits.app import create
        from feint.credits.config import CreditsSettings
        from feint.platform.runtime import build

        platform = build(self._settings, database_url=self._url)
        app = create(platform, settings=CreditsSettings(sweeper_interval_seconds=0, cache="off"))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://drill") as client:
                await body(client)

    async def _post(self, client: httpx.AsyncClient, path: str, json: dict[str, Any], headers: dict[str, str]) -> Any:
        response = await client.post(path, json=json, headers=headers)
        if response.status_code != 201:
            raise InvariantViolated(f"drill write {path} answered {response.status_code}: {response.text[:300]}")
        self.last_ack_at = datetime.now(UTC)
        return response.json()

    def open_accounts(self) -> None:
        self._keys()

        async def body(client: httpx.AsyncClient) -> None:
            for index in range(DRILL_TENANTS):
                tenant = f"drill-{index}"
                for _ in range(DRILL_ACCOUNTS_PER_TENANT):
                    account = await self._post(client, "/v1/accounts", {"code": "api-calls"}, self._headers[tenant])
                    self._accounts.setdefault(tenant, []).append(account["id"])
                    await self._post(
                        client, "/v1/grants", {"account_id": account["id"], "amount": AMOUNT_GRANTED},
                        self._headers[f"{tenant}/operator"],
                    )  # fmt: skip

        asyncio.run(self._run(body))

    def transfer(self, count: int) -> None:
        async def body(client: httpx.AsyncClient) -> None:
            for number in range(count):
                tenant = f"drill-{number % DRILL_TENANTS}"
                accounts = self._accounts[tenant]
                debit, credit = accounts[number % len(accounts)], accounts[(number + 1) % len(accounts)]
                await self._post(
                    client, "/v1/transfers", {"debit_account_id": debit, "credit_account_id": credit, "amount": 1},
                    self._headers[tenant],
                )  # fmt: skip
                self.transfers += 1

        asyncio.run(self._run(body))


@contextlib.contextmanager
def drill_storage(settings: Settings) -> Iterator[Storage]:
    if settings.backup_url:
        yield open_storage(settings.backup_url, endpoint_url=settings.s3_endpoint_url)
        return
    from feint.backup.seaweed import local_s3

    with local_s3() as s3:
        storage = S3Storage(bucket="feint-drill", prefix=f"drill-{secrets.token_hex(3)}", endpoint_url=s3.endpoint)
        storage.ensure_bucket()
        yield storage


def run_drill(*, settings: Settings, server_url: str, transfers: int, say: Callable[[str], None]) -> DrillResult:
    """The whole drill on a database of its own on ``server_url``'s server (dropped at the end)."""
    name = f"feint_drill_{secrets.token_hex(4)}"
    admin = verify.with_database(server_url, verify.MAINTENANCE_DATABASE)
    url = verify.with_database(server_url, name)
    with connect_sync(admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrations.migrate(url)
        provider = LocalMasterKey(load_master_key(settings))
        drill_settings = settings.model_copy(update={"database_url": url})
        with tempfile.TemporaryDirectory(prefix="feint-drill-") as folder, drill_storage(settings) as storage:
            keyset = backup_keys.generate(Path(folder) / "keyset", provider)
            writer = LedgerWriter(drill_settings, url)
            writer.open_accounts()
            writer.transfer(transfers)
            say(f"ledger filled: {DRILL_TENANTS} tenants, {writer.transfers} transfers")
            began = time.monotonic()
            manifest = pipeline.create_backup(database_url=url, storage=storage, keys=keyset)
            backup_seconds = time.monotonic() - began
            say(f"backup {manifest.id}: {manifest.stored_bytes} bytes in {backup_seconds:.1f} s")
            before = writer.transfers
            writer.transfer(max(1, transfers // 10))  # acknowledged after the backup: the outage loses these
            with connect_sync(admin) as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            destroyed = time.monotonic()
            say(f"database {name} destroyed")
            verify.create_database(url)
            restored = pipeline.catalog(storage).find(manifest.id)
            pipeline.restore_into(
                storage=storage, manifest=restored, keys=keyset, target_url=url, clean=False, privileges=True
            )
            problems = _check(url, restored)
            rto = time.monotonic() - destroyed
        return DrillResult(
            backup_id=manifest.id,
            transfers_before_backup=before,
            transfers_lost=writer.transfers - before,
            consistent_at=manifest.consistent_at,
            last_ack_at=writer.last_ack_at,
            rto_seconds=rto,
            backup_seconds=backup_seconds,
            problems=problems,
        )
    finally:
        with connect_sync(admin) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _check(url: str, manifest: Any) -> list[str]:
    import psycopg

    from feint.backup import postgres

    with psycopg.connect(url, autocommit=True) as conn:
        counts, heads = postgres.row_counts(conn), postgres.audit_heads(conn)
    report = verify.VerifyReport(backup_id=manifest.id)
    problems = verify.compare_counts(manifest.row_counts, counts) + verify.compare_heads(manifest.audit_heads, heads)
    problems += asyncio.run(verify.ledger_audit(url, report))
    if report.tenants != DRILL_TENANTS:
        problems.append(f"{report.tenants} ledger tenants restored, {DRILL_TENANTS} expected")
    return problems
