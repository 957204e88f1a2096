"""Differential test of the set-based posting (migration 0009) against the per-operation paths.

Three tenants get the same accounts (same ids: keys are per tenant), the same grants and then the
same random jobs — batches (atomic, independent, failures only or all) and micro-batches of single
transfers, with the same transfer ids. Tenant ``sets`` is posted by ``credit_post_transfers`` as it
runs in production (set-based whenever nothing can fail, the loop otherwise), ``loop`` by the same
function with the set-based path switched off (``feint.credits_set_based = off``), ``rules`` by the
rules in Python. After every job the answers (status and body), and at the end the balances, the
grants, the transfers and every audit entry's operations must be equal once the tenant-specific
parts (system account ids, clock) are mapped, and each tenant's chain must verify. Jobs that the
set-based path must take are posted with ``feint.credits_set_based = require``, which raises when
the function would fall back to the loop, so the comparison is not vacuous; the others with ``on``
(set-based at any size: by default only calls of 64 operations and more are).
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
import psycopg
import pytest

from feint.credits import posting
from feint.credits.engine import Engine, Job, Outcome
from feint.credits.models import BatchMode, CreateAccount, IssueGrant, PostTransfer
from feint.credits.service import _render_batch, _render_one, service_of
from feint.credits.verify import verify
from feint.errors import DependencyUnavailable
from feint.platform.db import Conn, Database
from tests.integration.credits.conftest import Ledger

pytestmark = pytest.mark.integration

_TIME = re.compile(r'"(posted_at|at)":"[^"]+"')
_REQUIRE = "require"


class _Setting:
    """A database whose connections run with ``feint.credits_set_based`` set (the pool's, reset after)."""

    def __init__(self, db: Database, value: str) -> None:
        self.db = db
        self.value = value

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        async with self.db.connection() as conn:
            await conn.execute("SELECT set_config('feint.credits_set_based', %s, false)", (self.value,))
            try:
                yield conn
            finally:
                await conn.execute("RESET feint.credits_set_based")


async def _new_tenant(ledger: Ledger, name: str) -> UUID:
    tenant = uuid.uuid4()
    async with ledger.platform.db.connection() as conn:
        await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, name))
    return tenant


def _outcome(outcome: Outcome) -> tuple[int, Any]:
    if outcome.error is not None:
        return outcome.error.status, (outcome.error.slug, outcome.error.detail, outcome.error.extensions)
    rendered = outcome.unwrap()
    return rendered.status, rendered.body


class _World:
    """The three tenants' ids and how to map one tenant's system account ids onto another's."""

    def __init__(self, tenants: dict[str, UUID]) -> None:
        self.tenants = tenants
        self.system: dict[str, dict[str, str]] = {}

    def normal(self, path: str, value: Any) -> Any:
        text = value.decode() if isinstance(value, bytes) else orjson.dumps(value).decode()
        for name, replacement in self.system[path].items():
            text = text.replace(name, replacement)
        return _TIME.sub(r'"\1":"T"', text)


async def _setup(ledger: Ledger, world: _World, accounts: list[CreateAccount], grants: list[IssueGrant]) -> None:
    service = service_of(ledger.platform)
    for path, tenant in world.tenants.items():
        await service.run_quietly([CreateAccount(**{**_fields(a), "tenant_id": tenant}) for a in accounts])
        await service.run_quietly([IssueGrant(**{**_fields(g), "tenant_id": tenant}) for g in grants])
        async with ledger.platform.db.connection() as conn:
            cur = await conn.execute(
                "SELECT id, kind, code FROM credit_accounts WHERE tenant_id = %s AND kind <> 'customer'", (tenant,)
            )
            world.system[path] = {str(r["id"]): f"{r['kind']}:{r['code']}" for r in await cur.fetchall()}


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


