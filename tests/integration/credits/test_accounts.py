"""Accounts and entries over HTTP: creation, reads, listings, pagination, as_of, scopes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from tests.integration.credits.conftest import Ledger, new_id

pytestmark = pytest.mark.integration


async def test_create_account_answers_with_its_id_and_opens_system_accounts(ledger: Ledger) -> None:
    """POST /v1/accounts answers 201 with the account; its code's system accounts exist after."""
    r = await ledger.client.post(
        "/v1/accounts", json={"code": "api-calls", "metadata": {"customer": "c-1"}}, headers=ledger.write
    )
    assert r.status_code == 201
    body = r.json()
    assert uuid.UUID(body["id"])
    assert (body["kind"], body["posted"], body["pending"], body["available"]) == ("customer", 0, 0, 0)
    assert body["metadata"] == {"customer": "c-1"}
    systems = await ledger.client.get("/v1/accounts", params={"kind": "issuance"}, headers=ledger.read)
    assert [a["code"] for a in systems.json()["accounts"]] == ["api-calls"]
    got = await ledger.client.get(f"/v1/accounts/{body['id']}", headers=ledger.read)
    assert got.json() == body


async def test_client_chosen_account_id_is_idempotent(ledger: Ledger) -> None:
    """The same id and fields answer 200 with the account; other fields answer 409 naming them."""
    chosen = new_id()
    first = await ledger.client.post("/v1/accounts", json={"id": chosen, "code": "api-calls"}, headers=ledger.write)
    again = await ledger.client.post("/v1/accounts", json={"id": chosen, "code": "api-calls"}, headers=ledger.write)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == chosen
    clash = await ledger.client.post("/v1/accounts", json={"id": chosen, "code": "storage"}, headers=ledger.write)
    assert clash.status_code == 409
    assert clash.json()["type"] == "/problems/exists-with-different-fields"
    assert clash.json()["fields"] == ["code"]
    reserved = await ledger.client.post(
        "/v1/accounts", json={"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "x")), "code": "api-calls"}, headers=ledger.write
    )
    assert reserved.status_code == 422
    assert reserved.json()["errors"][0]["field"] == "id"


async def test_unknown_and_foreign_accounts_are_404(ledger: Ledger) -> None:
    """An unknown id and another tenant's account look exactly the same: 404."""
    mine = await ledger.account()
    unknown = await ledger.client.get(f"/v1/accounts/{new_id()}", headers=ledger.read)
    foreign = await ledger.client.get(f"/v1/accounts/{mine['id']}", headers=ledger.other)
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json()["type"] == foreign.json()["type"] == "/problems/account-not-found"
    entries = await ledger.client.get(f"/v1/accounts/{mine['id']}/entries", headers=ledger.other)
    assert entries.status_code == 404
    bad = await ledger.client.get("/v1/accounts/not-a-uuid", headers=ledger.read)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "path.id"


async def test_account_validation_names_the_field(ledger: Ledger) -> None:
    """Bad codes, unknown fields, negative limits and limits without no_overdraft are 422 by field."""
    cases = [
        ({"code": "Not Valid"}, "body.code"),
        ({"code": "ok", "colour": 1}, "body.colour"),
        ({"code": "ok", "overdraft_limit": -1}, "body.overdraft_limit"),
        ({"code": "ok", "no_overdraft": False, "overdraft_limit": 5}, "overdraft_limit"),
        ({"code": "ok", "metadata": {"x": "y" * 5000}}, "body.metadata"),
    ]
    for body, field in cases:
        r = await ledger.client.post("/v1/accounts", json=body, headers=ledger.write)
        assert r.status_code == 422, body
        assert field in {e["field"] for e in r.json()["errors"]}, r.json()


async def test_scopes_of_account_routes(ledger: Ledger) -> None:
    """Reading needs read, opening accounts write; an operator must name the tenant."""
    denied = await ledger.client.post("/v1/accounts", json={"code": "x"}, headers=ledger.read)
    assert denied.status_code == 403
    anonymous = await ledger.client.get(f"/v1/accounts/{new_id()}")
    assert anonymous.status_code == 401
    operator = {k: v for k, v in ledger.operator.items() if k != "feint-tenant"}
    no_tenant = await ledger.client.post("/v1/accounts", json={"code": "x"}, headers=operator)
    assert no_tenant.status_code == 400
    assert no_tenant.json()["type"] == "/problems/tenant-required"
    as_operator = await ledger.client.post("/v1/accounts", json={"code": "x"}, headers=ledger.operator)
    assert as_operator.status_code == 201


async def test_list_accounts_pages_with_a_cursor(ledger: Ledger) -> None:
    """GET /v1/accounts pages through every account exactly once."""
    made = {(await ledger.account(code="pages"))["id"] for _ in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"code": "pages", "kind": "customer", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await ledger.client.get("/v1/accounts", params=params, headers=ledger.read)).json()
        seen += [a["id"] for a in page["accounts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)
    bad = await ledger.client.get("/v1/accounts", params={"cursor": "%%%"}, headers=ledger.read)
    assert bad.status_code == 422


async def test_entries_running_balance_cursor_and_as_of(ledger: Ledger) -> None:
    """Entries come newest first with running balances; as_of gives the balance at a past instant."""
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    await asyncio.sleep(0.01)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    for amount in (10, 20, 30):
        assert (await ledger.transfer(a["id"], b["id"], amount)).status_code == 201
    seen = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await ledger.client.get(f"/v1/accounts/{a['id']}/entries", params=params, headers=ledger.read)).json()
        seen += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(e["amount"], e["balance"]) for e in seen] == [(-30, 40), (-20, 70), (-10, 90), (100, 100)]
    assert seen[0]["counterparty_account_id"] == b["id"]
    past = (
        await ledger.client.get(
            f"/v1/accounts/{a['id']}/entries", params={"as_of": middle.isoformat()}, headers=ledger.read
        )
    ).json()
    assert past["balance"] == 100
    assert [e["kind"] for e in past["entries"]] == ["grant"]
    before = (
        await ledger.client.get(
            f"/v1/accounts/{a['id']}/entries", params={"as_of": "2000-01-01T00:00:00Z"}, headers=ledger.read
        )
    ).json()
    assert (before["balance"], before["entries"]) == (0, [])
    now = (await ledger.client.get(f"/v1/accounts/{b['id']}/entries", headers=ledger.read)).json()
    assert now["balance"] == 60
    assert (
        await ledger.client.get(f"/v1/accounts/{a['id']}/entries", params={"cursor": "bm9wZQ"}, headers=ledger.read)
    ).status_code == 422


async def test_openapi_documents_every_route_with_examples(ledger: Ledger) -> None:
    """The OpenAPI lists every credits route and the request bodies carry examples."""
    spec = (await ledger.client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/v1/accounts",
        "/v1/accounts/{id}",
        "/v1/accounts/{id}/entries",
        "/v1/grants",
        "/v1/transfers",
        "/v1/holds",
        "/v1/holds/{id}",
        "/v1/holds/{id}/capture",
        "/v1/holds/{id}/void",
        "/v1/batches",
        "/v1/audit/verify",
        "/v1/payment-methods",
        "/v1/payment-methods/{id}",
    ):
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    for name in ("TransferIn", "HoldIn", "GrantIn", "AccountIn", "BatchIn", "PaymentMethodIn"):
        assert schemas[name].get("examples"), name
    assert "409" in paths["/v1/transfers"]["post"]["responses"]
