"""Transfers and grants over HTTP: every error of the issue, and that nothing is partly applied."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from feint.credits.service import service_of
from feint.credits.sweeper import sweep_once
from tests.integration.credits.conftest import Ledger, new_id

pytestmark = pytest.mark.integration


async def totals(ledger: Ledger, *ids: str) -> list[tuple[int, int, int | None]]:
    out = []
    for account_id in ids:
        body = await ledger.balance(account_id)
        out.append((body["posted"], body["pending"], body["available"]))
    return out


def transfers_in_db(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM credit_transfers WHERE kind = 'transfer'").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 0}, "body.amount"),
        ({"amount": -5}, "body.amount"),
        ({"amount": 1.5}, "body.amount"),
        ({"amount": 5.0}, "body.amount"),
        ({"amount": "5"}, "body.amount"),
        ({"amount": 2**63}, "body.amount"),
        ({"amount": True}, "body.amount"),
        ({"surprise": 1}, "body.surprise"),
        ({"metadata": {"k": "v" * 5000}}, "body.metadata"),
        ({"debit_account_id": "nope"}, "body.debit_account_id"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    ledger: Ledger, clean_db: str, change: dict[str, Any], field: str
) -> None:
    """Every malformed transfer is 422 naming its field, and nothing is applied."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    body = {"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 1, **change}
    r = await ledger.client.post("/v1/transfers", json=body, headers=ledger.write)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert field in {e["field"] for e in r.json()["errors"]}
    assert await totals(ledger, a["id"], b["id"]) == [(10, 0, 10), (0, 0, 0)]
    assert transfers_in_db(clean_db) == 0


async def test_unknown_and_foreign_accounts_are_404_and_nothing_moves(ledger: Ledger, clean_db: str) -> None:
    """A transfer naming an unknown account or another tenant's is 404 naming the field."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    r = await ledger.client.post("/v1/accounts", json={"code": "api-calls"}, headers=ledger.other)
    theirs = r.json()["id"]
    for credit in (new_id(), theirs):
        r = await ledger.transfer(a["id"], credit, 5)
        assert r.status_code == 404
        assert r.json()["field"] == "credit_account_id"
    r = await ledger.client.post(
        "/v1/transfers",
        json={"debit_account_id": theirs, "credit_account_id": a["id"], "amount": 1},
        headers=ledger.write,
    )
    assert r.status_code == 404
    assert await totals(ledger, a["id"], b["id"]) == [(10, 0, 10), (0, 0, 0)]
    assert transfers_in_db(clean_db) == 0


async def test_insufficient_funds_is_409_with_available(ledger: Ledger, clean_db: str) -> None:
    """Spending more than available is 409 insufficient-funds carrying the available amount."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    r = await ledger.transfer(a["id"], b["id"], 11)
    assert r.status_code == 409
    problem = r.json()
    assert (problem["type"], problem["available"], problem["account_id"]) == (
        "/problems/insufficient-funds",
        10,
        a["id"],
    )
    assert await totals(ledger, a["id"], b["id"]) == [(10, 0, 10), (0, 0, 0)]
    assert transfers_in_db(clean_db) == 0


async def test_transfer_rules_over_http(ledger: Ledger) -> None:
    """Codes must match, system accounts are not debited, consumption may be credited."""
    a, b = await ledger.account(), await ledger.account(code="storage")
    await ledger.grant(a["id"], 10)
    differ = await ledger.transfer(a["id"], b["id"], 1)
    assert (differ.status_code, differ.json()["type"]) == (409, "/problems/codes-differ")
    same = await ledger.transfer(a["id"], a["id"], 1)
    assert (same.status_code, same.json()["errors"][0]["field"]) == (422, "credit_account_id")
    systems = (await ledger.client.get("/v1/accounts", params={"code": "api-calls"}, headers=ledger.read)).json()
    by_kind = {x["kind"]: x["id"] for x in systems["accounts"]}
    mint = await ledger.transfer(by_kind["issuance"], a["id"], 1_000)
    assert (mint.status_code, mint.json()["errors"][0]["field"]) == (422, "debit_account_id")
    spend = await ledger.transfer(a["id"], by_kind["consumption"], 4)
    assert spend.status_code == 201
    assert (await ledger.balance(by_kind["consumption"]))["posted"] == 4


