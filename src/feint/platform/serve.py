"""Running services: resolve the database, migrate, serve one or all apps, stop cleanly.

Several uvicorn servers share one event loop (and so one `Platform` and one pool) under
`feint up`. The process owns the signals: SIGTERM or SIGINT asks every server to drain its
in-flight requests, then the embedded PostgreSQL (if this process started it) is stopped; the
wheel's own ``atexit`` clean-up would not run on a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import ssl
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import uvicorn
from fastapi import FastAPI

from feint.platform import embedded, migrations
from feint.platform.db import connect_sync
from feint.platform.runtime import Platform, build
from feint.settings import Settings

EMBEDDED_DATABASE = "feint"
GRACEFUL_SHUTDOWN_SECONDS = 10
log = structlog.get_logger(component="feint.serve")

SERVICES = ("credits", "shadow", "camouflage")


@dataclass
class DatabaseTarget:
    url: str
    migration_url: str
    server: embedded.EmbeddedPostgres | None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def resolve_database(settings: Settings) -> DatabaseTarget:
    """The configured server, or the embedded one (started now, database created if new)."""
    if settings.database_url:
        return DatabaseTarget(
            url=settings.database_url,
            migration_url=settings.migration_database_url or settings.database_url,
            server=None,
        )
    server = embedded.start(settings.home_dir)
    with connect_sync(server.url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
    url = server.url_for(EMBEDDED_DATABASE)
    return DatabaseTarget(url=url, migration_url=url, server=server)


def service_app(name: str, platform: Platform) -> FastAPI:
    """The app of one service by name (imported on demand: a pod loads only its own domain)."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")
    module = importlib.import_module(f"feint.{name}.app")
    create: Callable[[Platform], FastAPI] = module.create
    return create(platform)


def service_port(settings: Settings, name: str) -> int:
    return int(getattr(settings, f"{name}_port"))


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process (several share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _tls_factory(settings: Settings) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    def factory(_: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        # TLS 1.2 at least; OpenSSL negotiates 1.3 first when the client has it.
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    return factory


def uvicorn_server(app: Any, *, settings: Settings, port: int, host: str | None = None) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_enabled else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_enabled else None,
        ssl_context_factory=_tls_factory(settings) if settings.tls_enabled else None,
    )
    return _Server(config)


class Servable(Protocol):
    """What `serve_all` drives: a uvicorn server, or the gateway's raw listener."""

    should_exit: bool
    started: bool

    async def serve(self) -> None: ...


async def serve_all(servers: Sequence[Servable], *, on_ready: Callable[[], None] | None = None) -> None:
    """Run servers until SIGTERM/SIGINT, then drain them all."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):
                break  # a server failed to start (port in use); the gather below reports it
            await asyncio.sleep(0.02)
        else:
            if on_ready is not None:
                on_ready()
        await asyncio.gather(*tasks)
    finally:
        stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    failed = [s for s in servers if not s.started]
    if failed:
        raise SystemExit(1)


@contextlib.contextmanager
def platform_for(settings: Settings) -> Iterator[tuple[Platform, DatabaseTarget]]:
    """Database resolved and migrated, platform built; the embedded server stopped on exit."""
    target = resolve_database(settings)
    try:
        started = time.perf_counter()
        done = migrations.migrate(target.migration_url)
        log.info("migrated", applied=done, seconds=round(time.perf_counter() - started, 3))
        yield build(settings, database_url=target.url), target
    finally:
        target.stop()
