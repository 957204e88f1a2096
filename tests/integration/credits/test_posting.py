"""Transfers posted by the database (``credit_post_transfers``, migration 0008): same answers,
same guarantees as the rules in Python, one call per micro-batch or batch."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from typing import Any
from uuid import UUID

import orjson
import pytest
from prometheus_client import REGISTRY

from feint.credits import posting, schemas
from feint.credits.engine import Engine, Idempotency, Job, Outcome
from feint.credits.models import BatchMode, PlaceHold, PostTransfer
from feint.credits.service import _render_batch, _render_one, service_of
from feint.credits.store import ledger as ledger_store
from feint.credits.store import transfers as transfers_store
from feint.errors import IdempotencyKeyReused
from tests.integration.credits.conftest import Ledger

pytestmark = pytest.mark.integration


def _retries() -> float:
    return REGISTRY.get_sample_value("feint_credits_transactions_total", {"outcome": "retried"}) or 0.0


async def _tenant(ledger: Ledger, account_id: str) -> UUID:
    async with ledger.platform.db.connection() as conn:
        cur = await conn.execute("SELECT tenant_id FROM credit_accounts WHERE id = %s", (UUID(account_id),))
        row = await cur.fetchone()
    assert row is not None
    return UUID(str(row["tenant_id"]))


def _transfer(tenant: UUID, debit: str, credit: str, amount: int, **fields: Any) -> PostTransfer:
    return PostTransfer(
        tenant_id=tenant, id=fields.pop("id", uuid.uuid4()), debit_account_id=UUID(debit),
        credit_account_id=UUID(credit), amount=amount, **fields,
    )  # fmt: skip


def _job(op: PostTransfer, key: str | None = None, body: bytes = b"") -> Job:
    idempotency = Idempotency(key, hashlib.sha256(body or str(op).encode()).digest()) if key else None
    return Job(tenant_id=op.tenant_id, operations=[op], mode=BatchMode.ATOMIC, render=_render_one,
               idempotency=idempotency)  # fmt: skip


async def _posted(engine: Engine, jobs: list[Job]) -> list[Outcome]:
    """Run through the database's path, asserting it was taken (no fallback to the Python rules)."""
    assert posting.eligible(jobs)
    committed, _ = await posting.run(engine.db, jobs, retention_seconds=engine.retention_seconds)
    return committed.outcomes


async def _verified(ledger: Ledger) -> dict[str, Any]:
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert (report["ok"], report["problems"]) == (True, []), report
    return dict(report)