async def _state(ledger: Ledger, world: _World, path: str) -> dict[str, Any]:
    tenant = world.tenants[path]
    async with ledger.platform.db.connection() as conn:
        accounts = await (
            await conn.execute(
                "SELECT id, kind, code, posted, pending, version FROM credit_accounts WHERE tenant_id = %s ORDER BY kind, code, id",
                (tenant,),
            )
        ).fetchall()
        grants = await (
            await conn.execute(
                "SELECT id, remaining, held FROM credit_grants WHERE tenant_id = %s ORDER BY id", (tenant,)
            )
        ).fetchall()
        transfers = await (
            await conn.execute(
                """SELECT id, kind, debit_account_id, credit_account_id, amount, debit_balance, credit_balance, metadata
                     FROM credit_transfers WHERE tenant_id = %s ORDER BY seq""",
                (tenant,),
            )
        ).fetchall()
        audit = await (
            await conn.execute("SELECT seq, operations FROM credit_audit WHERE tenant_id = %s ORDER BY seq", (tenant,))
        ).fetchall()
    report = await verify(ledger.platform.db, tenant_id=tenant)
    assert report.ok, report.body()
    return {
        "accounts": world.normal(path, [{k: str(v) for k, v in r.items()} for r in accounts]),
        "grants": [(r["id"], r["remaining"], r["held"]) for r in grants],
        "transfers": world.normal(path, [{k: str(v) for k, v in r.items()} for r in transfers]),
        "audit": [(r["seq"], world.normal(path, bytes(r["operations"]))) for r in audit],
    }


async def test_set_based_posting_matches_the_loop_and_the_python_rules(ledger: Ledger) -> None:
    db = ledger.platform.db
    world = _World({path: await _new_tenant(ledger, f"diff-{path}") for path in ("sets", "loop", "rules")})
    anyone = uuid.uuid4()  # placeholder tenant in the templates (replaced per tenant)
    customers = [uuid.uuid4() for _ in range(7)]
    accounts = [
        CreateAccount(tenant_id=anyone, id=customers[0], code="api-calls"),
        CreateAccount(tenant_id=anyone, id=customers[1], code="api-calls"),
        CreateAccount(tenant_id=anyone, id=customers[2], code="api-calls", overdraft_limit=20),
        CreateAccount(tenant_id=anyone, id=customers[3], code="api-calls", no_overdraft=False),
        CreateAccount(tenant_id=anyone, id=customers[4], code="api-calls"),
        CreateAccount(tenant_id=anyone, id=customers[5], code="other"),
        CreateAccount(tenant_id=anyone, id=customers[6], code="other"),
    ]
    soon = datetime.now(UTC) + timedelta(seconds=2)
    later = datetime.now(UTC) + timedelta(days=3)

    def grant(account: int, amount: int, **fields: Any) -> IssueGrant:
        return IssueGrant(
            tenant_id=anyone,
            id=uuid.uuid4(),
            transfer_id=uuid.uuid4(),
            account_id=customers[account],
            amount=amount,
            **fields,
        )

    grants = [
        grant(0, 40, priority=10, expires_at=soon),  # expires before the jobs: its remainder stops counting
        grant(0, 300, priority=20, expires_at=later),
        grant(0, 200),
        grant(1, 90, priority=5),
        grant(1, 60, priority=5, expires_at=later),
        grant(4, 5_000),
        grant(5, 400),
    ]
    await _setup(ledger, world, accounts, grants)
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    consumption = {
        path: next(i for i, n in world.system[path].items() if n == "consumption:api-calls") for path in world.tenants
    }
    engines = {"sets": None, "loop": None, "rules": Engine(db, retention_seconds=86_400, post_in_database=False)}
    rng = random.Random(20261202)
    api_calls = [0, 1, 2, 3, 4, None]  # None: the consumption account
    set_based_jobs = 0

    for round_ in range(40):
        kind = rng.choice(["safe", "safe", "mixed", "mixed", "micro"])
        mode = rng.choice([BatchMode.ATOMIC, BatchMode.INDEPENDENT])
        everything = rng.random() < 0.4
        size = rng.randint(64, 120) if round_ % 8 == 0 else rng.randint(1, 40)  # 64 and more: the default path
        template: list[tuple[UUID, Any, Any, int, bool, bytes]] = []
        for _ in range(size):
            if kind == "safe":  # nothing can fail: the set-based path must take these
                debit, credit, amount = 4, rng.choice([0, 1, 2, 3, None]), rng.randint(1, 9)
                template.append((uuid.uuid4(), debit, credit, amount, False, rng.choice([b"{}", b'{"n":1}'])))
                continue
            roll = rng.random()
            if roll < 0.05:
                debit, credit = rng.choice(api_calls[:5]), "missing"
            elif roll < 0.08:
                debit = rng.choice(api_calls[:5])
                credit = debit
            elif roll < 0.12:
                debit, credit = rng.choice(api_calls[:5]), 5
            elif roll < 0.15:
                debit, credit = 5, 6
            else:
                debit, credit = rng.choice(api_calls[:5]), rng.choice(api_calls)
                while credit == debit:
                    credit = rng.choice(api_calls)
            supplied = rng.random() < 0.08
            template.append((uuid.uuid4(), debit, credit, rng.randint(1, 80), supplied, b"{}"))
        if template and kind != "safe" and rng.random() < 0.2:  # a client id repeated
            first = template[0]
            template.append((first[0], first[1], first[2], rng.choice([first[3], first[3] + 1]), True, first[5]))
            template[0] = (*first[:4], True, first[5])
        missing = uuid.uuid4()

        answers: dict[str, list[tuple[int, Any]]] = {}
        for path, tenant in world.tenants.items():

            def account(ref: Any, path: str = path, missing: UUID = missing) -> UUID:
                if ref is None:
                    return UUID(consumption[path])
                if ref == "missing":
                    return missing
                return customers[ref]

            ops = [
                PostTransfer(
                    tenant_id=tenant,
                    id=tid,
                    debit_account_id=account(d),
                    credit_account_id=account(c),
                    amount=amount,
                    metadata=meta,
                    id_supplied=supplied,
                )
                for tid, d, c, amount, supplied, meta in template
            ]
            if kind == "micro":
                jobs = [Job(tenant_id=tenant, operations=[op], mode=BatchMode.ATOMIC, render=_render_one) for op in ops]
            else:
                jobs = [
                    Job(
                        tenant_id=tenant,
                        operations=ops,
                        mode=mode,
                        batch=True,
                        everything=everything,
                        render=_render_batch(mode, everything=everything),
                    )
                ]
            engine = engines[path]
            if engine is not None:
                committed = await engine.run(jobs)
            else:
                assert posting.eligible(jobs)
                # "on": set-based whenever possible, at any size (by default only from 64 operations)
                setting = {"sets": _REQUIRE if kind == "safe" else "on", "loop": "off"}[path]
                committed, _ = await posting.run(_Setting(db, setting), jobs, retention_seconds=86_400)  # type: ignore[arg-type]
            answers[path] = [(s, world.normal(path, b)) for s, b in map(_outcome, committed.outcomes)]
        set_based_jobs += kind == "safe"
        assert answers["sets"] == answers["loop"] == answers["rules"], (round_, kind, mode)

    assert set_based_jobs > 5
    states = {path: await _state(ledger, world, path) for path in world.tenants}
    assert states["sets"] == states["loop"] == states["rules"]
    assert any(t["kind"] == "transfer" for t in orjson.loads(states["sets"]["transfers"]))


