"""The cache and rate-limiter contract, run against Redis and the in-process implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from feint.errors import DependencyUnavailable
from feint.platform.cache import MemoryCache, MemoryRateLimiter, RedisBackend
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    if request.param == "memory":
        cache, limiter = MemoryCache(), MemoryRateLimiter()

        class Both:
            get, set, delete, ping, close = cache.get, cache.set, cache.delete, cache.ping, cache.close
            acquire = limiter.acquire

        yield Both()
        return
    redis = RedisBackend(redis_url, prefix=f"{redis_prefix}{request.node.name}:")
    yield redis
    await redis.close()


async def test_get_set_delete(backend: Any) -> None:
    """What is set is read back until deleted or expired."""
    assert await backend.get("k") is None
    await backend.set("k", b"v", ttl_seconds=30)
    assert await backend.get("k") == b"v"
    await backend.delete("k")
    assert await backend.get("k") is None
    await backend.set("short", b"v", ttl_seconds=0.05)
    await asyncio.sleep(0.15)
    assert await backend.get("short") is None
    await backend.ping()


async def test_token_bucket(backend: Any) -> None:
    """The burst is allowed, the next request is refused with a retry time, other keys are unaffected."""
    decisions = [await backend.acquire("bucket", rate=0.01, burst=3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after_seconds >= 1
    assert decisions[0].remaining == 2
    assert (await backend.acquire("other", rate=0.01, burst=3)).allowed


async def test_redis_down_opens_breaker() -> None:
    """A Redis that does not answer fails fast as DependencyUnavailable and opens the breaker."""
    redis = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", prefix="x:")
    try:
        for _ in range(5):
            with pytest.raises(DependencyUnavailable):
                await redis.get("k")
        assert redis.breaker.state == "open"
        with pytest.raises(DependencyUnavailable, match="circuit open"):
            await redis.acquire("k", rate=1, burst=1)
    finally:
        await redis.close()
