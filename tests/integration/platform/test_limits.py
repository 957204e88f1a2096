"""Time limits: a slow request is cut off with 503, and shutdown drains requests in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from fastapi import APIRouter

from feint.platform.runtime import build
from feint.platform.serve import uvicorn_server
from feint.platform.web import create_app
from feint.settings import Settings
from tests.conftest import free_port, serve_app

pytestmark = pytest.mark.integration


def _slow_router(seconds: float) -> APIRouter:
    router = APIRouter()

    @router.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(seconds)
        return {"done": "yes"}

    return router


async def test_request_timeout_is_503(clean_db: str, make_settings: Callable[..., Settings]) -> None:
    """A request running past FEINT_REQUEST_TIMEOUT_SECONDS is answered 503 request-timeout."""
    platform = build(make_settings(database_url=clean_db, request_timeout_seconds=0.1), database_url=clean_db)
    async with serve_app(create_app("t", platform=platform, routers=[_slow_router(5)])) as client:
        response = await client.get("/slow")
    assert response.status_code == 503
    assert response.json()["type"] == "/problems/request-timeout"


async def test_shutdown_drains_in_flight(clean_db: str, make_settings: Callable[..., Settings]) -> None:
    """Asked to stop while a request runs, the server finishes it before closing."""
    settings = make_settings(database_url=clean_db)
    platform = build(settings, database_url=clean_db)
    port = free_port()
    server = uvicorn_server(
        create_app("t", platform=platform, routers=[_slow_router(0.5)]), settings=settings, port=port
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow"))
        await asyncio.sleep(0.2)
        server.should_exit = True
        response = await pending
    await task
    assert response.status_code == 200
    assert response.json() == {"done": "yes"}
