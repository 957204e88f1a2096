"""The balance cache on a real Redis: written through, never stale, behind the circuit breaker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from feint.credits.cache import CachedAccount, RedisBalanceCache
from feint.credits.config import CreditsSettings
from feint.credits.service import service_of
from feint.platform.cache import CircuitBreaker
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def redis_cache(redis_url: str, redis_prefix: str) -> Callable[..., RedisBalanceCache]:
    def make(*, url: str = redis_url, breaker: CircuitBreaker | None = None) -> RedisBalanceCache:
        return RedisBalanceCache(
            url,
            prefix=redis_prefix + uuid.uuid4().hex[:6] + ":",
            ttl_seconds=30,
            breaker=breaker or CircuitBreaker("redis-test"),
        )

    return make


async def test_reads_see_every_commit_and_hit_the_cache(
    ledger_factory: Callable[..., Any], redis_url: str, redis_prefix: str
) -> None:
    """With Redis, a read after a write shows the write; repeated reads are hits."""
    settings = CreditsSettings(sweeper_interval_seconds=0, cache="auto")
    async with ledger_factory(settings, redis_url=redis_url, redis_key_prefix=redis_prefix + "http:") as ledger:
        assert isinstance(service_of(ledger.platform).cache, RedisBalanceCache)
        a, b = await ledger.account(), await ledger.account()
        await ledger.grant(a["id"], 50)
        hits = metric("feint_credits_cache_lookups_total", result="hit")
        for amount in range(1, 6):
            assert (await ledger.transfer(a["id"], b["id"], amount)).status_code == 201
            mine, theirs = await ledger.balance(a["id"]), await ledger.balance(b["id"])
            assert (mine["posted"], theirs["posted"]) == (50 - sum(range(1, amount + 1)), sum(range(1, amount + 1)))
        assert metric("feint_credits_cache_lookups_total", result="hit") - hits >= 10
        assert 0 < metric("feint_credits_cache_hit_ratio") <= 1
        metrics = (await ledger.client.get("/metrics")).text
        assert "feint_credits_cache_hit_ratio" in metrics and "feint_circuit_breaker_open" in metrics
        foreign = await ledger.client.get(f"/v1/accounts/{a['id']}", headers=ledger.other)
        assert foreign.status_code == 404  # the cache is keyed by tenant too


async def test_cached_balance_is_not_served_past_a_grant_expiry(
    ledger_factory: Callable[..., Any], redis_url: str, redis_prefix: str
) -> None:
    """An entry carries the next instant its balance changes by itself and is not used past it."""
    settings = CreditsSettings(sweeper_interval_seconds=0, cache="redis")
    async with ledger_factory(settings, redis_url=redis_url, redis_key_prefix=redis_prefix + "exp:") as ledger:
        a = await ledger.account()
        expires = datetime.now(UTC) + timedelta(seconds=1.2)
        await ledger.grant(a["id"], 10, expires_at=expires.isoformat())
        assert (await ledger.balance(a["id"]))["available"] == 10
        await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.05)
        assert (await ledger.balance(a["id"]))["available"] == 0


async def test_compare_and_set_keeps_the_newest_version(redis_cache: Callable[..., RedisBalanceCache]) -> None:
    """A slow writer or a filling reader never replaces a newer entry with an older one."""
    cache = redis_cache()
    tenant, account = uuid.uuid4(), uuid.uuid4()
    await cache.put([CachedAccount(tenant, account, 5, None, b"five")])
    await cache.put([CachedAccount(tenant, account, 4, None, b"four")])
    assert (await cache.get(tenant, account)).body == b"five"  # type: ignore[union-attr]
    await cache.put([CachedAccount(tenant, account, 6, time.time() + 3600, b"six")])
    assert (await cache.get(tenant, account)).body == b"six"  # type: ignore[union-attr]
    await cache.put([CachedAccount(tenant, account, 7, time.time() - 1, b"past")])
    assert await cache.get(tenant, account) is None
    await cache.put([])
    await cache.close()


async def test_breaker_opens_then_probes_and_closes(redis_cache: Callable[..., RedisBalanceCache]) -> None:
    """Repeated failures open the breaker (reads go to the database), a later probe closes it."""
    breaker = CircuitBreaker("redis-credits-test", failures_max=3, open_seconds=0.2)
    dead = redis_cache(url=f"redis://127.0.0.1:{free_port()}/0", breaker=breaker)
    tenant, account = uuid.uuid4(), uuid.uuid4()
    errors = metric("feint_credits_cache_lookups_total", result="error")
    for _ in range(3):
        assert await dead.get(tenant, account) is None
    assert breaker.state == "open"
    assert metric("feint_circuit_breaker_open", dependency="redis-credits-test") == 1
    assert metric("feint_credits_cache_lookups_total", result="error") - errors == 3
    bypass = metric("feint_credits_cache_lookups_total", result="bypass")
    assert await dead.get(tenant, account) is None
    assert metric("feint_credits_cache_lookups_total", result="bypass") - bypass == 1
    await dead.close()
    live = redis_cache(breaker=breaker)
    await asyncio.sleep(0.25)
    assert breaker.state == "half-open"
    assert await live.get(tenant, account) is None  # the probe: a miss, and Redis answered
    assert breaker.state == "closed"
    assert metric("feint_circuit_breaker_open", dependency="redis-credits-test") == 0
    await live.close()


async def test_failed_write_through_invalidates_everything(redis_cache: Callable[..., RedisBalanceCache]) -> None:
    """When a write-through cannot reach Redis, the cache generation moves on once it can."""
    breaker = CircuitBreaker("redis-credits-gen", failures_max=1, open_seconds=0.1)
    cache = redis_cache(breaker=breaker)
    tenant, account = uuid.uuid4(), uuid.uuid4()
    await cache.put([CachedAccount(tenant, account, 1, None, b"old")])
    breaker.failure()  # Redis "fails": the next write-through is skipped
    await cache.put([CachedAccount(tenant, account, 2, None, b"new")])
    await asyncio.sleep(0.15)
    misses = metric("feint_credits_cache_lookups_total", result="miss")
    assert await cache.get(tenant, account) is None  # generation bumped: the old entry is gone
    assert metric("feint_credits_cache_lookups_total", result="miss") - misses == 1  # Redis answered
    await cache.put([CachedAccount(tenant, account, 3, None, b"fresh")])
    assert (await cache.get(tenant, account)).body == b"fresh"  # type: ignore[union-attr]
    await cache.close()


async def test_service_reads_from_the_database_while_redis_is_down(
    ledger_factory: Callable[..., Any], redis_prefix: str
) -> None:
    """With Redis unreachable, balances still answer (from the database)."""
    from feint.credits.cache import RedisBalanceCache as Cache

    dead = Cache(
        f"redis://127.0.0.1:{free_port()}/0",
        prefix=redis_prefix,
        ttl_seconds=30,
        breaker=CircuitBreaker("redis-down", failures_max=2, open_seconds=60),
    )
    async with ledger_factory() as ledger:
        service = service_of(ledger.platform)
        service.cache = dead
        a = await ledger.account()
        await ledger.grant(a["id"], 3)
        for _ in range(4):
            assert (await ledger.balance(a["id"]))["posted"] == 3
        assert dead.breaker.state == "open"


async def test_tombstones_invalidate_and_fills_replace_them(redis_cache: Callable[..., RedisBalanceCache]) -> None:
    """A large batch leaves tombstones: reads miss, a fill of that version replaces it, an older one does not."""
    cache = redis_cache()
    tenant, account = uuid.uuid4(), uuid.uuid4()
    await cache.put([CachedAccount(tenant, account, 3, None, b"three")])
    await cache.put([CachedAccount(tenant, account, 4, None, b"")])
    assert await cache.get(tenant, account) is None
    await cache.put([CachedAccount(tenant, account, 3, None, b"stale")])
    assert await cache.get(tenant, account) is None
    await cache.put([CachedAccount(tenant, account, 4, None, b"four")])
    assert (await cache.get(tenant, account)).body == b"four"  # type: ignore[union-attr]
    await cache.put([CachedAccount(tenant, account, 4, None, b"")])
    assert (await cache.get(tenant, account)).body == b"four"  # type: ignore[union-attr]
    await cache.close()


async def test_large_batches_invalidate_every_account(
    ledger_factory: Callable[..., Any], redis_url: str, redis_prefix: str
) -> None:
    """After a batch touching more accounts than are written through, every read is still fresh."""
    settings = CreditsSettings(sweeper_interval_seconds=0, cache="redis")
    async with ledger_factory(settings, redis_url=redis_url, redis_key_prefix=redis_prefix + "big:") as ledger:
        ids = [(await ledger.account())["id"] for _ in range(70)]
        for account in ids:
            assert (await ledger.balance(account))["posted"] == 0  # cached
        ops = [{"op": "grant", "account_id": account, "amount": 5} for account in ids]
        r = await ledger.client.post("/v1/batches", json={"operations": ops}, headers=ledger.operator)
        assert r.status_code == 200
        for account in ids:
            assert (await ledger.balance(account))["posted"] == 5
