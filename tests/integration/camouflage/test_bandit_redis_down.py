"""The bandit with Redis configured but down: decoy selection and session ends go on in
PostgreSQL (circuit breaker of feint.platform.cache, fallbacks counted), and when Redis answers
again the band's hash is rebuilt from PostgreSQL, so the two copies agree."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from feint.camouflage.engine.bandit import Bandit
from feint.camouflage.engine.bands import Band
from feint.camouflage.engine.shared import REDIS_FALLBACKS, REDIS_RESYNCS, SharedBanditStore
from feint.camouflage.engine.wiring import bandit_store_for
from feint.camouflage.listener import ensure_tenant
from feint.camouflage.store import PostgresBanditStore
from feint.platform.runtime import Platform, build
from feint.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration

PERSONAS = ("apache-debian", "nginx-debian")
BAND = Band.BALANCED
STARTUP_SECONDS_MAX = 20


class OwnRedis:
    """A redis-server of this test only (never the machine's shared one), stopped and started again
    on the same port with its data saved to ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is installed with the test dependencies (apt redis-server)"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        for _ in range(STARTUP_SECONDS_MAX * 10):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise AssertionError(f"the test's redis-server exited ({self.process.returncode})") from None
                time.sleep(0.1)  # polling its start, not a timing under test
        raise AssertionError("the test's redis-server did not start")

    def stop(self) -> None:
        """SHUTDOWN SAVE: the data on disk comes back with the next `start`."""
        if self.process is None:
            return
        with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
            redis.Redis(port=self.port).shutdown(save=True)
        self.process.wait(timeout=STARTUP_SECONDS_MAX)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.terminate()
            server.process.wait(timeout=STARTUP_SECONDS_MAX)


def _fallbacks() -> float:
    return sum(REDIS_FALLBACKS.labels(op)._value.get() for op in ("read", "ensure", "record", "rotate"))


async def _counts(store: PostgresBanditStore | SharedBanditStore, tenant: uuid.UUID) -> dict[str, tuple[int, float]]:
    return {s.arm: (s.pulls, s.reward_sum) for s in await store.arms(tenant_id=tenant, band=BAND)}


async def test_redis_down_from_the_start_falls_back_to_postgresql(
    clean_db: str, make_settings: Callable[..., Settings]
) -> None:
    """FEINT_REDIS_URL names a port where nothing listens: sessions still get an arm and their
    rewards are counted in PostgreSQL; every fallback is counted."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    platform = build(make_settings(database_url=clean_db, redis_url=dead), database_url=clean_db)
    await platform.open()
    try:
        tenant = await ensure_tenant(platform, "acme")
        store = bandit_store_for(platform)
        assert isinstance(store, SharedBanditStore)
        bandit = Bandit(store, personas=PERSONAS)
        before = _fallbacks()
        arm = await bandit.select(tenant_id=tenant, band=BAND)
        for _ in range(10):  # past the breaker's failure count: the circuit opens, calls are refused at once
            await bandit.update(tenant_id=tenant, band=BAND, arm=arm.id, reward=0.5)
        assert store.redis.breaker.state in ("open", "half-open")
        assert (await bandit.select(tenant_id=tenant, band=BAND)).id in {a.id for a in bandit.catalog(BAND)}
        durable = await _counts(PostgresBanditStore(platform.db), tenant)
        assert durable[arm.id] == (10, 5.0)
        assert (await _counts(store, tenant))[arm.id] == (10, 5.0)
        assert _fallbacks() > before
        assert (tenant, BAND) in store.stale
    finally:
        await platform.close()


async def test_redis_stopped_and_back_is_resynced_from_postgresql(
    clean_db: str, make_settings: Callable[..., Settings], own_redis: OwnRedis, redis_prefix: str
) -> None:
    """Redis stops with the band's hash saved, sessions end while it is down (PostgreSQL only),
    Redis comes back with its old hash: the next call rebuilds it from PostgreSQL, and from then
    on Redis and PostgreSQL count the same."""
    platform: Platform = build(
        make_settings(database_url=clean_db, redis_url=own_redis.url, redis_key_prefix=redis_prefix),
        database_url=clean_db,
    )
    await platform.open()
    try:
        assert platform.redis is not None
        platform.redis.breaker.open_seconds = 0.0  # probe Redis on every call once it failed (no waiting here)
        tenant = await ensure_tenant(platform, "acme")
        store = bandit_store_for(platform)
        assert isinstance(store, SharedBanditStore)
        bandit = Bandit(store, personas=PERSONAS)
        arm = (await bandit.select(tenant_id=tenant, band=BAND)).id
        for _ in range(3):
            await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=0.25)
        key = store._key(tenant, BAND)
        assert await store.redis.client.hget(key, f"{arm}|pulls") == b"3"

        own_redis.stop()
        resyncs = REDIS_RESYNCS._value.get()
        for _ in range(4):
            await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=0.5)
        assert (await bandit.select(tenant_id=tenant, band=BAND)).id
        assert (await _counts(PostgresBanditStore(platform.db), tenant))[arm] == (7, 2.75)
        assert (tenant, BAND) in store.stale

        own_redis.start()
        raw = redis.Redis(port=own_redis.port)
        assert raw.hget(key, f"{arm}|pulls") == b"3", "Redis came back with the hash it had (3 pulls, not 7)"
        for _ in range(3):  # a pooled connection to the old server may fail once more
            seen = await _counts(store, tenant)
            if not store.stale:
                break
        assert not store.stale
        assert REDIS_RESYNCS._value.get() > resyncs
        assert seen[arm] == (7, 2.75)
        assert raw.hget(key, f"{arm}|pulls") == b"7"
        await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=1.0)
        assert raw.hget(key, f"{arm}|pulls") == b"8" and float(raw.hget(key, f"{arm}|sum") or 0) == 3.75
        assert (await _counts(PostgresBanditStore(platform.db), tenant))[arm] == (8, 3.75)
        assert await _counts(store, tenant) == await _counts(PostgresBanditStore(platform.db), tenant)
    finally:
        await platform.close()
