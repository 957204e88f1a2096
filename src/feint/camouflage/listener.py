"""The gateway listener of one process: the decoy server on ``--gateway-port`` with the gateway
as its responder, and the background work around it (rule reload, decision log, sessions,
metering), started and drained together.

`GatewayListener` has the three members `platform.serve.serve_all` drives (``serve()``,
``started``, ``should_exit``), so it runs beside the uvicorn servers of the management APIs in
one event loop and drains with them on SIGTERM/SIGINT: no new connections, replies in progress
finished (``DRAIN_SECONDS`` at most), queued decisions written, the upstream pool closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final

import structlog

from feint.camouflage.decoy.contract import Connection, Reply, Request, Responder, TimeoutPhase
from feint.camouflage.engine.clients import ClientStore, MemoryClients, RedisClients
from feint.camouflage.engine.decisions import DecisionLog
from feint.camouflage.engine.gateway_config import (
    GatewaySettings,
    MeteringSettings,
    load_gateway_settings,
    load_metering_settings,
    trusted_networks,
)
from feint.camouflage.engine.rulesource import RuleReloader
from feint.camouflage.engine.upstream import Upstream
from feint.camouflage.gateway import GATEWAY_LIMITS, Diverter, Gateway, Meter
from feint.platform import tls
from feint.platform.runtime import Platform

DRAIN_SECONDS: Final = 10.0
EXIT_POLL_SECONDS: Final = 0.1
ALERTS_IN_FLIGHT_MAX: Final = 256
log = structlog.get_logger(component="feint.camouflage.listener")


async def ensure_tenant(platform: Platform, name: str) -> uuid.UUID:
    """The id of the protected tenant, created when new (a fresh `feint up` has none)."""
    async with platform.db.connection() as conn:
        await conn.execute(
            "INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (uuid.uuid4(), name)
        )
        cursor = await conn.execute("SELECT id FROM tenants WHERE name = %s", (name,))
        row = await cursor.fetchone()
    if row is None:  # pragma: no cover - inserted or present just above
        raise RuntimeError(f"tenant {name} vanished")
    return uuid.UUID(str(row["id"]))


def tls_context(platform: Platform) -> ssl.SSLContext | None:
    """The public listener's TLS (never asks for client certificates: browsers and bots connect here)."""
    settings = platform.settings
    if not settings.tls_enabled or settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = tls.harden(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return context


def client_store(platform: Platform) -> ClientStore:
    return RedisClients(platform.redis) if platform.redis is not None else MemoryClients()


@dataclass
class GatewayListener:
    """One gateway listener; `serve` runs it until `should_exit`, then drains."""

    platform: Platform
    upstream_url: str
    port: int
    gateway_settings: GatewaySettings
    metering_settings: MeteringSettings
    personas: Mapping[str, Responder]
    host: str | None = None
    should_exit: bool = False
    started: bool = False
    gateway: Gateway | None = None
    bound_port: int = 0
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _alerts: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def for_platform(cls, platform: Platform, *, upstream_url: str, port: int) -> GatewayListener:
        """The listener with settings read (and checked) now, so a bad value stops start-up."""
        return cls(
            platform=platform,
            upstream_url=upstream_url,
            port=port,
            gateway_settings=load_gateway_settings(),
            metering_settings=load_metering_settings(),
            personas=decoy_personas(),
        )

    async def _build(self) -> tuple[Gateway, list[Any]]:
        from feint.camouflage.engine import metering, wiring

        settings = self.gateway_settings
        tenant_id = await ensure_tenant(self.platform, settings.tenant)
        book = wiring.build_book(self.platform, tenant_id=tenant_id, personas=self.personas)
        diverter: Diverter = book
        rules = RuleReloader.for_settings(
            db=self.platform.db,
            tenant=settings.tenant,
            ruleset=settings.ruleset,
            path=settings.rules_path,
            poll_seconds=settings.rules_poll_seconds,
        )
        await rules.refresh()
        decisions = DecisionLog(db=self.platform.db, path=settings.decision_log, queue_max=settings.decision_queue_max)
        meter: Meter | None = metering.for_settings(
            self.metering_settings,
            tenant=settings.tenant,
            events=book.events,
            tenant_id=tenant_id,
            tls=tls.client_context(self.platform.settings),
        )
        watch = book.watch
        gateway = Gateway(
            upstream=Upstream(self.upstream_url),
            rules=rules,
            clients=client_store(self.platform),
            diverter=diverter,
            decisions=decisions,
            tenant_id=tenant_id,
            divert_threshold=settings.divert_threshold,
            meter=meter,
            trusted_proxies=trusted_networks(settings.trusted_proxies),
            decoy_paths=bait_paths(),
            alerts=book.events,
            honeytokens=self._honeytokens(watch),
        )
        return gateway, [book, rules, decisions, meter]

    def _honeytokens(self, watch: Any) -> Callable[[Request, str, str], int]:
        """Honeytokens in a request: counted at once, alerted (one database read) in the background."""

        def seen(request: Request, ip: str, key: str) -> int:
            hits = watch.honeytokens.find_in_request(request)
            if hits and len(self._alerts) < ALERTS_IN_FLIGHT_MAX:
                task = asyncio.get_running_loop().create_task(
                    watch.used(hits, seen_by="gateway", src_host=ip, client_key=key)
                )
                self._alerts.add(task)
                task.add_done_callback(self._alerts.discard)
            return len(hits)

        return seen

    async def serve(self) -> None:
        from feint.camouflage.decoy import server as decoy_server

        await self.platform.open()
        try:
            gateway, parts = await self._build()
            book, rules, decisions, meter = parts
            self.gateway = gateway
            await book.start()
            self._tasks = [asyncio.create_task(rules.run()), asyncio.create_task(decisions.run())]
            if meter is not None:
                self._tasks.append(asyncio.create_task(meter.run()))
            listening = await decoy_server.serve(
                gateway,
                host=self.host or self.platform.settings.host,
                port=self.port,
                ssl_context=tls_context(self.platform),
            )
            self.bound_port = listening.port
            self.started = True
            log.info("gateway_listening", port=listening.port, upstream=self.upstream_url)
            while not self.should_exit:  # noqa: ASYNC110 - serve_all sets a flag, as it does for uvicorn
                await asyncio.sleep(EXIT_POLL_SECONDS)
            await listening.stop(grace_seconds=DRAIN_SECONDS)
            await gateway.clients.drain()  # the client windows still to be written (Redis)
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await book.close()
            await gateway.upstream.close()
        finally:
            await self.platform.close()


NGINX_404: Final = (
    b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n"
    b"<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"
)  # nginx 1.22.1's own 404 page, as Debian's nginx serves it


class MinimalNginx:
    """The decoy used until the persona library (decoy/persona.py) is installed: nginx's 404 for
    every path, with nginx's header order. Only a fallback: it does not play any site."""

    limits = GATEWAY_LIMITS

    def respond(self, request: Request, conn: Connection) -> Reply:
        close = (request.header(b"connection") or b"").lower() == b"close" or request.version != b"HTTP/1.1"
        head = (
            b"HTTP/1.1 404 Not Found\r\nServer: nginx/1.22.1\r\nDate: "
            + formatdate(usegmt=True).encode()
            + b"\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
            % (len(NGINX_404), b"close" if close else b"keep-alive")
        )
        return Reply(data=head + (b"" if request.method == b"HEAD" else NGINX_404), close=close)

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        return None


def decoy_personas() -> Mapping[str, Responder]:
    """Every persona of the decoy library (``decoy/personas``), each played by its responder;
    `MinimalNginx` only when the library has none."""
    from feint.camouflage.decoy import persona, responder

    found: dict[str, Responder] = {name: responder.PersonaResponder(persona.load(name)) for name in persona.available()}
    return found or {"nginx": MinimalNginx()}


def bait_paths() -> frozenset[str]:
    """Paths only decoys serve: the persona site files that carry honeytokens (``/.env``,
    ``/backup/db-backup.sql`` ...). A client asking for one outside a decoy session read a decoy
    or guessed like a scanner; either way it adds `threat.DECOY_PATH_POINTS`."""
    from feint.camouflage.decoy import persona

    return frozenset(
        path for name in persona.available() for path, data in persona.load(name).site.items() if b"{{token:" in data
    )
