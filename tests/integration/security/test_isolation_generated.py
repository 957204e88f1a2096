"""Tenant isolation and authentication checks generated from each service's OpenAPI document."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from feint.credits.app import create as create_credits
from feint.credits.config import CreditsSettings
from feint.platform.runtime import Platform
from tests.conftest import serve_app

pytestmark = pytest.mark.integration

# Operations whose answer to another tenant's key is 403 rather than 404, and why. Empty: every
# /v1 route with a path parameter is tenant-scoped.
NOT_TENANT_SCOPED: dict[tuple[str, str], str] = {}

# Minimal valid bodies of mutating operations with path parameters, so that validation passes
# and the tenant check is what answers.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/holds/{id}/capture"): {},
    ("post", "/v1/holds/{id}/void"): {},
}


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path, operation) under /v1 in an OpenAPI document."""
    found = []
    for path, item in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                found.append((method, path, operation))
    assert found, "no /v1 operation in the OpenAPI document"
    return found


def fill(path: str, values: dict[tuple[str, str], str]) -> str:
    """``path`` with each {parameter} replaced from ``values``; an unknown parameter fails the test."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if (path, name) not in values:
            pytest.fail(
                f"path parameter {name!r} of {path} is unknown to the isolation test: add a value made by "
                f"tenant A to the values table in {__file__}"
            )
        return values[(path, name)]

    return re.sub(r"\{([^}]+)\}", one, path)


def needs_body(operation: dict[str, Any]) -> bool:
    return bool(operation.get("requestBody", {}).get("required"))


async def credits_of_tenant_a(client: httpx.AsyncClient, a: dict[str, str], op: dict[str, str]) -> dict[str, str]:
    """Resources tenant A creates through the API: accounts, a grant, a transfer, a hold, a card."""

    async def post(path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        r = await client.post(path, json=body, headers=headers)
        assert r.status_code in (200, 201), f"{path}: {r.status_code} {r.text}"
        return dict(r.json())

    first = await post("/v1/accounts", {"code": "api-calls"}, a)
    second = await post("/v1/accounts", {"code": "api-calls"}, a)
    await post("/v1/grants", {"account_id": first["id"], "amount": 1000}, op)
    transfer = await post(
        "/v1/transfers", {"debit_account_id": first["id"], "credit_account_id": second["id"], "amount": 5}, a
    )
    hold = await post(
        "/v1/holds",
        {"debit_account_id": first["id"], "credit_account_id": second["id"], "amount": 10, "timeout_seconds": 300},
        a,
    )
    card = await post("/v1/payment-methods", {"card_number": "4242424242424242", "expiry": "12/29", "holder": "A"}, a)
    return {
        "account": str(first["id"]),
        "transfer": str(transfer.get("id", transfer.get("transfer_id", ""))),
        "hold": str(hold["id"]),
        "card": str(card["id"]),
    }


async def test_credits_routes_isolate_tenants(
    platform: Platform, api_key: Callable[..., str], make_settings: Callable[..., Any]
) -> None:
    """Tenant B's admin key gets 404 on every credits route naming tenant A's resources, and lists none of them."""
    app = create_credits(platform, settings=CreditsSettings(sweeper_interval_seconds=0, cache="off"))
    a = bearer(api_key(tenant="acme", scope="admin"))
    b = bearer(api_key(tenant="globex", scope="admin"))
    op = bearer(api_key(scope="operator"), **{"feint-tenant": "acme"})
    async with serve_app(app) as client:
        ids = await credits_of_tenant_a(client, a, op)
        values = {
            ("/v1/accounts/{id}", "id"): ids["account"],
            ("/v1/accounts/{id}/entries", "id"): ids["account"],
            ("/v1/holds/{id}", "id"): ids["hold"],
            ("/v1/holds/{id}/capture", "id"): ids["hold"],
            ("/v1/holds/{id}/void", "id"): ids["hold"],
            ("/v1/payment-methods/{id}", "id"): ids["card"],
        }
        document = (await client.get("/openapi.json")).json()
        checked = 0
        for method, path, operation in operations(document):
            if "{" not in path:
                if method == "get":
                    r = await client.get(path, headers=b)
                    text = r.text
                    leaked = [name for name, value in ids.items() if value and value in text]
                    assert not leaked, f"GET {path} with tenant B's key shows tenant A's {leaked}"
                continue
            body = BODIES.get((method, path))
            if body is None and needs_body(operation):
                pytest.fail(f"{method.upper()} {path} needs a body: add a minimal one to BODIES in {__file__}")
            url = fill(path, values)
            r = await client.request(method.upper(), url, headers=b, json=body if method != "get" else None)
            expected = 403 if (method, path) in NOT_TENANT_SCOPED else 404
            assert r.status_code == expected, f"{method.upper()} {url} with tenant B's key: {r.status_code} {r.text}"
            checked += 1
        assert checked >= len(values), "fewer operations checked than parameter values known"
        # A still sees its own hold: the 404s above were about tenancy, not a missing resource.
        own = await client.get(f"/v1/holds/{ids['hold']}", headers=a)
        assert own.status_code == 200, own.text


async def test_credits_routes_need_a_valid_key(platform: Platform, api_key: Callable[..., str]) -> None:
    """Every /v1 credits operation answers 401 with no key, a made-up key, and a malformed header."""
    app = create_credits(platform, settings=CreditsSettings(sweeper_interval_seconds=0, cache="off"))
    fake = "feint_" + uuid.uuid4().hex
    async with serve_app(app) as client:
        document = (await client.get("/openapi.json")).json()
        for method, path, _ in operations(document):
            url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            for headers in ({}, bearer(fake), {"authorization": f"Basic {fake}"}):
                r = await client.request(method.upper(), url, headers=headers, json={})
                assert r.status_code == 401, f"{method.upper()} {path} with {headers or 'no key'}: {r.status_code}"
                assert json.loads(r.text)["status"] == 401