async def test_answers_match_the_python_rules_byte_for_byte(ledger: Ledger) -> None:
    """The body the database builds is what schemas.dumps renders from the stored transfer row."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    r = await ledger.transfer(a["id"], b["id"], 7, metadata={"order": "o-1", "n": [1, 2.5, None], "é": True})
    assert r.status_code == 201
    async with ledger.platform.db.connection() as conn:
        cur = await conn.execute("SELECT * FROM credit_transfers WHERE id = %s", (UUID(r.json()["id"]),))
        row = await cur.fetchone()
    assert row is not None
    assert r.content == schemas.dumps(schemas.transfer_body(ledger_store.transfer_from_row(row)))
    replay = await ledger.transfer(a["id"], b["id"], 7, id=r.json()["id"], metadata=r.json()["metadata"])
    assert (replay.status_code, replay.content) == (200, r.content)
    report = await _verified(ledger)
    assert report["transfers_checked"] == 2  # the grant's and this one: the verifier rebuilt both records


async def test_concurrent_micro_batches_in_both_orders(ledger: Ledger) -> None:
    """Micro-batches over the same accounts, in opposite orders, all commit without a deadlock retry
    and never overdraw: the call locks in account order, and no_overdraft is checked per transfer."""
    engine = service_of(ledger.platform).engine
    accounts = [(await ledger.account())["id"] for _ in range(4)]
    for account in accounts:
        await ledger.grant(account, 30)
    tenant = await _tenant(ledger, accounts[0])
    rng = random.Random(12)
    retries = _retries()

    def batch(order: list[str]) -> list[Job]:
        pairs = list(zip(order, order[1:] + order[:1], strict=True))
        return [_job(_transfer(tenant, d, c, rng.randint(1, 9))) for d, c in pairs * 3]

    rounds = [batch(accounts if n % 2 else accounts[::-1]) for n in range(24)]
    results = await asyncio.gather(*(_posted(engine, jobs) for jobs in rounds))
    assert _retries() == retries
    applied = sum(o.error is None for outcomes in results for o in outcomes)
    refused = [o.error for outcomes in results for o in outcomes if o.error is not None]
    assert applied > 0 and all(e.slug == "insufficient-funds" for e in refused)
    balances = [(await ledger.balance(a))["posted"] for a in accounts]
    assert sum(balances) == 120 and min(balances) >= 0
    await _verified(ledger)


async def test_idempotent_retry_and_client_ids_inside_a_micro_batch(ledger: Ledger) -> None:
    """A stored key replays its first answer, the same key with another body is refused, a client id
    seen earlier in the same call replays that transfer, and a changed one names the fields."""
    engine = service_of(ledger.platform).engine
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 50)
    tenant = await _tenant(ledger, a["id"])
    first = _transfer(tenant, a["id"], b["id"], 5)
    [done] = await _posted(engine, [_job(first, "k-1", b"one")])
    same_id = uuid.uuid4()
    outcomes = await _posted(
        engine,
        [
            _job(_transfer(tenant, a["id"], b["id"], 5), "k-1", b"one"),  # a retry: replayed
            _job(_transfer(tenant, a["id"], b["id"], 6), "k-1x", b"two"),
            _job(_transfer(tenant, a["id"], b["id"], 3, id=same_id, id_supplied=True)),
            _job(_transfer(tenant, a["id"], b["id"], 3, id=same_id, id_supplied=True)),
            _job(_transfer(tenant, a["id"], b["id"], 4, id=same_id, id_supplied=True)),
        ],
    )
    assert outcomes[0].replayed and outcomes[0].unwrap() == done.unwrap()
    assert outcomes[1].unwrap().status == 201
    third, fourth = outcomes[2].unwrap(), outcomes[3].unwrap()
    assert (third.status, fourth.status, fourth.body) == (201, 200, third.body)
    assert outcomes[4].error is not None and outcomes[4].error.extensions["fields"] == ["amount"]
    [reused] = await _posted(engine, [_job(_transfer(tenant, a["id"], b["id"], 5), "k-1", b"other")])
    assert isinstance(reused.error, IdempotencyKeyReused)
    assert (await ledger.balance(b["id"]))["posted"] == 5 + 6 + 3
    # a repeated key in one micro-batch takes the general engine (it answers the second from the first)
    twice = [_job(_transfer(tenant, a["id"], b["id"], 1), "k-2", b"x") for _ in range(2)]
    assert not posting.eligible(twice)
    pair = Job(tenant_id=tenant, operations=[*twice[0].operations, *twice[1].operations], mode=BatchMode.ATOMIC,
               render=_render_one)  # fmt: skip
    assert not posting.eligible([pair])  # not a batch: the call answers one operation per job
    both = await engine.run(twice)
    assert both.outcomes[1].replayed and both.outcomes[1].unwrap() == both.outcomes[0].unwrap()
    await _verified(ledger)


async def test_a_failing_transfer_leaves_the_others_of_its_micro_batch(ledger: Ledger) -> None:
    """Each failure is its own job's answer, stored under its key; the neighbours commit."""
    engine = service_of(ledger.platform).engine
    a, b, c = await ledger.account(), await ledger.account(), await ledger.account(code="other-code")
    await ledger.grant(a["id"], 10)
    tenant = await _tenant(ledger, a["id"])
    missing = str(uuid.uuid4())
    outcomes = await _posted(
        engine,
        [
            _job(_transfer(tenant, a["id"], b["id"], 4)),
            _job(_transfer(tenant, a["id"], b["id"], 400), "poor", b"p"),
            _job(_transfer(tenant, a["id"], missing, 1)),
            _job(_transfer(tenant, a["id"], a["id"], 1)),
            _job(_transfer(tenant, a["id"], c["id"], 1)),
            _job(_transfer(tenant, a["id"], b["id"], 4)),
        ],
    )
    slugs = [o.error.slug if o.error else o.unwrap().status for o in outcomes]
    assert slugs == [201, "insufficient-funds", "account-not-found", "invalid-operation", "codes-differ", 201]
    poor = outcomes[1].error
    assert poor is not None and poor.extensions == {"account_id": a["id"], "available": 6}
    assert outcomes[2].error is not None and outcomes[2].error.extensions["field"] == "credit_account_id"
    [again] = await _posted(engine, [_job(_transfer(tenant, a["id"], b["id"], 400), "poor", b"p")])
    assert again.replayed and again.error is not None and again.error.detail == poor.detail
    assert (await ledger.balance(b["id"]))["posted"] == 8
    await _verified(ledger)


