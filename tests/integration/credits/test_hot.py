"""The hand-dispatched hot routes answer as the FastAPI views did, and hand unusual input to FastAPI."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from feint.credits.models import PostTransfer, TransferColumns
from tests.integration.credits.conftest import Ledger, new_id

pytestmark = pytest.mark.integration


def hot(route: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("feint_credits_hot_requests_total", {"route": route, "outcome": outcome})
    return value or 0.0


async def test_hot_routes_answer_the_common_requests(ledger: Ledger) -> None:
    """Transfer, hold, capture, void and balance are answered by the hot path, with the same bodies and headers."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    before = {
        r: hot(r, "answered")
        for r in ("/v1/transfers", "/v1/holds", "/v1/holds/{id}/capture", "/v1/holds/{id}/void", "/v1/accounts/{id}")
    }
    moved = await ledger.transfer(a["id"], b["id"], 5, headers={"idempotency-key": "hot-1"})
    assert moved.status_code == 201 and moved.json()["amount"] == 5
    assert moved.headers["x-request-id"] and moved.headers["ratelimit-limit"]
    again = await ledger.transfer(a["id"], b["id"], 5, headers={"idempotency-key": "hot-1"})
    assert (again.status_code, again.content, again.headers["idempotent-replayed"]) == (201, moved.content, "true")
    hold = {"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 10, "timeout_seconds": 60}
    h1 = (await ledger.client.post("/v1/holds", json=hold, headers=ledger.write)).json()["id"]
    h2 = (await ledger.client.post("/v1/holds", json=hold, headers=ledger.write)).json()["id"]
    captured = await ledger.client.post(f"/v1/holds/{h1}/capture", json={"amount": 4}, headers=ledger.write)
    assert (captured.status_code, captured.json()["state"], captured.json()["captured_amount"]) == (200, "captured", 4)
    voided = await ledger.client.post(f"/v1/holds/{h2}/void", headers=ledger.write)
    assert (voided.status_code, voided.json()["state"]) == (200, "voided")
    twice = await ledger.client.post(f"/v1/holds/{h2}/void", headers=ledger.write)
    assert (twice.status_code, twice.json()["type"]) == (409, "/problems/hold-already-voided")
    balance = await ledger.balance(a["id"])
    assert (balance["posted"], balance["pending"]) == (100 - 5 - 4, 0)
    after = {r: hot(r, "answered") for r in before}
    assert all(after[r] > before[r] for r in before), (before, after)


async def test_hot_route_errors_are_problems(ledger: Ledger) -> None:
    """Auth, scope, tenant and domain errors on a hot route are the same problem documents."""
    a, b = await ledger.account(), await ledger.account()
    body = {"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 1}
    missing = await ledger.client.post("/v1/transfers", json=body)
    assert (missing.status_code, missing.json()["type"]) == (401, "/problems/unauthenticated")
    read_only = await ledger.client.post("/v1/transfers", json=body, headers=ledger.read)
    assert (read_only.status_code, read_only.json()["type"]) == (403, "/problems/forbidden")
    poor = await ledger.transfer(a["id"], b["id"], 1)
    assert (poor.status_code, poor.json()["type"], poor.json()["available"]) == (409, "/problems/insufficient-funds", 0)
    assert poor.json()["instance"] == "/v1/transfers" and poor.json()["request_id"] == poor.headers["x-request-id"]
    other = await ledger.client.get(f"/v1/accounts/{a['id']}", headers=ledger.other)
    assert (other.status_code, other.json()["type"]) == (404, "/problems/account-not-found")
    unknown = await ledger.client.post(f"/v1/holds/{new_id()}/void", headers=ledger.write)
    assert (unknown.status_code, unknown.json()["type"]) == (404, "/problems/hold-not-found")
    long_key = await ledger.transfer(a["id"], b["id"], 1, headers={"idempotency-key": "k" * 256})
    assert (long_key.status_code, long_key.json()["errors"][0]["field"]) == (422, "header.Idempotency-Key")


async def test_unusual_input_goes_to_fastapi(ledger: Ledger) -> None:
    """Invalid bodies, other content types and non-canonical ids are answered by FastAPI, as before."""
    a, b = await ledger.account(), await ledger.account()
    before = hot("/v1/transfers", "fallback")
    bad = await ledger.transfer(a["id"], b["id"], 0)
    assert (bad.status_code, bad.json()["errors"][0]["field"]) == (422, "body.amount")
    broken = await ledger.client.post(
        "/v1/transfers", content=b"{", headers={**ledger.write, "content-type": "application/json"}
    )
    assert (broken.status_code, broken.json()["type"]) == (422, "/problems/validation-failed")
    text = await ledger.client.post(
        "/v1/transfers", content=b"amount=1", headers={**ledger.write, "content-type": "text/plain"}
    )
    assert text.status_code == 422
    assert hot("/v1/transfers", "fallback") == before + 3
    hyphenless = await ledger.client.get(f"/v1/accounts/{a['id'].replace('-', '')}", headers=ledger.read)
    assert (hyphenless.status_code, hyphenless.json()["id"]) == (200, a["id"])
    not_uuid = await ledger.client.get("/v1/accounts/nope", headers=ledger.read)
    assert (not_uuid.status_code, not_uuid.json()["errors"][0]["field"]) == (422, "path.id")


async def test_plain_transfer_batches_take_the_columns_path_and_answer_as_fastapi_does(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same batch sent plain (hot path, columns) and spelled otherwise (FastAPI, models) answers
    the same, shares its Idempotency-Key's request hash, and leaves the same balances and a
    verifying audit chain; a batch with a grant or a client id still goes to FastAPI. The columns
    are never made into operations on the way (only the Python rules would need them)."""

    def never(self: TransferColumns) -> list[PostTransfer]:
        raise AssertionError("a plain batch was made into operation objects")

    monkeypatch.setattr(TransferColumns, "operations", never)
    a, b, c = await ledger.account(), await ledger.account(), await ledger.account()
    elsewhere = await ledger.account(code="other-code")
    await ledger.grant(a["id"], 100)
    nobody = new_id()

    def body(spell: str = "plain") -> dict[str, object]:
        def ids(x: str) -> str:
            return x.upper() if spell == "upper" else x

        ops = [
            {"op": "transfer", "debit_account_id": ids(a["id"]), "credit_account_id": ids(b["id"]), "amount": 3},
            {"op": "transfer", "debit_account_id": ids(a["id"]), "credit_account_id": ids(elsewhere["id"]), "amount": 5},
            {"op": "transfer", "debit_account_id": ids(b["id"]), "credit_account_id": ids(nobody), "amount": 1},
            {"op": "transfer", "debit_account_id": ids(a["id"]), "credit_account_id": ids(c["id"]), "amount": 2,
             "metadata": {"order": "o-9"}},
        ]  # fmt: skip
        return {"mode": "independent", "operations": ops}

    answered, fallback = hot("/v1/batches", "answered"), hot("/v1/batches", "fallback")
    plain = await ledger.client.post("/v1/batches", json=body(), headers=ledger.write)
    upper = await ledger.client.post("/v1/batches", json=body("upper"), headers=ledger.write)
    assert (hot("/v1/batches", "answered"), hot("/v1/batches", "fallback")) == (answered + 1, fallback + 1)
    assert plain.status_code == upper.status_code == 200
    assert plain.content == upper.content  # the same answer, byte for byte
    first = plain.json()
    assert (first["operations"], first["failed"], [r["index"] for r in first["results"]]) == (4, 2, [1, 2])
    assert first["results"][0]["error"]["type"] == "/problems/codes-differ"
    assert first["results"][1]["error"]["account_id"] == nobody
    assert [(await ledger.balance(x["id"]))["posted"] for x in (a, b, c)] == [100 - 10, 6, 4]
    key = {**ledger.write, "idempotency-key": "batch-plain-1"}
    stored = await ledger.client.post("/v1/batches", json={**body(), "results": "all"}, headers=key)
    replay = await ledger.client.post("/v1/batches", json={**body("upper"), "results": "all"}, headers=key)
    assert (replay.status_code, replay.content, replay.headers["idempotent-replayed"]) == (200, stored.content, "true")
    assert [r["status"] for r in stored.json()["results"]] == [201, 409, 404, 201]
    assert stored.json()["results"][3]["result"]["metadata"] == {"order": "o-9"}
    grant = {"mode": "atomic", "operations": [{"op": "grant", "account_id": a["id"], "amount": 1}]}
    refused = await ledger.client.post("/v1/batches", json=grant, headers=ledger.write)
    assert (refused.status_code, refused.json()["type"]) == (403, "/problems/forbidden")
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert (report["ok"], report["problems"]) == (True, [])


async def test_a_plain_batch_meeting_an_expired_hold_is_posted_by_the_rules(ledger: Ledger) -> None:
    """The columns are made into operations only when the database sends the batch to the Python
    rules (a pending hold past its timeout): the hold is settled first and the batch answers."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 10)
    hold = {"debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 8, "timeout_seconds": 60}
    held = (await ledger.client.post("/v1/holds", json=hold, headers=ledger.write)).json()["id"]
    async with ledger.platform.db.connection() as conn:  # let it expire without waiting
        await conn.execute("UPDATE credit_holds SET expires_at = now() - interval '1 second' WHERE id = %s", (held,))
    ops = [{"op": "transfer", "debit_account_id": a["id"], "credit_account_id": b["id"], "amount": 9}]
    answered = hot("/v1/batches", "answered")
    r = await ledger.client.post("/v1/batches", json={"operations": ops, "results": "all"}, headers=ledger.write)
    assert hot("/v1/batches", "answered") == answered + 1
    [result] = r.json()["results"]
    assert (result["status"], result["result"]["debit_balance"]) == (201, 1)
    assert (await ledger.client.get(f"/v1/holds/{held}", headers=ledger.read)).json()["state"] == "expired"
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert (report["ok"], report["problems"]) == (True, [])
