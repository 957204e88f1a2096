"""Running services: resolve the database, migrate, serve one or all apps, stop cleanly.

Several uvicorn servers share one event loop (and so one `Platform` and one pool) under
`feint up`. The process owns the signals: SIGTERM or SIGINT asks every server to drain its
in-flight requests, then the embedded PostgreSQL (if this process started it) is stopped; the
wheel's own ``atexit`` clean-up would not run on a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import uvicorn
from fastapi import FastAPI

from feint.platform import SERVICES, WORKERS_MAX, embedded, migrations, tls
from feint.platform.db import connect_sync
from feint.platform.runtime import Platform, build
from feint.settings import Settings

EMBEDDED_DATABASE = "feint"
GRACEFUL_SHUTDOWN_SECONDS = 10
log = structlog.get_logger(component="feint.serve")

# A worker that has not exited this long after SIGTERM (its own drain is GRACEFUL_SHUTDOWN_SECONDS)
# is killed.
WORKER_STOP_SECONDS_MAX = GRACEFUL_SHUTDOWN_SECONDS + 5
SUPERVISOR_CHECK_SECONDS = 0.5  # how often a worker checks that its supervisor still runs
LISTEN_BACKLOG = 2048


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
        return tls.harden(default())

    return factory


def uvicorn_server(app: Any, *, settings: Settings, port: int, host: str | None = None) -> _Server:
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        ssl_context_factory=_tls_factory(settings) if settings.tls_enabled else None,
        **tls.server_options(settings),
    )
    return _Server(config)


class Servable(Protocol):
    """What `serve_all` drives: a uvicorn server, or the gateway's raw listener."""

    should_exit: bool
    started: bool

    async def serve(self) -> None: ...


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the servers' coroutine on uvloop (uvicorn's own `run` would pick it; `serve` alone does
    not): the event loop's share of a request's CPU, ~15% on asyncio's selector loop, shrinks."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard] on every platform we ship
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def settle_heap() -> None:
    """Once the servers have started: collect, then move every object alive now (modules, apps,
    compiled schemas, pools) out of the collector's sight for good (`gc.freeze`).

    Measured on the credits benchmark (bench/credits/RESULTS.md, 2026-12-03): without it, each worker
    ran 9 full collections in ~40 s, up to 114 ms each, every one over the whole start-up heap and
    every request in flight waiting for it: the single-transfer p99 was most of that pause. What is
    frozen is what the process keeps for its life anyway; later garbage is collected as before."""
    gc.collect()
    gc.freeze()


async def serve_all(
    servers: Sequence[Servable],
    *,
    on_ready: Callable[[], None] | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Run servers until SIGTERM/SIGINT, then drain them all (``sockets``: the listeners of a
    supervisor's worker, which runs one uvicorn server only)."""
    if sockets is not None and not (len(servers) == 1 and isinstance(servers[0], uvicorn.Server)):
        raise ValueError("listening sockets are handed to a single uvicorn server only")
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = [
        asyncio.create_task(
            server.serve(sockets=sockets)
            if sockets is not None and isinstance(server, uvicorn.Server)
            else server.serve()
        )
        for server in servers
    ]
    try:
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):
                break  # a server failed to start (port in use); the gather below reports it
            await asyncio.sleep(0.02)
        else:
            settle_heap()
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
def migrated_database(settings: Settings) -> Iterator[DatabaseTarget]:
    """Database resolved and migrated; the embedded server stopped on exit."""
    target = resolve_database(settings)
    try:
        started = time.perf_counter()
        # Read first: a current database needs no DDL right, so a least-privilege login starts.
        if migrations.pending(target.url, role=settings.database_role or None):
            done = migrations.migrate(target.migration_url)
            log.info("migrated", applied=done, seconds=round(time.perf_counter() - started, 3))
        yield target
    finally:
        target.stop()


@contextlib.contextmanager
def platform_for(settings: Settings) -> Iterator[tuple[Platform, DatabaseTarget]]:
    """Database resolved and migrated, platform built; the embedded server stopped on exit."""
    with migrated_database(settings) as target:
        yield build(settings, database_url=target.url), target


# --- several worker processes on one port -------------------------------------------------


def default_workers(settings: Settings) -> int:
    """The number of cores when Redis is set (workers then share limits and cache), else one."""
    return min(WORKERS_MAX, os.cpu_count() or 1) if settings.redis_url else 1


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT: every worker binds its own, the kernel spreads
    connections across the listening ones (by a hash of the 4-tuple)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit it. Measured without it on the sockets handed to uvicorn: 42 ms per
        # keep-alive request (Nagle against delayed ACK) instead of 0.95 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_workers(name: str, *, settings: Settings, port: int, workers: int) -> int:
    """Supervise ``workers`` processes of ``feint serve NAME`` sharing ``port``; returns the exit code.

    The supervisor resolves and migrates the database once, holds the port bound (not listening:
    the kernel hands connections only to listening sockets, so it takes none) and starts each
    worker with the resolved database URL. SIGTERM/SIGINT is passed on to every worker, which
    drains its in-flight requests; a worker that dies on its own stops the others (exit 1) so
    that the orchestrator restarts the whole unit rather than serving at reduced capacity."""
    if not 1 <= workers <= WORKERS_MAX:
        raise ValueError(f"workers must be 1-{WORKERS_MAX}, not {workers}")
    with migrated_database(settings) as target, reuse_port_socket(settings.host, port) as holder:
        bound = int(holder.getsockname()[1])
        env = {**os.environ, "FEINT_DATABASE_URL": target.url}
        command = [
            *(sys.executable, "-m", "feint", "serve", name, "--port", str(bound), "--workers", "1"),
            *("--supervisor", str(os.getpid())),
        ]
        # Our own interpreter and module with a validated service name: nothing from outside.
        procs = [subprocess.Popen(command, env=env) for _ in range(workers)]  # noqa: S603
        stopping = False

        def stop(_signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stopping and all(p.poll() is None for p in procs):
                time.sleep(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            code = _stop_workers(procs)
        log.info("workers_stopped", workers=workers, requested=stopping)
        return 0 if stopping and code == 0 else 1


def exit_with_supervisor(supervisor: int) -> None:
    """Make this worker stop when its supervisor (pid ``supervisor``) is gone, ``kill -9`` included.

    Without it the worker would be reparented and go on serving the port alone, outside any
    supervision. The supervisor passes its pid on the command line and the worker calls this
    first, before any startup work: reading ``os.getppid()`` later would miss a supervisor killed
    while the worker was still starting (it would read the pid of its new parent). Polls the
    parent pid (`SUPERVISOR_CHECK_SECONDS`) and sends itself SIGTERM, which drains in-flight
    requests like any stop (or ends the process before its handlers are installed)."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(SUPERVISOR_CHECK_SECONDS)
        log.warning("supervisor_gone", supervisor_pid=supervisor)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> int:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_SECONDS_MAX
    worst = 0
    for proc in procs:
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            log.warning("worker_killed", pid=proc.pid)
        worst = worst or code
    return worst
