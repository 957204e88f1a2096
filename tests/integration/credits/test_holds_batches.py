"""Holds and batches over HTTP: two-phase transfers, exactly-once resolution, atomic and independent batches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from feint.credits.models import BATCH_OPERATIONS_MAX
from feint.credits.service import service_of
from feint.credits.sweeper import sweep_once
from tests.integration.credits.conftest import Ledger, new_id

pytestmark = pytest.mark.integration


async def place(ledger: Ledger, debit: str, credit: str, amount: int, timeout: int = 60, **extra: Any) -> Any:
    return await ledger.client.post(
        "/v1/holds",
        json={
            "debit_account_id": debit,
            "credit_account_id": credit,
            "amount": amount,
            "timeout_seconds": timeout,
            **extra,
        },
        headers=ledger.write,
    )


async def test_hold_capture_part_and_release_the_rest(ledger: Ledger) -> None:
    """A hold raises only the debit's pending; a partial capture posts part and releases the rest."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    h = await place(ledger, a["id"], b["id"], 60)
    assert h.status_code == 201
    hold = h.json()
    assert hold["state"] == "pending"
    a_bal, b_bal = await ledger.balance(a["id"]), await ledger.balance(b["id"])
    assert (a_bal["posted"], a_bal["pending"], a_bal["available"]) == (100, 60, 40)
    assert (b_bal["posted"], b_bal["pending"]) == (0, 0)
    over = await ledger.client.post(f"/v1/holds/{hold['id']}/capture", json={"amount": 61}, headers=ledger.write)
    assert (over.status_code, over.json()["type"]) == (409, "/problems/capture-exceeds-hold")
    c = await ledger.client.post(f"/v1/holds/{hold['id']}/capture", json={"amount": 25}, headers=ledger.write)
    assert c.status_code == 200
    assert (c.json()["state"], c.json()["captured_amount"]) == ("captured", 25)
    a_bal, b_bal = await ledger.balance(a["id"]), await ledger.balance(b["id"])
    assert (a_bal["posted"], a_bal["pending"], a_bal["available"], b_bal["posted"]) == (75, 0, 75, 25)
    got = await ledger.client.get(f"/v1/holds/{hold['id']}", headers=ledger.read)
    assert got.json()["transfer_id"] == c.json()["transfer_id"]


async def test_hold_resolves_exactly_once(ledger: Ledger) -> None:
    """Second capture or void, and capture after expiry, get their own errors."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    captured = (await place(ledger, a["id"], b["id"], 10)).json()["id"]
    assert (await ledger.client.post(f"/v1/holds/{captured}/capture", headers=ledger.write)).status_code == 200
    again = await ledger.client.post(f"/v1/holds/{captured}/capture", headers=ledger.write)
    void_after = await ledger.client.post(f"/v1/holds/{captured}/void", headers=ledger.write)
    assert again.json()["type"] == void_after.json()["type"] == "/problems/hold-already-captured"
    voided = (await place(ledger, a["id"], b["id"], 10)).json()["id"]
    assert (await ledger.client.post(f"/v1/holds/{voided}/void", headers=ledger.write)).json()["state"] == "voided"
    twice = await ledger.client.post(f"/v1/holds/{voided}/void", headers=ledger.write)
    assert (twice.status_code, twice.json()["type"]) == (409, "/problems/hold-already-voided")
    expiring = (await place(ledger, a["id"], b["id"], 10, timeout=1)).json()["id"]
    assert (await ledger.balance(a["id"]))["available"] == 80
    await asyncio.sleep(1.05)
    assert (await ledger.balance(a["id"]))["available"] == 90  # released at its timeout, sweeper off
    late = await ledger.client.post(f"/v1/holds/{expiring}/capture", headers=ledger.write)
    assert (late.status_code, late.json()["type"]) == (409, "/problems/hold-expired")
    assert (await ledger.client.get(f"/v1/holds/{expiring}", headers=ledger.read)).json()["state"] == "expired"
    unknown = await ledger.client.post(f"/v1/holds/{new_id()}/void", headers=ledger.write)
    foreign = await ledger.client.post(f"/v1/holds/{voided}/void", headers=ledger.other)
    missing = await ledger.client.get(f"/v1/holds/{new_id()}", headers=ledger.read)
    assert unknown.status_code == foreign.status_code == missing.status_code == 404
    bal = await ledger.balance(a["id"])
    assert (bal["posted"], bal["pending"], bal["available"]) == (90, 0, 90)


async def test_hold_errors(ledger: Ledger) -> None:
    """A hold beyond available is 409 with available; bad timeouts are 422; client ids are idempotent."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 5)
    poor = await place(ledger, a["id"], b["id"], 6)
    assert (poor.status_code, poor.json()["available"]) == (409, 5)
    for timeout in (0, 30 * 24 * 3600 + 1, 1.5):
        r = await place(ledger, a["id"], b["id"], 1, timeout=timeout)  # type: ignore[arg-type]
        assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "body.timeout_seconds")
    chosen = new_id()
    first = await place(ledger, a["id"], b["id"], 2, id=chosen)
    again = await place(ledger, a["id"], b["id"], 2, id=chosen)
    assert (first.status_code, again.status_code) == (201, 200)
    assert (await place(ledger, a["id"], b["id"], 3, id=chosen)).status_code == 409
    assert (await ledger.balance(a["id"]))["pending"] == 2


