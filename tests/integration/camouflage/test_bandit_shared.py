"""Bandit state shared by replicas: Redis (written through to PostgreSQL) when configured,
PostgreSQL alone when not; concurrent updates from tasks and processes lose no pull or reward."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from feint.camouflage.engine.bandit import Bandit
from feint.camouflage.engine.bands import Band
from feint.camouflage.engine.shared import SharedBanditStore
from feint.camouflage.engine.wiring import bandit_store_for
from feint.camouflage.listener import ensure_tenant
from feint.camouflage.store import PostgresBanditStore
from feint.platform.runtime import Platform, build
from feint.settings import Settings
from tests.conftest import TEST_MASTER_KEY

pytestmark = pytest.mark.integration

PERSONAS = ("apache-debian", "nginx-debian")
BAND = Band.BALANCED
TASKS = 40
UPDATES_PER_TASK = 5
PROCESS_UPDATES = 150
CHILD_SECONDS_MAX = 120
# Rewards that binary floating point holds exactly, so that sums compare with ==.
REWARDS = (0.25, 0.5, 0.75, 1.0)

# One replica in its own process: its own platform, pools and Redis client, the real wiring.
CHILD = """
import asyncio, json, os, sys, uuid
from feint.camouflage.engine.bandit import Bandit
from feint.camouflage.engine.bands import Band
from feint.camouflage.engine.wiring import bandit_store_for
from feint.platform.runtime import build
from feint.settings import Settings

async def main() -> None:
    spec = json.loads(sys.argv[1])
    settings = Settings(**spec["settings"])
    platform = build(settings, database_url=spec["settings"]["database_url"])
    await platform.open()
    try:
        bandit = Bandit(bandit_store_for(platform), personas=tuple(spec["personas"]))
        tenant, band, arm = uuid.UUID(spec["tenant"]), Band(spec["band"]), spec["arm"]
        rewards = spec["rewards"]
        await asyncio.gather(*(
            bandit.update(tenant_id=tenant, band=band, arm=arm, reward=rewards[n % len(rewards)])
            for n in range(spec["updates"])
        ))
    finally:
        await platform.close()

asyncio.run(main())
"""


def _settings_values(tmp_path: Path, database_url: str, redis_url: str | None, prefix: str) -> dict[str, object]:
    return {
        "env": "test",
        "home": str(tmp_path / "home"),
        "master_key": TEST_MASTER_KEY,
        "redis_url": redis_url,
        "redis_key_prefix": prefix,
        "log_format": "json",
        "auth_cache_seconds": 0.0,
        "database_url": database_url,
    }


@pytest.fixture
def replica(clean_db: str, make_settings: Callable[..., Settings], redis_url: str) -> Callable[[str], OpenedPlatform]:
    """Factory: an opened platform (one replica) on the test database and the real Redis under ``prefix``."""

    def make(prefix: str) -> OpenedPlatform:
        return OpenedPlatform(
            build(
                make_settings(database_url=clean_db, redis_url=redis_url, redis_key_prefix=prefix),
                database_url=clean_db,
            )
        )

    return make


class OpenedPlatform:
    """``async with replica(prefix) as platform``: opened on entry, closed on exit."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def __aenter__(self) -> Platform:
        await self.platform.open()
        return self.platform

    async def __aexit__(self, *exc: object) -> None:
        await self.platform.close()


@pytest.fixture
async def tenant(platform: Platform) -> uuid.UUID:
    return await ensure_tenant(platform, "acme")


def _prefix() -> str:
    return f"feint-test-{uuid.uuid4().hex[:8]}:"


async def test_the_store_is_redis_when_configured_and_postgresql_without(
    platform: Platform, replica: Callable[[str], OpenedPlatform]
) -> None:
    """With FEINT_REDIS_URL the bandit reads Redis and writes through to PostgreSQL; without it,
    PostgreSQL is the shared store."""
    assert isinstance(bandit_store_for(platform), PostgresBanditStore)
    async with replica(_prefix()) as with_redis:
        store = bandit_store_for(with_redis)
        assert isinstance(store, SharedBanditStore)
        assert isinstance(store.durable, PostgresBanditStore)