async def test_batches_of_transfers_in_one_call(ledger: Ledger) -> None:
    """An atomic batch failing in the middle keeps nothing and names the operation; an independent
    one commits the rest and lists the failure; ``results: all`` renders every transfer."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)

    def op(amount: int) -> dict[str, Any]:
        return {"op": "transfer", "debit_account_id": a["id"], "credit_account_id": b["id"], "amount": amount}

    ops = [op(1)] * 50 + [op(1_000)] + [op(1)] * 49
    key = {"idempotency-key": "atomic-1"}
    atomic = await ledger.client.post("/v1/batches", json={"mode": "atomic", "operations": ops},
                                      headers={**ledger.write, **key})  # fmt: skip
    assert (atomic.status_code, atomic.json()["type"], atomic.json()["operation_index"]) == (
        409, "/problems/insufficient-funds", 50,
    )  # fmt: skip
    replay = await ledger.client.post("/v1/batches", json={"mode": "atomic", "operations": ops},
                                      headers={**ledger.write, **key})  # fmt: skip
    assert (replay.status_code, replay.json()["operation_index"]) == (409, 50)
    assert (await ledger.balance(b["id"]))["posted"] == 0
    independent = await ledger.client.post("/v1/batches", json={"mode": "independent", "operations": ops},
                                           headers=ledger.write)  # fmt: skip
    body = independent.json()
    assert (body["operations"], body["failed"], [x["index"] for x in body["results"]]) == (100, 1, [50])
    assert body["results"][0]["error"]["available"] == 50
    await ledger.grant(a["id"], 10)
    everything = await ledger.client.post(
        "/v1/batches", json={"mode": "independent", "operations": [op(1), op(10**6), op(2)], "results": "all"},
        headers=ledger.write,
    )  # fmt: skip
    results = everything.json()["results"]
    assert [(x["index"], x["status"]) for x in results] == [(0, 201), (1, 409), (2, 201)]
    assert results[2]["result"]["debit_balance"] == 110 - 99 - 3
    assert (await ledger.balance(b["id"]))["posted"] == 99 + 3
    await _verified(ledger)


async def test_batch_answers_match_the_python_rules(ledger: Ledger) -> None:
    """The database renders a batch's answer exactly as the rules in Python do (results: all)."""
    engine = service_of(ledger.platform).engine
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    tenant = await _tenant(ledger, a["id"])
    ops = [_transfer(tenant, a["id"], b["id"], n) for n in (3, 30, 2)]
    job = Job(tenant_id=tenant, operations=ops, mode=BatchMode.INDEPENDENT, batch=True, everything=True,
              render=_render_batch(BatchMode.INDEPENDENT, everything=True))  # fmt: skip
    [ours] = await _posted(engine, [job])
    async with ledger.platform.db.connection() as conn:
        cur = await conn.execute("SELECT * FROM credit_transfers WHERE tenant_id = %s AND kind = 'transfer' ORDER BY seq",
                                 (tenant,))  # fmt: skip
        rows = await cur.fetchall()
    rendered = orjson.loads(ours.unwrap().body)
    assert [r["result"] for r in rendered["results"] if "result" in r] == [
        orjson.loads(schemas.dumps(schemas.transfer_body(ledger_store.transfer_from_row(row)))) for row in rows
    ]
    error = rendered["results"][1]["error"]
    assert list(error) == ["type", "title", "status", "detail", "account_id", "available"]
    assert error["title"] == "Insufficient funds" and error["detail"] == f"account {a['id']} has 7 available, 30 needed"


