"""A real gateway (the decoy server with the gateway responder) in front of a raw upstream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from feint.camouflage.decoy import server
from feint.camouflage.decoy.contract import Connection, Limits, Reply, Request, TimeoutPhase
from feint.camouflage.engine import wiring
from feint.camouflage.engine.clients import MemoryClients
from feint.camouflage.engine.decisions import DecisionLog
from feint.camouflage.engine.rulesource import RuleReloader
from feint.camouflage.engine.upstream import Upstream
from feint.camouflage.gateway import GATEWAY_LIMITS, Gateway, OnePersona
from feint.camouflage.listener import decoy_personas, ensure_tenant
from feint.platform.runtime import Platform
from tests.integration.camouflage.upstream import RawUpstream, raw_upstream

DECOY_BODY = b"<html><body><h1>Welcome to nginx!</h1></body></html>\n"


class FakeNginx:
    """A stand-in persona: one fixed page with nginx's head (the real personas are tested in decoy/)."""

    limits: Limits = GATEWAY_LIMITS

    def respond(self, request: Request, conn: Connection) -> Reply:
        head = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
        close = (request.header(b"connection") or b"").lower() == b"close"
        return Reply(data=head % len(DECOY_BODY) + DECOY_BODY, close=close)

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        return None


@dataclass
class Running:
    gateway: Gateway
    upstream: RawUpstream
    port: int
    decisions: DecisionLog
    log_path: Path
    tenant_id: uuid.UUID


@contextlib.asynccontextmanager
async def running_gateway(
    platform: Platform,
    tmp_path: Path,
    *,
    rules: RuleReloader | None = None,
    threshold: int = 5,
    tenant: str = "acme",
    engine: bool = False,
) -> AsyncIterator[Running]:
    """Upstream, gateway and decision writer running; everything stopped and flushed on exit.

    ``engine``: the decoys are the real session book (bandit, personas, honeytokens, events in
    PostgreSQL) that ``feint serve camouflage`` wires, instead of one fixed nginx page."""
    tenant_id = await ensure_tenant(platform, tenant)
    book = wiring.build_book(platform, tenant_id=tenant_id, personas=decoy_personas()) if engine else None
    log_path = tmp_path / "decisions.jsonl"
    async with raw_upstream() as upstream:
        reloader = rules or RuleReloader.for_settings(
            db=platform.db, tenant=tenant, ruleset="starter", path=None, poll_seconds=0.2
        )
        await reloader.refresh()
        decisions = DecisionLog(db=platform.db, path=log_path, queue_max=10_000)
        gateway = Gateway(
            upstream=Upstream(f"http://127.0.0.1:{upstream.port}"),
            rules=reloader,
            clients=MemoryClients(),
            diverter=OnePersona(FakeNginx(), persona="nginx") if book is None else book,
            decisions=decisions,
            tenant_id=tenant_id,
            divert_threshold=threshold,
        )
        writer = asyncio.create_task(decisions.run())
        if book is not None:
            await book.start()
        listening = await server.serve(gateway, host="127.0.0.1", port=0)
        try:
            yield Running(gateway, upstream, listening.port, decisions, log_path, tenant_id)
        finally:
            await listening.stop(grace_seconds=2)
            if book is not None:
                await book.close()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await gateway.upstream.close()


async def exchange(port: int, raw: bytes, *, read_until_close: bool = True) -> bytes:
    """Send raw bytes to the gateway and read the answer (until the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(-1) if read_until_close else await reader.read(65536)
    finally:
        writer.close()


@pytest.fixture
async def gw(platform: Platform, tmp_path: Path) -> AsyncIterator[Running]:
    async with running_gateway(platform, tmp_path) as running:
        yield running
