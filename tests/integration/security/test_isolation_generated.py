"""Tenant isolation and authentication checks generated from each service's OpenAPI document."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from feint.camouflage.app import create as create_camouflage
from feint.credits.app import create as create_credits
from feint.credits.config import CreditsSettings
from feint.platform.runtime import Platform
from feint.shadow.app import create as create_shadow
from tests.conftest import serve_app
from tests.integration.camouflage.live import live_gateway
from tests.integration.shadow import sigma
from tests.integration.shadow.conftest import starter  # noqa: F401  (a one-rule starter set)

pytestmark = pytest.mark.integration

# Operations whose answer to another tenant's key is 403 rather than 404, and why. Empty: every
# /v1 route with a path parameter is tenant-scoped.
NOT_TENANT_SCOPED: dict[tuple[str, str], str] = {}

# Operations with a path parameter that name no tenant's data, the status tenant B gets, and why.
# They are called after every other operation of the app, so that what B creates cannot change
# what the others answer.
NOT_TENANT_DATA: dict[tuple[str, str], tuple[int, str]] = {
    ("get", "/v1/personas/{name}"): (200, "the persona library ships with Feint: the same for every tenant"),
    ("put", "/v1/allowlist/{client}"): (
        201,
        "puts the client on tenant B's own allow-list; tenant A's entry is unchanged (checked after the walk)",
    ),
}

# Minimal valid bodies of mutating operations with path parameters, so that validation passes
# and the tenant check is what answers.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/holds/{id}/capture"): {},
    ("post", "/v1/holds/{id}/void"): {},
    ("post", "/v1/rulesets/{ref}/versions"): {"message": "m", "documents": [{"name": "a.yml", "yaml": sigma.SCANNER}]},
    ("post", "/v1/rulesets/{ref}/versions/{number}/transition"): {"to": "shadow", "reason": "r"},
    ("post", "/v1/rulesets/{ref}/rollback"): {"version": 1, "reason": "r"},
    ("post", "/v1/rollouts/{rollout_id}/pause"): {"reason": "r"},
    ("post", "/v1/rollouts/{rollout_id}/resume"): {"reason": "r"},
    ("post", "/v1/rollouts/{rollout_id}/abort"): {"reason": "r"},
    ("post", "/v1/rollouts/{rollout_id}/promote"): {"reason": "r"},
    ("put", "/v1/allowlist/{client}"): {"note": "tenant B"},
}

# Required query parameters of operations with path parameters.
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("get", "/v1/rulesets/{ref}/diff"): {"from": "1", "to": "2"},
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


def required_query(operation: dict[str, Any]) -> list[str]:
    return [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query" and p.get("required")]


async def walk(
    client: httpx.AsyncClient, *, values: dict[tuple[str, str], str], ids: dict[str, str], other: dict[str, str]
) -> int:
    """Call every /v1 operation of the app with ``other`` (tenant B): 404 on A's resources, lists without A's ids."""
    document = (await client.get("/openapi.json")).json()
    checked = 0
    ordered = sorted(operations(document), key=lambda op: (op[0], op[1]) in NOT_TENANT_DATA)
    for method, path, operation in ordered:
        if "{" not in path:
            if method == "get" and not required_query(operation):
                r = await client.get(path, headers=other)
                assert r.status_code == 200, f"GET {path} with tenant B's key: {r.status_code} {r.text}"
                leaked = [name for name, value in ids.items() if value in r.text]
                assert not leaked, f"GET {path} with tenant B's key shows tenant A's {leaked}"
            continue
        body = BODIES.get((method, path))
        if body is None and needs_body(operation):
            pytest.fail(f"{method.upper()} {path} needs a body: add a minimal one to BODIES in {__file__}")
        query = QUERIES.get((method, path), {})
        missing = set(required_query(operation)) - set(query)
        if missing:
            pytest.fail(f"{method.upper()} {path} needs query parameters {sorted(missing)}: add them to QUERIES")
        url = fill(path, values)
        r = await client.request(method.upper(), url, params=query, headers=other, json=body)
        expected = 403 if (method, path) in NOT_TENANT_SCOPED else 404
        if (method, path) in NOT_TENANT_DATA:
            expected = NOT_TENANT_DATA[(method, path)][0]
        assert r.status_code == expected, f"{method.upper()} {url} with tenant B's key: {r.status_code} {r.text}"
        checked += 1
    assert checked >= len({path for path, _ in values}), "fewer operations checked than paths with known parameters"
    return checked


def revoked_key(api_key: Callable[..., str], database_url: str) -> str:
    """A real admin key of tenant acme, then revoked."""
    key = api_key(tenant="acme", scope="admin")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL")
    return str(key)


async def all_unauthenticated(client: httpx.AsyncClient, revoked: str) -> None:
    """Every /v1 operation answers 401 (problem+json) with no key, a made-up or revoked key, a non-bearer scheme."""
    fake = "feint_" + uuid.uuid4().hex
    document = (await client.get("/openapi.json")).json()
    for method, path, _ in operations(document):
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        for headers in ({}, bearer(fake), bearer(revoked), {"authorization": f"Basic {fake}"}):
            r = await client.request(method.upper(), url, headers=headers, json={})
            assert r.status_code == 401, f"{method.upper()} {path} with {headers or 'no key'}: {r.status_code}"
            assert json.loads(r.text)["status"] == 401


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
        await walk(client, values=values, ids=ids, other=b)
        # A still sees its own hold: the 404s above were about tenancy, not a missing resource.
        own = await client.get(f"/v1/holds/{ids['hold']}", headers=a)
        assert own.status_code == 200, own.text


async def test_credits_routes_need_a_valid_key(platform: Platform, api_key: Callable[..., str], clean_db: str) -> None:
    """Every /v1 credits operation answers 401 with no key, a made-up key, and a malformed header."""
    app = create_credits(platform, settings=CreditsSettings(sweeper_interval_seconds=0, cache="off"))
    async with serve_app(app) as client:
        await all_unauthenticated(client, revoked_key(api_key, clean_db))


async def shadow_of_tenant_a(client: httpx.AsyncClient, a: dict[str, str]) -> dict[str, str]:
    """Resources tenant A creates: a rule set with a shadow version, a dataset, an evaluation, a rollout, feedback."""

    async def post(path: str, headers: dict[str, str], **kwargs: Any) -> dict[str, Any]:
        r = await client.post(path, headers=headers, **kwargs)
        assert r.status_code in (200, 201, 202), f"{path}: {r.status_code} {r.text}"
        return dict(r.json())

    ruleset = await post("/v1/rulesets", a, json={"name": "alpha-rules"})
    documents = [{"name": "s.yml", "yaml": sigma.SCANNER}]
    await post(f"/v1/rulesets/{ruleset['id']}/versions", a, json={"message": "one", "documents": documents})
    await post(f"/v1/rulesets/{ruleset['id']}/versions/1/transition", a, json={"to": "shadow", "reason": "r"})
    log = '10.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /a HTTP/1.1" 200 512 "-" "sqlmap/1.7"\n'
    dataset = await post("/v1/datasets?name=a.log", a, content=log.encode())
    evaluation = await post(
        "/v1/evaluations",
        a,
        json={
            "production": {"ruleset": "starter"},
            "candidate": {"documents": [sigma.SCANNER]},
            "traffic": {"dataset_id": dataset["id"]},
        },
    )
    await client.get("/v1/rulesets", headers=a)  # installs the starter set
    rollout = await post(
        "/v1/rollouts", a, json={"ruleset": ruleset["id"], "candidate": 1, "force": True, "reason": "isolation test"}
    )
    client_key = uuid.uuid4().hex
    await post("/v1/feedback", a, json={"client_key": client_key, "verdict": "bot"})
    return {
        "ruleset": str(ruleset["id"]),
        "dataset": str(dataset["id"]),
        "evaluation": str(evaluation["id"]),
        "rollout": str(rollout["id"]),
        "client_key": client_key,
    }


async def test_shadow_routes_isolate_tenants(platform: Platform, api_key: Callable[..., str]) -> None:
    """Tenant B's admin key gets 404 on every shadow route naming tenant A's resources, and lists none of them."""
    a = bearer(api_key(tenant="acme", scope="admin"))
    b = bearer(api_key(tenant="globex", scope="admin"))
    async with serve_app(create_shadow(platform)) as client:
        ids = await shadow_of_tenant_a(client, a)
        values: dict[tuple[str, str], str] = {}
        for path in (
            "/v1/rulesets/{ref}",
            "/v1/rulesets/{ref}/versions",
            "/v1/rulesets/{ref}/versions/{number}",
            "/v1/rulesets/{ref}/versions/{number}/transition",
            "/v1/rulesets/{ref}/rollback",
            "/v1/rulesets/{ref}/diff",
            "/v1/rulesets/{ref}/history",
            "/v1/rulesets/{ref}/production",
            "/v1/rulesets/{ref}/rollout",
        ):
            values[(path, "ref")] = ids["ruleset"]
            values[(path, "number")] = "1"
        values[("/v1/datasets/{dataset_id}", "dataset_id")] = ids["dataset"]
        for path in (
            "/v1/evaluations/{evaluation_id}",
            "/v1/evaluations/{evaluation_id}/report",
            "/v1/evaluations/{evaluation_id}/report.html",
        ):
            values[(path, "evaluation_id")] = ids["evaluation"]
        for path in (
            "/v1/rollouts/{rollout_id}",
            *(f"/v1/rollouts/{{rollout_id}}/{act}" for act in ("pause", "resume", "abort", "promote")),
        ):
            values[(path, "rollout_id")] = ids["rollout"]
        await walk(client, values=values, ids=ids, other=b)
        own = await client.get(f"/v1/rollouts/{ids['rollout']}", headers=a)
        assert own.status_code == 200 and own.json()["phase"] == "running", own.text


async def test_shadow_routes_need_a_valid_key(platform: Platform, api_key: Callable[..., str], clean_db: str) -> None:
    """Every /v1 shadow operation answers 401 with no key, a made-up key, and a malformed header."""
    async with serve_app(create_shadow(platform)) as client:
        await all_unauthenticated(client, revoked_key(api_key, clean_db))


async def test_camouflage_routes_isolate_tenants(
    platform: Platform, api_key: Callable[..., str], tmp_path: Path
) -> None:
    """Tenant B's admin key gets 404 on every camouflage route naming tenant A's session, decision or
    allow-listed client (made by real traffic through the gateway), and lists none of them."""
    b = bearer(api_key(tenant="globex", scope="admin"))
    async with live_gateway(platform, tmp_path, api_key) as live:
        await live.send(b"/.env", agent=b"curl/8.5.0")
        await live.decisions_written(1)
        decision = json.loads(live.log_path.read_text().splitlines()[0])["id"]
        session = (await live.get("/v1/sessions"))["items"][0]
        await live.events(2)  # the session's start and its decoy request
        client = uuid.uuid4().hex
        put = await live.api.put(f"/v1/allowlist/{client}", json={"note": "tenant A"}, headers=live.headers)
        assert put.status_code == 201, put.text
        ids = {"session": session["id"], "decision": decision, "client_key": session["client_key"], "allowed": client}
        values = {
            ("/v1/personas/{name}", "name"): "nginx-debian",
            ("/v1/sessions/{session_id}", "session_id"): session["id"],
            ("/v1/decisions/{decision_id}", "decision_id"): decision,
            ("/v1/allowlist/{client}", "client"): client,
        }
        await walk(live.api, values=values, ids=ids, other=b)
        own = await live.api.get(f"/v1/sessions/{session['id']}", headers=live.headers)
        assert own.status_code == 200, own.text
        kept = await live.api.get(f"/v1/allowlist/{client}", headers=live.headers)
        assert kept.status_code == 200 and kept.json()["note"] == "tenant A", kept.text


async def test_camouflage_routes_need_a_valid_key(
    platform: Platform, api_key: Callable[..., str], clean_db: str
) -> None:
    """Every /v1 camouflage operation answers 401 with no key, a made-up key, and a malformed header."""
    async with serve_app(create_camouflage(platform)) as client:
        await all_unauthenticated(client, revoked_key(api_key, clean_db))
