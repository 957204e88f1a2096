"""The database: one async connection pool per process, always PostgreSQL.

`Database` is the only object the stores receive. It hands out connections in a transaction
and translates the driver's connection errors into :class:`DependencyUnavailable` at this
boundary, so that a store never sees a psycopg exception it did not ask for.

Least privilege: the services run as ``FEINT_DATABASE_ROLE`` (default ``feint_app``), a role
with data rights only (SELECT/INSERT/UPDATE/DELETE where each table allows it, no DDL). When
the URL's user differs, every pooled connection does ``SET ROLE`` to it on connect; in a
production deployment the URL names that login role directly and migrations run with
``FEINT_MIGRATION_DATABASE_URL`` (the owner), see docs/operations.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row

from feint.errors import DependencyUnavailable
from feint.platform.telemetry import tracer

POOL_TIMEOUT_SECONDS = 10.0
PING_TIMEOUT_SECONDS = 2.0
TRANSACTION_ROLLBACK_CLASS = "40"  # SQLSTATE class: serialization_failure, deadlock_detected, …
CONNECT_TIMEOUT_SECONDS = 5
POOL_WAITING_MAX = 2_048
STATEMENT_TIMEOUT_MILLISECONDS = 30_000

Conn = psycopg.AsyncConnection[dict[str, Any]]


class Database:
    """A pool of connections to one PostgreSQL database, opened by `open` and closed by `close`."""

    def __init__(self, url: str, *, role: str | None, size_max: int, name: str = "feint") -> None:
        self.url = url
        self.role = role
        self._pool: psycopg_pool.AsyncConnectionPool[Conn] = psycopg_pool.AsyncConnectionPool(
            url,
            open=False,
            min_size=min(2, size_max),
            max_size=size_max,
            timeout=POOL_TIMEOUT_SECONDS,
            max_waiting=POOL_WAITING_MAX,
            name=name,
            kwargs={
                "row_factory": dict_row,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MILLISECONDS}",
                "autocommit": True,
            },
            configure=self._configure,
        )

    async def _configure(self, conn: Conn) -> None:
        if self.role:
            await conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.role)))

    async def open(self) -> None:
        """Open the pool without waiting for the server; `ready` says whether it answers."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self, *, timeout: float = POOL_TIMEOUT_SECONDS) -> AsyncIterator[Conn]:
        """A connection in autocommit mode: each statement is its own transaction."""
        try:
            with tracer.start_as_current_span("db.connection", attributes={"db.system": "postgresql"}):
                async with self._pool.connection(timeout=timeout) as conn:
                    yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            if (getattr(exc, "sqlstate", None) or "").startswith(TRANSACTION_ROLLBACK_CLASS):
                raise  # deadlock or serialization failure: the caller may retry; the database is fine
            raise DependencyUnavailable("database unavailable", dependency="database") from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A connection inside one transaction: committed on exit, rolled back on any error."""
        with tracer.start_as_current_span("db.transaction", attributes={"db.system": "postgresql"}):
            async with self.connection() as conn, conn.transaction():
                yield conn

    async def ping(self) -> float:
        """Round trip to the server in seconds; raises DependencyUnavailable when it does not answer."""
        started = time.perf_counter()
        async with self.connection(timeout=PING_TIMEOUT_SECONDS) as conn:
            await conn.execute("SELECT 1")
        return time.perf_counter() - started

    def pool_stats(self) -> dict[str, int]:
        """Pool size, idle connections and waiting requests, for the metrics endpoint."""
        stats = self._pool.get_stats()
        return {
            "size": stats.get("pool_size", 0),
            "available": stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0),
            "max": self._pool.max_size,
        }


def connect_sync(url: str, *, autocommit: bool = True) -> psycopg.Connection[dict[str, Any]]:
    """A plain connection for the CLI and migrations (not pooled)."""
    try:
        return psycopg.connect(
            url, autocommit=autocommit, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(
            f"cannot connect to the database: {_first_line(exc)}", dependency="database"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
