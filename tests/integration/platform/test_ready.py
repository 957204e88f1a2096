"""/ready follows its dependencies; logs carry the request id; the demo application answers."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from feint.camouflage import demo
from feint.platform import embedded, migrations
from feint.platform.runtime import build
from feint.platform.telemetry import configure_logging
from feint.platform.web import create_app
from feint.settings import Settings
from tests.conftest import free_port, serve_app

pytestmark = pytest.mark.integration


async def test_ready_503_when_database_stops(make_settings: Callable[..., Settings]) -> None:
    """/ready is 200 while PostgreSQL runs and 503 naming the database once it stops."""
    home = Path(tempfile.mkdtemp(prefix="feint-ready-"))
    server = embedded.start(home)
    try:
        migrations.migrate(server.url)
        platform = build(make_settings(database_url=server.url), database_url=server.url)
        async with serve_app(create_app("t", platform=platform)) as client:
            assert (await client.get("/ready")).status_code == 200
            server.stop()
            response = await client.get("/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["type"] == "/problems/dependency-unavailable"
            assert body["dependency"] == "database"
            assert (await client.get("/health")).status_code == 200
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


async def test_ready_names_redis(clean_db: str, make_settings: Callable[..., Settings]) -> None:
    """With Redis configured but down, /ready is 503 naming redis."""
    settings = make_settings(database_url=clean_db, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    platform = build(settings, database_url=clean_db)
    async with serve_app(create_app("t", platform=platform)) as client:
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["dependency"] == "redis"


async def test_camouflage_stays_ready_without_redis(clean_db: str, make_settings: Callable[..., Settings]) -> None:
    """The gateway's pod stays in service with Redis down (its bandit falls back to PostgreSQL):
    /ready is 200 and says degraded; the database is still required."""
    from feint.camouflage.app import create as create_camouflage

    settings = make_settings(database_url=clean_db, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    platform = build(settings, database_url=clean_db)
    async with serve_app(create_camouflage(platform)) as client:
        response = await client.get("/ready")
        assert response.status_code == 200
        assert response.json()["status"] == "degraded"
        assert response.json()["checks"] == {"database": "ok", "redis": "unavailable"}


async def test_ready_with_redis(clean_db: str, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    """With Redis up, /ready checks both dependencies."""
    platform = build(make_settings(database_url=clean_db, redis_url=redis_url), database_url=clean_db)
    async with serve_app(create_app("t", platform=platform)) as client:
        body = (await client.get("/ready")).json()
        assert body["checks"] == {"database": "ok", "redis": "ok"}


async def test_request_id_in_logs(
    platform: object, capsys: pytest.CaptureFixture[str], make_settings: Callable[..., Settings]
) -> None:
    """Every log line of a request carries its request id, in JSON."""
    configure_logging(level="info", fmt="json")
    async with serve_app(create_app("t", platform=platform)) as client:  # type: ignore[arg-type]
        await client.get("/nothing-here", headers={"x-request-id": "trace-me-42"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "trace-me-42"]
    assert mine and mine[0]["status"] == 404 and mine[0]["service"] == "t"


async def test_metrics_exposes_routes_and_pool(platform: object) -> None:
    """/metrics has request counts by route template, in-flight gauges, pool and build info."""
    async with serve_app(create_app("metrics-test", platform=platform)) as client:  # type: ignore[arg-type]
        await client.get("/health")
        text = (await client.get("/metrics")).text
    assert 'feint_http_requests_total{method="GET",route="/health",service="metrics-test",status="200"}' in text
    assert "feint_http_requests_in_flight" in text
    assert "feint_db_pool_connections" in text
    assert "feint_build_info" in text


async def test_demo_application() -> None:
    """The built-in demo shop answers its pages."""
    transport = httpx.ASGITransport(app=demo.create())
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        assert "Demo shop" in (await client.get("/")).text
        assert len((await client.get("/api/products")).json()["products"]) == 3
        assert (await client.get("/login")).status_code == 200
        assert (await client.post("/login", data={"user": "a"})).status_code == 401