async def test_an_expired_hold_sends_the_call_to_the_python_rules(ledger: Ledger) -> None:
    """A pending hold past its timeout is settled by the general engine before the transfer."""
    engine = service_of(ledger.platform).engine
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    tenant = await _tenant(ledger, a["id"])
    hold = PlaceHold(tenant_id=tenant, id=uuid.uuid4(), debit_account_id=UUID(a["id"]),
                     credit_account_id=UUID(b["id"]), amount=8, timeout_seconds=1)  # fmt: skip
    await service_of(ledger.platform).run_quietly([hold])
    async with ledger.platform.db.connection() as conn:  # let it expire without waiting
        await conn.execute("UPDATE credit_holds SET expires_at = now() - interval '1 second' WHERE id = %s", (hold.id,))
    jobs = [_job(_transfer(tenant, a["id"], b["id"], 9))]
    with pytest.raises(posting.Fallback):
        await posting.run(engine.db, jobs, retention_seconds=60)
    committed = await engine.run(jobs)
    assert committed.outcomes[0].unwrap().status == 201
    assert (await ledger.balance(a["id"]))["posted"] == 1
    await _verified(ledger)


async def test_a_deadlock_in_the_call_is_retried(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database's refusal to go on (deadlock) is retried; an invariant it raises is a 500."""
    import psycopg.errors

    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    real = transfers_store.post_transfers
    left = {"n": 1}

    async def deadlock_once(*args: Any, **kwargs: Any) -> Any:
        if left["n"]:
            left["n"] -= 1
            raise psycopg.errors.DeadlockDetected("simulated")
        return await real(*args, **kwargs)

    monkeypatch.setattr(transfers_store, "post_transfers", deadlock_once)
    assert (await ledger.transfer(a["id"], b["id"], 1)).status_code == 201

    async def invariant(conn: Any, **kwargs: Any) -> Any:
        await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = 'FE002'; END $$")

    monkeypatch.setattr(transfers_store, "post_transfers", invariant)
    refused = await ledger.transfer(a["id"], b["id"], 1)
    assert (refused.status_code, refused.json()["type"]) == (500, "/problems/invariant-violated")
    assert (await ledger.balance(b["id"]))["posted"] == 1


async def test_the_cache_written_through_is_what_the_database_reads(ledger_factory: Any) -> None:
    """After a posted micro-batch the cached account (grants, burn order, balances) equals a fresh read."""
    from datetime import UTC, datetime, timedelta

    from feint.credits.config import CreditsSettings

    async with ledger_factory(CreditsSettings(sweeper_interval_seconds=0, cache="memory")) as ledger:
        a, b = await ledger.account(), await ledger.account()
        soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        await ledger.grant(a["id"], 5, priority=1, expires_at=soon)
        await ledger.grant(a["id"], 20)
        assert (await ledger.transfer(a["id"], b["id"], 7)).status_code == 201
        cache, tenant = service_of(ledger.platform).cache, await _tenant(ledger, a["id"])
        written = [await cache.get(tenant, UUID(x["id"])) for x in (a, b)]
        assert all(entry is not None and not entry.tombstone for entry in written)  # written through
        cached = [await ledger.balance(x["id"]) for x in (a, b)]
        cache.forget()
        fresh = [await ledger.balance(x["id"]) for x in (a, b)]
        assert cached == fresh
        assert [(g["remaining"], g["priority"]) for g in fresh[0]["grants"]] == [(18, 50)]
