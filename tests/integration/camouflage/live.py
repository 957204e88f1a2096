"""A live gateway wired as `feint serve camouflage` wires it, with the management API beside it:
what the management API tests (and the generated isolation test) drive real traffic through."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from feint.camouflage.app import create as create_camouflage
from feint.camouflage.engine.gateway_config import GatewaySettings, MeteringSettings
from feint.camouflage.engine.sessions import SessionBook
from feint.camouflage.listener import GatewayListener, decoy_personas
from feint.platform.runtime import Platform
from tests.conftest import serve_app
from tests.integration.camouflage.conftest import exchange
from tests.integration.camouflage.upstream import raw_upstream

WAIT_SECONDS_MAX = 20.0


@dataclass
class Live:
    listener: GatewayListener
    api: httpx.AsyncClient
    headers: dict[str, str]
    log_path: Path

    @property
    def book(self) -> SessionBook:
        assert self.listener.gateway is not None
        book = self.listener.gateway.diverter
        assert isinstance(book, SessionBook)
        return book

    async def send(self, path: bytes, *, agent: bytes, extra: bytes = b"") -> bytes:
        """One request to the gateway; the first bytes of its answer (decoys may trickle the rest)."""
        raw = b"GET " + path + b" HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: " + agent + b"\r\n"
        return await exchange(
            self.listener.bound_port, raw + extra + b"Connection: close\r\n\r\n", read_until_close=False
        )

    async def get(self, path: str, **params: Any) -> Any:
        r = await self.api.get(path, params=params, headers=self.headers)
        assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text}"
        return r.json()

    async def decisions_written(self, count: int) -> None:
        assert self.listener.gateway is not None
        log = self.listener.gateway.decisions
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        while log.written < count:
            assert time.monotonic() < deadline, f"{log.written} of {count} decisions written"
            await asyncio.sleep(0.05)

    async def end_sessions(self) -> None:
        """End every session now, as the sweeper does once they have been idle long enough."""
        await self.book.sweep(now=time.time() + self.book.idle_seconds + 1)

    async def events(self, count: int, **params: Any) -> list[dict[str, Any]]:
        """The events of /v1/events once ``count`` are stored (the event writer works in batches)."""
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        while True:
            await self.book.events.flush()
            items: list[dict[str, Any]] = (await self.get("/v1/events", **params))["items"]
            if len(items) >= count:
                return items
            assert time.monotonic() < deadline, f"{len(items)} of {count} events stored"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def live_gateway(platform: Platform, tmp_path: Path, api_key: Callable[..., str]) -> AsyncIterator[Live]:
    """The gateway as `feint serve camouflage` wires it (session book, bandit on PostgreSQL, events,
    honeytokens, the persona library), diverting from threat 1 so that decoys answer at once, and
    the management API beside it on the same platform."""
    key = api_key(tenant="acme", scope="write")
    log_path = tmp_path / "decisions.jsonl"
    async with raw_upstream() as upstream:
        listener = GatewayListener(
            platform=platform,
            upstream_url=f"http://127.0.0.1:{upstream.port}",
            port=0,
            host="127.0.0.1",
            gateway_settings=GatewaySettings(tenant="acme", divert_threshold=1, decision_log=log_path),
            metering_settings=MeteringSettings(mode="off"),
            personas=decoy_personas(),
        )
        task = asyncio.create_task(listener.serve())
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        while not listener.started:
            assert not task.done(), task.exception() if task.done() else ""
            assert time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.02)
        try:
            async with serve_app(create_camouflage(platform)) as api:
                yield Live(listener, api, {"authorization": f"Bearer {key}"}, log_path)
        finally:
            listener.should_exit = True
            await task
