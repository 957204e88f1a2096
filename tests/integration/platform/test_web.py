"""The shared web plumbing on a real database: probes, problems, auth, scopes, limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from feint.errors import Conflict
from feint.platform.runtime import Platform, build
from feint.platform.web import RequestContext, create_app, scope
from feint.settings import Settings
from tests.conftest import serve_app

pytestmark = pytest.mark.integration


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: int = Field(gt=0)


def _router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/read")
    async def read(ctx: RequestContext = Depends(scope("read"))) -> dict[str, Any]:
        return {"tenant": ctx.principal.tenant_name, "scope": ctx.principal.scope}

    @router.delete("/v1/read")
    async def unread() -> dict[str, str]:
        return {}

    @router.post("/v1/admin")
    async def admin(body: Thing, ctx: RequestContext = Depends(scope("admin"))) -> dict[str, Any]:
        return {"amount": body.amount}

    @router.get("/v1/operator")
    async def operator(ctx: RequestContext = Depends(scope("operator"))) -> dict[str, Any]:
        return {"tenant_id": str(ctx.tenant_id) if ctx.tenant_id else None}

    @router.get("/v1/conflict")
    async def conflict(ctx: RequestContext = Depends(scope("read"))) -> None:
        raise Conflict("it clashes", available=3)

    @router.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals SELECT * FROM api_keys")

    return router


async def test_health_and_ready(platform: Platform) -> None:
    """/health and /ready answer 200 while the database is reachable."""
    async with serve_app(create_app("t", platform=platform)) as client:
        assert (await client.get("/health")).json()["status"] == "ok"
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok"}


async def test_problem_json_for_404_405_422_500(platform: Platform, api_key: Callable[..., str]) -> None:
    """Unknown routes, wrong methods, bad bodies and crashes all answer problem+json without internals."""
    key = api_key(tenant="acme", scope="admin")
    async with serve_app(create_app("t", platform=platform, routers=[_router()])) as client:
        r404 = await client.get("/nope")
        assert r404.status_code == 404
        assert r404.headers["content-type"] == "application/problem+json"
        assert r404.json()["type"] == "/problems/not-found"
        r405 = await client.delete("/health")
        assert r405.status_code == 405
        assert r405.json()["type"] == "/problems/method-not-allowed"
        # Allow names every method of the path, not only the one route Starlette tried last.
        other = await client.patch("/v1/read")
        assert other.headers["allow"] == "DELETE, GET"
        assert other.json()["allow"] == ["DELETE", "GET"]
        r422 = await client.post(
            "/v1/admin", json={"amount": -1, "extra": 1}, headers={"authorization": f"Bearer {key}"}
        )
        assert r422.status_code == 422
        body = r422.json()
        assert body["type"] == "/problems/validation-failed"
        fields = {e["field"] for e in body["errors"]}
        assert {"body.amount", "body.extra"} <= fields
        r500 = await client.get("/v1/boom")
        assert r500.status_code == 500
        assert r500.json()["type"] == "/problems/internal"
        assert "SELECT" not in r500.text and "Traceback" not in r500.text
        assert r500.json()["request_id"] == r500.headers["x-request-id"]
        r409 = await client.get("/v1/conflict", headers={"authorization": f"Bearer {key}"})
        assert r409.json()["available"] == 3


async def test_auth_401_403_by_scope(platform: Platform, api_key: Callable[..., str]) -> None:
    """A missing or wrong key is 401; a key without the route's scope is 403; operator reaches all."""
    reader = api_key(tenant="acme", scope="read")
    admin = api_key(tenant="acme", scope="admin")
    operator = api_key(scope="operator")
    async with serve_app(create_app("t", platform=platform, routers=[_router()])) as client:
        assert (await client.get("/v1/read")).status_code == 401
        assert (await client.get("/v1/read", headers={"authorization": "Bearer feint_wrong"})).status_code == 401
        ok = await client.get("/v1/read", headers={"authorization": f"Bearer {reader}"})
        assert ok.json() == {"tenant": "acme", "scope": "read"}
        denied = await client.post("/v1/admin", json={"amount": 1}, headers={"authorization": f"Bearer {reader}"})
        assert denied.status_code == 403
        assert denied.json()["type"] == "/problems/forbidden"
        assert (await client.get("/v1/operator", headers={"authorization": f"Bearer {admin}"})).status_code == 403
        op = await client.get("/v1/operator", headers={"authorization": f"Bearer {operator}", "feint-tenant": "acme"})
        assert op.status_code == 200
        assert op.json()["tenant_id"] is not None
        missing = await client.get(
            "/v1/operator", headers={"authorization": f"Bearer {operator}", "feint-tenant": "ghost"}
        )
        assert missing.status_code == 404


async def test_request_id_echoed_and_validated(platform: Platform) -> None:
    """A safe X-Request-ID is echoed; an unsafe one is replaced by a generated id."""
    async with serve_app(create_app("t", platform=platform)) as client:
        mine = await client.get("/health", headers={"x-request-id": "abc-123"})
        assert mine.headers["x-request-id"] == "abc-123"
        bad = await client.get("/health", headers={"x-request-id": "a b<script>"})
        assert bad.headers["x-request-id"] != "a b<script>"
        assert len(bad.headers["x-request-id"]) == 32


async def test_payload_too_large(
    clean_db: str, make_settings: Callable[..., Settings], api_key: Callable[..., str]
) -> None:
    """A body over the limit is 413 problem+json, by Content-Length or by streamed size."""
    key = api_key(tenant="acme", scope="admin")
    built = build(make_settings(database_url=clean_db, request_body_bytes_max=64), database_url=clean_db)
    async with serve_app(create_app("t", platform=built, routers=[_router()])) as client:
        r = await client.post("/v1/admin", content=b"{" + b" " * 100 + b"}", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 413
        assert r.json()["type"] == "/problems/payload-too-large"

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b" " * 20

        r2 = await client.post("/v1/admin", content=chunks(), headers={"authorization": f"Bearer {key}"})
        assert r2.status_code == 413


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_rate_limit(
    backend: str,
    clean_db: str,
    make_settings: Callable[..., Settings],
    api_key: Callable[..., str],
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Past the burst a key gets 429 with Retry-After and RateLimit-* headers (in process, and leased from Redis)."""
    key = api_key(tenant="acme", scope="read")
    redis = {"redis_url": redis_url, "redis_key_prefix": redis_prefix} if backend == "redis" else {}
    built = build(
        make_settings(database_url=clean_db, rate_limit_burst=3, rate_limit_per_second=0.5, **redis),
        database_url=clean_db,
    )
    async with serve_app(create_app("t", platform=built, routers=[_router()])) as client:
        codes = []
        for _ in range(4):
            r = await client.get("/v1/read", headers={"authorization": f"Bearer {key}"})
            codes.append(r.status_code)
        assert codes == [200, 200, 200, 429]
        assert r.json()["type"] == "/problems/rate-limited"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-remaining"] == "0"
