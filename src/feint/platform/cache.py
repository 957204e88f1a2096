"""The cache and the rate limiter: Redis when ``FEINT_REDIS_URL`` is set, in-process otherwise.

Both sit behind small protocols (`Cache`, `RateLimiter`) with a Redis implementation shared by
every replica and an in-process one for a single process; tests run the same contract against
both. Redis calls go through a `CircuitBreaker`, so that a Redis outage turns into
`DependencyUnavailable` quickly instead of every request waiting on a dead socket.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions

from feint.errors import DependencyUnavailable
from feint.platform.telemetry import BREAKER_STATE

MEMORY_CACHE_ENTRIES_MAX = 100_000
RATE_BUCKETS_MAX = 100_000
REDIS_TIMEOUT_SECONDS = 0.5
BREAKER_FAILURES_MAX = 5
BREAKER_OPEN_SECONDS = 5.0


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, *, ttl_seconds: float) -> None: ...
    async def delete(self, *keys: str) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_seconds: int  # whole seconds until one token is available (0 when allowed)
    reset_seconds: int  # whole seconds until the bucket is full again


class RateLimiter(Protocol):
    async def acquire(self, key: str, *, rate: float, burst: int) -> RateDecision: ...
    async def close(self) -> None: ...


def take_token(tokens: float, stamp: float, now: float, *, rate: float, burst: int) -> tuple[bool, float]:
    """The token-bucket rule: refill by elapsed time, then take one if there is one."""
    tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return True, tokens - 1.0
    return False, tokens


def decision(allowed: bool, tokens: float, *, rate: float, burst: int) -> RateDecision:
    retry = 0 if allowed else max(1, math.ceil((1.0 - tokens) / rate))
    return RateDecision(
        allowed=allowed,
        limit=burst,
        remaining=max(0, int(tokens)),
        retry_after_seconds=retry,
        reset_seconds=max(0, math.ceil((burst - tokens) / rate)),
    )


class CircuitBreaker:
    """Closed → open after ``failures_max`` consecutive failures; after ``open_seconds`` one probe
    is let through (half-open): success closes it, failure opens it again."""

    def __init__(
        self, name: str, *, failures_max: int = BREAKER_FAILURES_MAX, open_seconds: float = BREAKER_OPEN_SECONDS
    ) -> None:
        self.name = name
        self.failures_max = failures_max
        self.open_seconds = open_seconds
        self.failures = 0
        self.opened_at: float | None = None
        BREAKER_STATE.labels(name).set(0)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.open_seconds else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        BREAKER_STATE.labels(self.name).set(0)

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.failures_max or self.opened_at is not None:
            self.opened_at = time.monotonic()
            BREAKER_STATE.labels(self.name).set(1)


class MemoryCache:
    """In-process LRU cache with TTLs; right only while one process serves the data."""

    def __init__(self, *, entries_max: int = MEMORY_CACHE_ENTRIES_MAX) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._entries_max = entries_max

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    async def set(self, key: str, value: bytes, *, ttl_seconds: float) -> None:
        self._data[key] = (time.monotonic() + ttl_seconds, value)
        self._data.move_to_end(key)
        while len(self._data) > self._entries_max:
            self._data.popitem(last=False)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._data.pop(key, None)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()


class MemoryRateLimiter:
    """Token buckets in this process only."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def acquire(self, key: str, *, rate: float, burst: int) -> RateDecision:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (float(burst), now))
        allowed, tokens = take_token(tokens, stamp, now, rate=rate, burst=burst)
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > RATE_BUCKETS_MAX:
            self._buckets.popitem(last=False)
        return decision(allowed, tokens, rate=rate, burst=burst)

    async def close(self) -> None:
        self._buckets.clear()


# The rule of `take_token`, run atomically inside Redis so replicas share one bucket, taking up to
# ARGV[3] whole tokens at once (1 per request for `acquire`; blocks for `feint.platform.ratelimit`).
# Time comes from the Redis server so that replicas with skewed clocks agree.
_BUCKET_SCRIPT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local granted = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {granted, tostring(tokens)}
"""


class RedisBackend:
    """Cache and rate limiter on one Redis client, guarded by a circuit breaker."""

    def __init__(self, url: str, *, prefix: str) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )
        self._prefix = prefix
        self.breaker = CircuitBreaker("redis")
        self._bucket = self._client.register_script(_BUCKET_SCRIPT_LUA)

    async def _call(self, what: str, coro: Any) -> Any:
        if not self.breaker.allow():
            coro.close()
            raise DependencyUnavailable(f"redis circuit open ({what})", dependency="redis")
        try:
            result = await coro
        except (redis.exceptions.RedisError, OSError) as exc:
            self.breaker.failure()
            raise DependencyUnavailable(f"redis {what} failed: {type(exc).__name__}", dependency="redis") from exc
        self.breaker.success()
        return result

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("get", self._client.get(self._prefix + key))
        return value

    async def set(self, key: str, value: bytes, *, ttl_seconds: float) -> None:
        await self._call("set", self._client.set(self._prefix + key, value, px=max(1, int(ttl_seconds * 1000))))

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._call("delete", self._client.delete(*(self._prefix + k for k in keys)))

    async def ping(self) -> None:
        await self._call("ping", self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()

    async def acquire(self, key: str, *, rate: float, burst: int) -> RateDecision:
        granted, tokens = await self.lease(key, rate=rate, burst=burst, tokens=1)
        return decision(granted == 1, tokens, rate=rate, burst=burst)

    async def lease(self, key: str, *, rate: float, burst: int, tokens: int) -> tuple[int, float]:
        """Take up to ``tokens`` whole tokens from the shared bucket at once: (granted, left)."""
        granted, left = await self._call(
            "rate-limit", self._bucket(keys=[self._prefix + "rl:" + key], args=[rate, burst, tokens])
        )
        return int(granted), float(left)