async def test_client_transfer_id_is_idempotent(ledger: Ledger) -> None:
    """A transfer id seen before: the same fields answer 200 with it, others 409 naming them."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    chosen = new_id()
    first = await ledger.transfer(a["id"], b["id"], 3, id=chosen, metadata={"order": 1})
    again = await ledger.transfer(a["id"], b["id"], 3, id=chosen, metadata={"order": 1})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    other = await ledger.transfer(a["id"], b["id"], 4, id=chosen, metadata={"order": 1})
    assert other.status_code == 409
    assert other.json()["fields"] == ["amount"]
    assert (await ledger.balance(a["id"]))["posted"] == 7


async def test_grants_are_for_operators_only(ledger: Ledger) -> None:
    """Only an operator key grants; a tenant key, even admin, gets 403 and mints nothing."""
    a = await ledger.account()
    for headers in (ledger.write, ledger.admin):
        r = await ledger.client.post("/v1/grants", json={"account_id": a["id"], "amount": 5}, headers=headers)
        assert r.status_code == 403
    past = await ledger.client.post(
        "/v1/grants",
        json={"account_id": a["id"], "amount": 5, "expires_at": "2001-01-01T00:00:00Z"},
        headers=ledger.operator,
    )
    assert (past.status_code, past.json()["errors"][0]["field"]) == (422, "expires_at")
    naive = await ledger.client.post(
        "/v1/grants",
        json={"account_id": a["id"], "amount": 5, "expires_at": "2031-01-01T00:00:00"},
        headers=ledger.operator,
    )
    assert naive.status_code == 422
    bad_priority = await ledger.client.post(
        "/v1/grants", json={"account_id": a["id"], "amount": 5, "priority": 101}, headers=ledger.operator
    )
    assert bad_priority.status_code == 422
    assert (await ledger.balance(a["id"]))["posted"] == 0


async def test_grants_burn_by_priority_then_expiry(ledger: Ledger) -> None:
    """Spending takes the priority-0 grant first, then the soonest-expiring one."""
    a, b = await ledger.account(), await ledger.account()
    far = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    near = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    g_far = await ledger.grant(a["id"], 10, expires_at=far, priority=5)
    g_near = await ledger.grant(a["id"], 10, expires_at=near, priority=5)
    g_first = await ledger.grant(a["id"], 10, priority=0)
    assert [g["id"] for g in (await ledger.balance(a["id"]))["grants"]] == [g_first["id"], g_near["id"], g_far["id"]]
    assert (await ledger.transfer(a["id"], b["id"], 15)).status_code == 201
    left = {g["id"]: g["remaining"] for g in (await ledger.balance(a["id"]))["grants"]}
    assert left == {g_near["id"]: 5, g_far["id"]: 10}


async def test_grant_expires_to_the_second_without_the_sweeper(ledger: Ledger) -> None:
    """Available drops at expires_at with the sweeper off; the sweeper then moves it, auditably."""
    a = await ledger.account()
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    await ledger.grant(a["id"], 40, expires_at=expires.isoformat())
    await ledger.grant(a["id"], 2)
    before = await ledger.balance(a["id"])
    assert (before["available"], before["expired"]) == (42, 0)
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
    after = await ledger.balance(a["id"])
    assert (after["posted"], after["expired"], after["available"]) == (42, 40, 2)
    report = await sweep_once(service_of(ledger.platform))
    assert report.grants == 1
    swept = await ledger.balance(a["id"])
    assert (swept["posted"], swept["expired"], swept["available"]) == (2, 0, 2)
    entries = (await ledger.client.get(f"/v1/accounts/{a['id']}/entries", headers=ledger.read)).json()["entries"]
    assert (entries[0]["kind"], entries[0]["amount"]) == ("expiry", -40)
    verified = await ledger.client.get("/v1/audit/verify", headers=ledger.admin)
    assert verified.json()["ok"], verified.text
