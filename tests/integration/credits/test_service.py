"""The service around the rules: micro-batching, the sweeper task, the operator CLI, no overdraft under load."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from feint.cli import app as feint_cli
from feint.credits import sweeper
from feint.credits.config import CreditsSettings
from feint.credits.engine import Engine
from feint.credits.service import service_of
from feint.errors import DependencyUnavailable, InvariantViolated
from feint.platform.telemetry import configure_logging
from feint.settings import get_settings
from tests.conftest import TEST_MASTER_KEY
from tests.integration.credits.conftest import Ledger

pytestmark = pytest.mark.integration


async def test_concurrent_transfers_share_transactions_and_never_overdraw(ledger: Ledger, clean_db: str) -> None:
    """200 concurrent transfers among 4 accounts commit in fewer transactions, none overdraws."""
    accounts = [(await ledger.account())["id"] for _ in range(4)]
    for account in accounts:
        await ledger.grant(account, 50)
    before = REGISTRY.get_sample_value("feint_credits_transaction_operations_count", {"source": "single"}) or 0
    rng = random.Random(7)

    async def one() -> int:
        debit, credit = rng.sample(accounts, 2)
        return (await ledger.transfer(debit, credit, rng.randint(1, 30))).status_code

    codes = await asyncio.gather(*(one() for _ in range(200)))
    assert set(codes) <= {201, 409} and 201 in codes
    transactions = (
        REGISTRY.get_sample_value("feint_credits_transaction_operations_count", {"source": "single"}) or 0
    ) - before
    assert transactions < 200  # micro-batched
    with psycopg.connect(clean_db) as conn:
        negative = conn.execute("SELECT count(*) FROM credit_accounts WHERE no_overdraft AND posted < 0").fetchone()
        total = conn.execute("SELECT sum(posted) FROM credit_accounts").fetchone()
        moved = conn.execute("SELECT count(*) FROM credit_transfers WHERE kind = 'transfer'").fetchone()
    assert negative == (0,) and total == (0,)
    assert moved == (codes.count(201),)
    assert (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()["ok"]


async def test_a_failing_micro_batch_is_retried_job_by_job(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a combined transaction fails as a whole, every job is retried alone and answered."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    real = Engine.run
    calls = {"combined": 0}

    async def flaky(self: Engine, jobs: Any) -> Any:
        if len(jobs) > 1:
            calls["combined"] += 1
            raise InvariantViolated("boom")
        return await real(self, jobs)

    monkeypatch.setattr(Engine, "run", flaky)
    answers = await asyncio.gather(*(ledger.transfer(a["id"], b["id"], 1) for _ in range(6)))
    assert {r.status_code for r in answers} == {201}
    assert (await ledger.balance(a["id"]))["posted"] == 4
    assert calls["combined"] >= 1

    async def broken(self: Engine, jobs: Any) -> Any:
        raise InvariantViolated("always")

    monkeypatch.setattr(Engine, "run", broken)
    failed = await ledger.transfer(a["id"], b["id"], 1)
    assert (failed.status_code, failed.json()["type"]) == (500, "/problems/invariant-violated")

    async def gone(self: Engine, jobs: Any) -> Any:
        raise DependencyUnavailable("database unavailable", dependency="database")

    monkeypatch.setattr(Engine, "run", gone)
    lost = await asyncio.gather(*(ledger.transfer(a["id"], b["id"], 1) for _ in range(4)))
    assert {r.status_code for r in lost} == {503}  # never rerun: the first attempt may have committed
    monkeypatch.setattr(Engine, "run", real)

    async def cache_bug(*args: Any, **kwargs: Any) -> None:
        raise TypeError("rendering bug")

    service = service_of(ledger.platform)
    monkeypatch.setattr(service.cache, "put", cache_bug)
    forgotten = {"n": 0}
    monkeypatch.setattr(service.cache, "forget", lambda: forgotten.__setitem__("n", forgotten["n"] + 1))
    assert (await ledger.transfer(a["id"], b["id"], 1)).status_code == 201
    assert forgotten["n"] == 1
    monkeypatch.undo()
    assert (await ledger.balance(a["id"]))["posted"] == 3


async def test_sweeper_task_runs_and_stops_with_the_app(
    ledger_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an interval set the sweeper runs in the background, survives a failed pass, stops on shutdown."""
    real = sweeper.sweep_once
    passes = {"n": 0}

    async def counting(service: Any) -> Any:
        passes["n"] += 1
        if passes["n"] == 1:
            raise RuntimeError("first pass fails")
        return await real(service)

    monkeypatch.setattr(sweeper, "sweep_once", counting)
    async with ledger_factory(CreditsSettings(sweeper_interval_seconds=0.05, cache="off")) as ledger:
        a, b = await ledger.account(), await ledger.account()
        await ledger.grant(a["id"], 10)
        hold = (
            await ledger.client.post(
                "/v1/holds",
                headers=ledger.write,
                json={"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 10, "timeout_seconds": 1},
            )
        ).json()
        for _ in range(60):
            await asyncio.sleep(0.05)
            state = (await ledger.client.get(f"/v1/holds/{hold['id']}", headers=ledger.read)).json()["state"]
            if state == "expired":
                break
        assert state == "expired"
        task = service_of(ledger.platform)._sweeper
        assert task is not None and not task.done()
    assert task.done()
    assert passes["n"] >= 2


def _run(args: list[str], url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in [n for n in os.environ if n.startswith("FEINT_")]:
        monkeypatch.delenv(name)
    for name, value in {
        "FEINT_DATABASE_URL": url,
        "FEINT_MASTER_KEY": TEST_MASTER_KEY,
        "FEINT_HOME": str(home),
        "FEINT_LOG_LEVEL": "warning",
        "FEINT_LOG_FORMAT": "json",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(feint_cli, ["credits", *args])
    finally:
        get_settings.cache_clear()
        configure_logging()  # the CLI pointed logs at the runner's stderr, closed by now


def test_operator_cli(
    clean_db: str, api_key: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`feint credits` opens accounts, grants, shows balances and verifies (exit 1 naming a broken entry)."""
    api_key(tenant="acme", scope="read")  # creates the tenant
    made = _run(["create-account", "--tenant", "acme", "--code", "api-calls"], clean_db, tmp_path, monkeypatch)
    assert made.exit_code == 0, made.output
    account = orjson.loads(made.stdout)["id"]
    granted = _run(
        [
            "grant",
            "--tenant",
            "acme",
            "--account",
            account,
            "--amount",
            "25",
            "--priority",
            "3",
            "--expires-at",
            "2099-01-01T00:00:00+00:00",
        ],
        clean_db,
        tmp_path,
        monkeypatch,
    )
    assert granted.exit_code == 0, granted.output
    shown = _run(["balance", "--tenant", "acme", "--account", account], clean_db, tmp_path, monkeypatch)
    assert orjson.loads(shown.stdout)["available"] == 25
    verified = _run(["audit", "verify"], clean_db, tmp_path, monkeypatch)
    assert verified.exit_code == 0 and orjson.loads(verified.stdout)["ok"]
    with psycopg.connect(clean_db, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE credit_audit SET body = body || ' '::bytea WHERE seq = 1")
    broken = _run(["audit", "verify", "--tenant", "acme"], clean_db, tmp_path, monkeypatch)
    assert broken.exit_code == 1
    assert "entry 1" in broken.output
    unknown = _run(["balance", "--tenant", "ghost", "--account", account], clean_db, tmp_path, monkeypatch)
    assert (unknown.exit_code, "no tenant 'ghost'" in unknown.output) == (1, True)
    bad_id = _run(["balance", "--tenant", "acme", "--account", "nope"], clean_db, tmp_path, monkeypatch)
    assert bad_id.exit_code == 2
    bad_amount = _run(
        ["grant", "--tenant", "acme", "--account", account, "--amount", "0"], clean_db, tmp_path, monkeypatch
    )
    assert (bad_amount.exit_code, "--amount" in bad_amount.output) == (2, True)
    missing = _run(
        ["balance", "--tenant", "acme", "--account", "00000000-0000-4000-8000-000000000000"],
        clean_db,
        tmp_path,
        monkeypatch,
    )
    assert missing.exit_code == 1


async def test_conflicts_are_retried_and_refusals_become_invariant_errors(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock is retried; endless conflicts and a CHECK refusal are 500 invariant-violated; a
    broken rollback is logged and the first error still answers."""
    import psycopg.errors

    from feint.credits.store import ledger as store

    # The general engine's path (transfers are otherwise posted by the database: test_posting.py).
    monkeypatch.setattr(service_of(ledger.platform).engine, "post_in_database", False)
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    real_write = store.write_and_commit
    failures = {"left": 1}

    async def deadlock_once(*args: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise psycopg.errors.DeadlockDetected("simulated")
        return await real_write(*args, **kwargs)

    monkeypatch.setattr(store, "write_and_commit", deadlock_once)
    assert (await ledger.transfer(a["id"], b["id"], 1)).status_code == 201

    async def always(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.errors.SerializationFailure("simulated")

    monkeypatch.setattr(store, "write_and_commit", always)
    endless = await ledger.transfer(a["id"], b["id"], 1)
    assert (endless.status_code, endless.json()["type"]) == (500, "/problems/invariant-violated")

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.errors.CheckViolation("simulated")

    async def broken_rollback(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("connection lost")

    monkeypatch.setattr(store, "write_and_commit", refused)
    monkeypatch.setattr(store, "rollback", broken_rollback)
    refusal = await ledger.transfer(a["id"], b["id"], 1)
    assert (refusal.status_code, refusal.json()["type"]) == (500, "/problems/invariant-violated")
    monkeypatch.setattr(store, "write_and_commit", real_write)
    assert (await ledger.balance(a["id"]))["posted"] == 9


async def test_engine_guards(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two atomic batches never share a transaction; a rule breaking an invariant fails the request."""
    import uuid

    from feint.credits import rules
    from feint.credits.engine import Job, Rendered
    from feint.credits.models import BatchMode, VoidHold

    service = service_of(ledger.platform)
    tenant = uuid.uuid4()
    ops = [VoidHold(tenant_id=tenant, hold_id=uuid.uuid4()), VoidHold(tenant_id=tenant, hold_id=uuid.uuid4())]
    job = Job(tenant_id=tenant, operations=ops, mode=BatchMode.ATOMIC, render=lambda results, book: Rendered(200, b""))
    with pytest.raises(InvariantViolated):
        await service.engine.run([job, job])
    a, b = await ledger.account(), await ledger.account()

    def broken(book: Any, op: Any) -> Any:
        raise InvariantViolated("rule bug")

    monkeypatch.setattr(service.engine, "post_in_database", False)  # the rules in Python

    monkeypatch.setattr(rules, "apply", broken)
    r = await ledger.client.post(
        "/v1/batches",
        json={
            "mode": "independent",
            "operations": [{"op": "transfer", "debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 1}],
        },
        headers=ledger.write,
    )
    assert r.status_code == 500
