"""A first walk through the ledger."""

from __future__ import annotations

import pytest

from tests.integration.credits.conftest import Ledger

pytestmark = pytest.mark.integration


async def test_grant_transfer_hold_capture(ledger: Ledger) -> None:
    """Credits granted, moved, held and captured keep every balance consistent."""
    a = await ledger.account()
    b = await ledger.account()
    g = await ledger.grant(a["id"], 100)
    assert g["remaining"] == 100
    r = await ledger.transfer(a["id"], b["id"], 30)
    assert r.status_code == 201, r.text
    assert (await ledger.balance(a["id"]))["available"] == 70
    h = await ledger.client.post(
        "/v1/holds",
        json={"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 50, "timeout_seconds": 60},
        headers=ledger.write,
    )
    assert h.status_code == 201, h.text
    bal = await ledger.balance(a["id"])
    assert (bal["posted"], bal["pending"], bal["available"]) == (70, 50, 20)
    c = await ledger.client.post(f"/v1/holds/{h.json()['id']}/capture", json={"amount": 20}, headers=ledger.write)
    assert c.status_code == 200, c.text
    bal = await ledger.balance(a["id"])
    assert (bal["posted"], bal["pending"], bal["available"]) == (50, 0, 50)
    v = await ledger.client.get("/v1/audit/verify", headers=ledger.admin)
    assert v.json()["ok"], v.text
