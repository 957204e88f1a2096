"""Idempotency keys: replay of the first answer, reuse with another body, tenancy, retention."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from feint.credits.service import service_of
from feint.credits.sweeper import sweep_once
from tests.integration.credits.conftest import Ledger

pytestmark = pytest.mark.integration


async def test_same_key_and_body_replays_and_applies_once(ledger: Ledger) -> None:
    """The same key and body answer the original status and body again; nothing moves twice."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    key = {"idempotency-key": "order-1"}
    first = await ledger.transfer(a["id"], b["id"], 10, metadata={"x": 1, "y": 2}, headers=key)
    # the same JSON with keys in another order is the same request
    again = await ledger.client.post(
        "/v1/transfers",
        headers={**ledger.write, **key},
        json={"metadata": {"y": 2, "x": 1}, "amount": 10, "credit_account_id": b["id"], "debit_account_id": a["id"]},
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.content == again.content
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert (await ledger.balance(a["id"]))["posted"] == 90


async def test_same_key_other_body_is_409(ledger: Ledger) -> None:
    """A key reused with another body is 409 idempotency-key-reused, and the new body is not applied."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    key = {"idempotency-key": "order-2"}
    assert (await ledger.transfer(a["id"], b["id"], 10, headers=key)).status_code == 201
    reused = await ledger.transfer(a["id"], b["id"], 11, headers=key)
    assert (reused.status_code, reused.json()["type"]) == (409, "/problems/idempotency-key-reused")
    other_route = await ledger.client.post(
        "/v1/holds",
        headers={**ledger.write, **key},
        json={"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 10, "timeout_seconds": 5},
    )
    assert other_route.status_code == 409
    assert (await ledger.balance(a["id"]))["posted"] == 90


async def test_a_failure_is_replayed_too(ledger: Ledger) -> None:
    """A request that failed answers the same failure on retry, even once funds arrive."""
    a, b = await ledger.account(), await ledger.account()
    key = {"idempotency-key": "pay-3"}
    first = await ledger.transfer(a["id"], b["id"], 10, headers=key)
    assert first.status_code == 409
    await ledger.grant(a["id"], 100)
    again = await ledger.transfer(a["id"], b["id"], 10, headers=key)
    assert (again.status_code, again.json()["type"], again.json()["available"]) == (
        409,
        "/problems/insufficient-funds",
        0,
    )
    assert (await ledger.balance(a["id"]))["posted"] == 100
    batch_key = {"idempotency-key": "batch-1"}
    ops = {
        "mode": "atomic",
        "operations": [
            {"op": "transfer", "debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 60},
            {"op": "transfer", "debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 60},
        ],
    }
    failed = await ledger.client.post("/v1/batches", json=ops, headers={**ledger.write, **batch_key})
    replay = await ledger.client.post("/v1/batches", json=ops, headers={**ledger.write, **batch_key})
    assert failed.status_code == replay.status_code == 409
    assert failed.json()["operation_index"] == replay.json()["operation_index"] == 1
    assert (await ledger.balance(a["id"]))["posted"] == 100


async def test_concurrent_retries_apply_once(ledger: Ledger) -> None:
    """Twenty concurrent sends of one keyed request move credits once and all answer the same."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    key = {"idempotency-key": "burst"}
    answers = await asyncio.gather(*(ledger.transfer(a["id"], b["id"], 7, headers=key) for _ in range(20)))
    assert {r.status_code for r in answers} == {201}
    assert len({r.content for r in answers}) == 1
    assert (await ledger.balance(a["id"]))["posted"] == 93
    hold_key = {"idempotency-key": "burst-capture"}
    hold = (
        await ledger.client.post(
            "/v1/holds",
            headers=ledger.write,
            json={"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 5, "timeout_seconds": 60},
        )
    ).json()
    captures = await asyncio.gather(
        *(
            ledger.client.post(f"/v1/holds/{hold['id']}/capture", headers={**ledger.write, **hold_key})
            for _ in range(10)
        )
    )
    assert {r.status_code for r in captures} == {200}
    assert (await ledger.balance(a["id"]))["posted"] == 88


async def test_keys_belong_to_their_tenant(ledger: Ledger) -> None:
    """Two tenants may use the same key without seeing each other's answers."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    key = {"idempotency-key": "shared-name"}
    mine = await ledger.transfer(a["id"], b["id"], 1, headers=key)
    theirs = await ledger.client.post("/v1/accounts", json={"code": "api-calls"}, headers={**ledger.other, **key})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert "idempotent-replayed" not in theirs.headers


async def test_keys_are_forgotten_after_retention(ledger: Ledger, clean_db: str) -> None:
    """A key is kept 24 h by default; once past its expiry the sweeper deletes it and it is new again."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    key = {"idempotency-key": "old"}
    assert (await ledger.transfer(a["id"], b["id"], 1, headers=key)).status_code == 201
    with psycopg.connect(clean_db, autocommit=True) as conn:
        row = conn.execute("SELECT expires_at - created_at FROM credit_idempotency WHERE key = 'old'").fetchone()
        assert row is not None and row[0].total_seconds() == 86_400
        conn.execute("UPDATE credit_idempotency SET expires_at = now() - interval '1 second'")
    # past its expiry the key no longer matches, even before the sweeper deletes it
    assert "idempotent-replayed" not in (await ledger.transfer(a["id"], b["id"], 1, headers=key)).headers
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE credit_idempotency SET expires_at = now() - interval '1 second'")
    report = await sweep_once(service_of(ledger.platform))
    assert report.idempotency_keys == 1
    assert (await ledger.balance(a["id"]))["posted"] == 8


async def test_bad_keys_are_422(ledger: Ledger) -> None:
    """An empty or overlong Idempotency-Key is 422 naming the header."""
    a, b = await ledger.account(), await ledger.account()
    long = await ledger.transfer(a["id"], b["id"], 1, headers={"idempotency-key": "k" * 256})
    assert (long.status_code, long.json()["errors"][0]["field"]) == (422, "header.Idempotency-Key")