async def test_two_replicas_lose_no_pull_or_reward(
    platform: Platform, tenant: uuid.UUID, replica: Callable[[str], OpenedPlatform]
) -> None:
    """Two replicas (own Redis clients and pools), many concurrent sessions ending on the same arm:
    every pull and every reward is counted, in Redis and in PostgreSQL, and each replica reads it."""
    prefix = _prefix()
    async with replica(prefix) as one, replica(prefix) as two:
        a = Bandit(bandit_store_for(one), personas=PERSONAS)
        b = Bandit(bandit_store_for(two), personas=PERSONAS)
        arm = (await a.select(tenant_id=tenant, band=BAND)).id
        a.abandon(tenant_id=tenant, band=BAND, arm=arm)

        async def sessions(bandit: Bandit, task: int) -> None:
            for n in range(UPDATES_PER_TASK):
                reward = REWARDS[(task + n) % len(REWARDS)]
                await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=reward)

        await asyncio.gather(*(sessions(a if t % 2 else b, t) for t in range(TASKS)))
        total = TASKS * UPDATES_PER_TASK
        reward_sum = sum(REWARDS[(t + n) % len(REWARDS)] for t in range(TASKS) for n in range(UPDATES_PER_TASK))
        for bandit in (a, b):
            seen = {s.arm: s for s in await bandit.stats(tenant_id=tenant, band=BAND)}
            assert (seen[arm].pulls, seen[arm].reward_sum) == (total, reward_sum)
        durable = {s.arm: s for s in await PostgresBanditStore(platform.db).arms(tenant_id=tenant, band=BAND)}
        assert (durable[arm].pulls, durable[arm].reward_sum) == (total, reward_sum)


async def test_two_processes_lose_no_pull_or_reward(
    platform: Platform, tenant: uuid.UUID, clean_db: str, redis_url: str, tmp_path: Path
) -> None:
    """Two gateway processes ending sessions on the same arm at once: the shared counts are the sum
    of both, in Redis and in PostgreSQL."""
    prefix = _prefix()
    starter = Bandit(PostgresBanditStore(platform.db), personas=PERSONAS)
    await starter.stats(tenant_id=tenant, band=BAND)  # the band's rows, as the first session creates them
    arm = starter.catalog(BAND)[0].id
    spec = {
        "settings": _settings_values(tmp_path, clean_db, redis_url, prefix),
        "personas": PERSONAS,
        "tenant": str(tenant),
        "band": BAND.value,
        "arm": arm,
        "rewards": REWARDS,
        "updates": PROCESS_UPDATES,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    children = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, json.dumps(spec), env=env) for _ in range(2)
    ]
    async with asyncio.timeout(CHILD_SECONDS_MAX):
        codes = [await child.wait() for child in children]
    assert codes == [0, 0]
    total = 2 * PROCESS_UPDATES
    reward_sum = 2 * sum(REWARDS[n % len(REWARDS)] for n in range(PROCESS_UPDATES))
    durable = {s.arm: s for s in await PostgresBanditStore(platform.db).arms(tenant_id=tenant, band=BAND)}
    assert (durable[arm].pulls, durable[arm].reward_sum) == (total, reward_sum)
    async with OpenedPlatform(
        build(Settings(**_settings_values(tmp_path, clean_db, redis_url, prefix)), database_url=clean_db)
    ) as reader:
        shared = {s.arm: s for s in await bandit_store_for(reader).arms(tenant_id=tenant, band=BAND)}
    assert (shared[arm].pulls, shared[arm].reward_sum) == (total, reward_sum)


async def test_two_replicas_rotate_an_arm_once(
    platform: Platform, tenant: uuid.UUID, replica: Callable[[str], OpenedPlatform]
) -> None:
    """Both replicas deciding to retire the same arm at once: one rotation, in Redis and PostgreSQL."""
    prefix = _prefix()
    async with replica(prefix) as one, replica(prefix) as two:
        # Two active arms of the band's four, so that there is one to explore in place of a retired one.
        a = Bandit(bandit_store_for(one), personas=PERSONAS, active_max=2)
        b = Bandit(bandit_store_for(two), personas=PERSONAS, active_max=2)
        stats = await a.stats(tenant_id=tenant, band=BAND)
        active = [s.arm for s in stats if s.active]
        idle = [s.arm for s in stats if not s.active]
        assert active and idle, "the band needs an active and an inactive arm for this test"
        retire, explore = active[0], idle[0]
        done = await asyncio.gather(
            *(
                bandit.store.rotate(tenant_id=tenant, band=BAND, retire=retire, explore=explore)
                for bandit in (a, b) * 10
            )
        )
        assert done.count(True) == 1
        for store in (a.store, b.store, PostgresBanditStore(platform.db)):
            now = {s.arm: s.active for s in await store.arms(tenant_id=tenant, band=BAND)}
            assert (now[retire], now[explore]) == (False, True)