async def test_require_refuses_what_only_the_loop_can_decide(ledger: Ledger) -> None:
    """The switch the differential test relies on: ``require`` raises where the loop would be needed."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 5)
    async with ledger.platform.db.connection() as conn:
        cur = await conn.execute("SELECT tenant_id FROM credit_accounts WHERE id = %s", (UUID(a["id"]),))
        tenant = (await cur.fetchone())["tenant_id"]  # type: ignore[index]
    op = PostTransfer(
        tenant_id=tenant, id=uuid.uuid4(), debit_account_id=UUID(a["id"]), credit_account_id=UUID(b["id"]), amount=6
    )
    job = Job(tenant_id=tenant, operations=[op], mode=BatchMode.ATOMIC, render=_render_one)
    with pytest.raises(DependencyUnavailable) as refused:  # the platform's wrapping of an unknown SQLSTATE
        await posting.run(_Setting(ledger.platform.db, _REQUIRE), [job], retention_seconds=60)  # type: ignore[arg-type]
    cause = refused.value.__cause__
    assert isinstance(cause, psycopg.Error) and cause.sqlstate == "FE003"
    [done] = (await posting.run(_Setting(ledger.platform.db, "on"), [job], retention_seconds=60))[0].outcomes
    assert done.error is not None and done.error.slug == "insufficient-funds"