async def test_sweeper_expires_holds(ledger: Ledger) -> None:
    """The sweeper releases a hold past its timeout and records it."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    hold_id = (await place(ledger, a["id"], b["id"], 10, timeout=1)).json()["id"]
    await asyncio.sleep(1.05)
    report = await sweep_once(service_of(ledger.platform))
    assert report.holds == 1
    assert (await ledger.client.get(f"/v1/holds/{hold_id}", headers=ledger.read)).json()["state"] == "expired"
    assert (await ledger.balance(a["id"]))["version"] >= 3
    assert (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()["ok"]


def transfer_op(debit: str, credit: str, amount: int) -> dict[str, Any]:
    return {"op": "transfer", "debit_account_id": debit, "credit_account_id": credit, "amount": amount}


async def test_atomic_batch_all_or_nothing(ledger: Ledger) -> None:
    """An atomic batch applies every operation, or none and names the failing one and why."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    hold = (await place(ledger, a["id"], b["id"], 4)).json()["id"]
    ok = await ledger.client.post(
        "/v1/batches",
        json={
            "mode": "atomic",
            "results": "all",
            "operations": [
                transfer_op(a["id"], b["id"], 1),
                {
                    "op": "hold",
                    "debit_account_id": a["id"],
                    "credit_account_id": b["id"],
                    "amount": 2,
                    "timeout_seconds": 9,
                },
                {"op": "capture", "hold_id": hold, "amount": 3},
            ],
        },
        headers=ledger.write,
    )
    assert ok.status_code == 200, ok.text
    assert [r["status"] for r in ok.json()["results"]] == [201, 201, 200]
    before = await ledger.balance(a["id"])
    failed = await ledger.client.post(
        "/v1/batches",
        json={
            "mode": "atomic",
            "operations": [
                transfer_op(a["id"], b["id"], 1),
                transfer_op(a["id"], b["id"], 1_000),
                transfer_op(a["id"], b["id"], 1),
            ],
        },
        headers=ledger.write,
    )
    assert failed.status_code == 409
    assert (failed.json()["type"], failed.json()["operation_index"]) == ("/problems/insufficient-funds", 1)
    assert await ledger.balance(a["id"]) == before


async def test_independent_batch_answers_each_operation(ledger: Ledger) -> None:
    """Independent mode applies what it can and answers a result or a problem per operation."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    r = await ledger.client.post(
        "/v1/batches",
        json={
            "mode": "independent",
            "results": "all",
            "operations": [
                transfer_op(a["id"], b["id"], 4),
                transfer_op(a["id"], b["id"], 40),
                transfer_op(a["id"], new_id(), 1),
                {"op": "void", "hold_id": new_id()},
                transfer_op(a["id"], b["id"], 4),
            ],
        },
        headers=ledger.write,
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 409, 404, 404, 201]
    assert results[1]["error"]["available"] == 6
    assert (await ledger.balance(a["id"]))["posted"] == 2


async def test_batch_answers_only_failures_by_default(ledger: Ledger) -> None:
    """Without `results: all` the answer counts the operations and lists only the failed ones, by index."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    r = await ledger.client.post(
        "/v1/batches",
        json={
            "mode": "independent",
            "operations": [
                transfer_op(a["id"], b["id"], 4),
                transfer_op(a["id"], b["id"], 40),
                transfer_op(a["id"], b["id"], 4),
            ],
        },
        headers=ledger.write,
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["mode"], body["operations"], body["failed"]) == ("independent", 3, 1)
    assert [(x["index"], x["status"], x["error"]["type"]) for x in body["results"]] == [
        (1, 409, "/problems/insufficient-funds")
    ]
    assert (await ledger.balance(b["id"]))["posted"] == 8


async def test_batch_limits_and_grant_scope(ledger: Ledger) -> None:
    """8,190 operations commit in one request; 8,191 are 422; grant operations need an operator."""
    a, b = await ledger.account(), await ledger.account()
    grant = {"op": "grant", "account_id": a["id"], "amount": BATCH_OPERATIONS_MAX}
    denied = await ledger.client.post("/v1/batches", json={"operations": [grant]}, headers=ledger.write)
    assert denied.status_code == 403
    granted = await ledger.client.post("/v1/batches", json={"operations": [grant]}, headers=ledger.operator)
    assert granted.status_code == 200
    ops = [transfer_op(a["id"], b["id"], 1)] * BATCH_OPERATIONS_MAX
    full = await ledger.client.post("/v1/batches", json={"mode": "atomic", "operations": ops}, headers=ledger.write)
    assert full.status_code == 200
    assert (full.json()["operations"], full.json()["failed"], full.json()["results"]) == (BATCH_OPERATIONS_MAX, 0, [])
    assert (await ledger.balance(b["id"]))["posted"] == BATCH_OPERATIONS_MAX
    too_many = await ledger.client.post("/v1/batches", json={"operations": [*ops, ops[0]]}, headers=ledger.write)
    assert (too_many.status_code, too_many.json()["errors"][0]["field"]) == (422, "body.operations")
    empty = await ledger.client.post("/v1/batches", json={"operations": []}, headers=ledger.write)
    assert empty.status_code == 422
    assert (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()["ok"]