async def test_redis_that_lost_its_data_is_seeded_from_postgresql(
    platform: Platform, tenant: uuid.UUID, replica: Callable[[str], OpenedPlatform]
) -> None:
    """After Redis loses the bandit's hash, the counts come back from PostgreSQL and go on from there."""
    prefix = _prefix()
    async with replica(prefix) as one:
        bandit = Bandit(bandit_store_for(one), personas=PERSONAS)
        store = bandit.store
        assert isinstance(store, SharedBanditStore)
        arm = bandit.catalog(BAND)[0].id
        await bandit.stats(tenant_id=tenant, band=BAND)
        for _ in range(3):
            await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=0.5)
        key = store._key(tenant, BAND)
        await store.redis.client.delete(key)
        seen = {s.arm: s for s in await store.arms(tenant_id=tenant, band=BAND)}
        assert (seen[arm].pulls, seen[arm].reward_sum) == (3, 1.5)
        assert await store.redis.client.hget(key, f"{arm}|pulls") == b"3"
        await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=0.25)
        seen = {s.arm: s for s in await store.arms(tenant_id=tenant, band=BAND)}
        assert (seen[arm].pulls, seen[arm].reward_sum) == (4, 1.75)


async def test_without_redis_replicas_share_postgresql(
    platform: Platform, tenant: uuid.UUID, clean_db: str, make_settings: Callable[..., Settings]
) -> None:
    """Without Redis, two replicas on PostgreSQL alone count every concurrent session, and what one
    learns changes the other's next choice."""
    second = build(make_settings(database_url=clean_db), database_url=clean_db)
    async with OpenedPlatform(second) as other:
        a = Bandit(bandit_store_for(platform), personas=PERSONAS)
        b = Bandit(bandit_store_for(other), personas=PERSONAS)
        arms = [s.arm for s in await a.stats(tenant_id=tenant, band=BAND) if s.active]
        await asyncio.gather(
            *(
                bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=1.0 if arm == arms[0] else 0.25)
                for bandit in (a, b)
                for arm in arms
                for _ in range(10)
            )
        )
        seen = {s.arm: s for s in await b.stats(tenant_id=tenant, band=BAND)}
        assert all(seen[arm].pulls == 20 for arm in arms)
        assert seen[arms[0]].reward_sum == 20.0 and seen[arms[1]].reward_sum == 5.0
        # Every arm tried 20 times: the one that paid most has the highest UCB1 index in either replica.
        assert (await b.select(tenant_id=tenant, band=BAND)).id == arms[0]


async def test_a_session_of_an_arm_with_no_row_is_counted(
    platform: Platform, tenant: uuid.UUID, replica: Callable[[str], OpenedPlatform], clean_db: str
) -> None:
    """The band's rows removed while a session ran (as by an operator's reset): its end inserts the
    arm's row, active, with the session counted, in PostgreSQL alone and through Redis, the same
    as `MemoryBanditStore` (tests/unit/camouflage/engine/test_sessions.py)."""
    durable = PostgresBanditStore(platform.db)
    async with replica(_prefix()) as with_redis:
        for bandit in (Bandit(durable, personas=PERSONAS), Bandit(bandit_store_for(with_redis), personas=PERSONAS)):
            arm = (await bandit.select(tenant_id=tenant, band=BAND)).id
            async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:  # the owner
                await conn.execute("DELETE FROM camouflage_arms WHERE tenant_id = %s", (tenant,))
            store = bandit.store
            if isinstance(store, SharedBanditStore):
                await store.redis.client.delete(store._key(tenant, BAND))
            await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=0.5)
            await bandit.update(tenant_id=tenant, band=BAND, arm=arm, reward=0.25)
            for reader in (durable, store):
                rows = {s.arm: s for s in await reader.arms(tenant_id=tenant, band=BAND)}
                assert (rows[arm].pulls, rows[arm].reward_sum, rows[arm].active) == (2, 0.75, True)
