"""The balance cache: a rendered account answer, its version and how long it stays true.

An entry is written through after every commit that changes the account (the writer answers
its client only after the write), with compare-and-set on the account's version so that a slow
writer or a reader filling a miss can never replace a newer entry with an older one. An entry
also carries ``until``: the next instant its balances change by themselves (a grant or a hold
expiring); past it the entry is not used. So a read is never staler than the last commit the
reader saw, and never wrong about expiry.

Redis is behind the platform's circuit breaker: after repeated failures reads go to the
database until a probe succeeds. A write-through that fails leaves Redis possibly stale, so the
process bumps the cache *generation* (part of every key) as soon as Redis answers again; entries
also expire after ``cache_ttl_seconds``, which bounds staleness in a partial failure.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import Counter, Gauge

from feint.platform.cache import REDIS_TIMEOUT_SECONDS, CircuitBreaker

MEMORY_ENTRIES_MAX = 100_000
CLOCK_SKEW_SECONDS_MAX = 1.0  # application clocks may run this far behind the database's
WRITE_THROUGH_KEYS_MAX = 8_192
WRITE_THROUGH_ANSWERS_MAX = 64  # more changed accounts in a commit than this: tombstones, not rendered answers
_BYPASS = object()  # the breaker is open: Redis was not asked
_FAILED = object()  # Redis was asked and failed

LOOKUPS = Counter("feint_credits_cache_lookups_total", "Balance cache lookups by result.", ["result"])
HIT_RATIO = Gauge("feint_credits_cache_hit_ratio", "Share of balance lookups answered from the cache.")
WRITE_FAILURES = Counter("feint_credits_cache_write_failures_total", "Balance cache write-throughs that failed.")


@dataclass(frozen=True)
class CachedAccount:
    tenant_id: UUID
    account_id: UUID
    version: int
    until: float | None  # epoch seconds (database clock); None: no scheduled change
    body: bytes  # empty: a tombstone (the account changed to ``version``; read it from the database)

    @property
    def tombstone(self) -> bool:
        return not self.body

    def encode(self) -> bytes:
        if self.tombstone:
            return b"%d T\n" % self.version
        return b"%d %s\n" % (self.version, b"-" if self.until is None else repr(self.until).encode()) + self.body

    @classmethod
    def decode(cls, tenant_id: UUID, account_id: UUID, raw: bytes) -> CachedAccount:
        head, _, body = raw.partition(b"\n")
        version, until = head.split(b" ", 1)
        if until == b"T":
            return cls(tenant_id, account_id, int(version), None, b"")
        return cls(tenant_id, account_id, int(version), None if until == b"-" else float(until), body)

    def fresh(self, now: float) -> bool:
        return not self.tombstone and (self.until is None or now + CLOCK_SKEW_SECONDS_MAX < self.until)

    def replaces(self, current: CachedAccount | None) -> bool:
        """Compare-and-set: a newer version wins; at the same version an answer replaces a tombstone."""
        if current is None or current.version < self.version:
            return True
        return current.version == self.version and current.tombstone and not self.tombstone


class BalanceCache(Protocol):
    async def get(self, tenant_id: UUID, account_id: UUID) -> CachedAccount | None: ...
    async def put(self, entries: Sequence[CachedAccount]) -> None: ...
    def forget(self) -> None: ...  # stop trusting every entry (a write-through could not be made)
    async def close(self) -> None: ...


class _Stats:
    def __init__(self) -> None:
        self.hits = 0
        self.lookups = 0

    def record(self, result: str) -> None:
        LOOKUPS.labels(result).inc()
        self.lookups += 1
        self.hits += result == "hit"
        HIT_RATIO.set(self.hits / self.lookups)


class NoCache:
    """Every read from the database (several processes and no Redis)."""

    async def get(self, tenant_id: UUID, account_id: UUID) -> CachedAccount | None:
        return None

    async def put(self, entries: Sequence[CachedAccount]) -> None:
        return None

    def forget(self) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryBalanceCache:
    """In-process entries: correct only while this process is the only one serving credits."""

    def __init__(self, *, ttl_seconds: float, entries_max: int = MEMORY_ENTRIES_MAX) -> None:
        self._ttl = ttl_seconds
        self._max = entries_max
        self._data: OrderedDict[tuple[UUID, UUID], tuple[float, CachedAccount]] = OrderedDict()
        self._stats = _Stats()

    async def get(self, tenant_id: UUID, account_id: UUID) -> CachedAccount | None:
        item = self._data.get((tenant_id, account_id))
        now = time.time()
        if item is None or item[0] < time.monotonic() or not item[1].fresh(now):
            self._stats.record("miss")
            return None
        self._stats.record("hit")
        return item[1]

    async def put(self, entries: Sequence[CachedAccount]) -> None:
        deadline = time.monotonic() + self._ttl
        for entry in entries:
            key = (entry.tenant_id, entry.account_id)
            current = self._data.get(key)
            if not entry.replaces(current[1] if current else None):
                continue
            self._data[key] = (deadline, entry)
            self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def forget(self) -> None:
        self._data.clear()

    async def close(self) -> None:
        self._data.clear()


_GET_LUA = """
local g = redis.call('GET', KEYS[1]) or '0'
return redis.call('GET', ARGV[1] .. g .. ':' .. ARGV[2])
"""

# Compare-and-set per entry, the rule of `CachedAccount.replaces`: write when the stored version
# is older (or absent), or equal and a tombstone ("<version> T") that a full entry replaces.
_PUT_LUA = """
local g = redis.call('GET', KEYS[1]) or '0'
for i = 3, #ARGV, 4 do
  local key = ARGV[1] .. g .. ':' .. ARGV[i]
  local version = tonumber(ARGV[i + 1])
  local current = redis.call('GET', key)
  local write = true
  if current then
    local stored, mark = string.match(current, '^(%d+) (%S+)')
    stored = tonumber(stored)
    write = stored < version or (stored == version and mark == 'T' and ARGV[i + 2] == 'F')
  end
  if write then
    redis.call('SET', key, ARGV[i + 3], 'PX', ARGV[2])
  end
end
return 1
"""


# A new generation hides every entry. The counter may expire once every entry written before the
# bump has (their TTL is shorter): a reset to 0 then only hides newer entries, never revives old ones.
_BUMP_LUA = """
local generation = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return generation
"""


class RedisBalanceCache:
    """Entries shared by every process; calls go through ``breaker`` (the platform's)."""

    def __init__(self, url: str, *, prefix: str, ttl_seconds: float, breaker: CircuitBreaker) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
        )
        self._prefix = prefix + "credits:acct:"
        self._generation_key = prefix + "credits:generation"
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self.breaker = breaker
        self._get = self._client.register_script(_GET_LUA)
        self._put = self._client.register_script(_PUT_LUA)
        self._bump = self._client.register_script(_BUMP_LUA)
        self._stale = False  # a write-through failed: bump the generation before trusting Redis again
        self._stats = _Stats()

    async def _guarded(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if not self.breaker.allow():
            return _BYPASS
        try:
            if self._stale:
                await self._bump(keys=[self._generation_key], args=[self._ttl_ms * 2])
                self._stale = False
            result = await call()
        except (redis.exceptions.RedisError, OSError):
            self.breaker.failure()
            return _FAILED
        self.breaker.success()
        return result

    async def get(self, tenant_id: UUID, account_id: UUID) -> CachedAccount | None:
        raw = await self._guarded(
            lambda: self._get(keys=[self._generation_key], args=[self._prefix, f"{tenant_id}:{account_id}"])
        )
        if raw is _BYPASS or raw is _FAILED:
            self._stats.record("bypass" if raw is _BYPASS else "error")
            return None
        if raw is None:
            self._stats.record("miss")
            return None
        entry = CachedAccount.decode(tenant_id, account_id, raw)
        if not entry.fresh(time.time()):  # a tombstone or past its until
            self._stats.record("miss")
            return None
        self._stats.record("hit")
        return entry

    async def put(self, entries: Sequence[CachedAccount]) -> None:
        if not entries:
            return
        args: list[Any] = [self._prefix, self._ttl_ms]
        for entry in entries[:WRITE_THROUGH_KEYS_MAX]:
            kind = "T" if entry.tombstone else "F"
            args.extend((f"{entry.tenant_id}:{entry.account_id}", entry.version, kind, entry.encode()))
        result = await self._guarded(lambda: self._put(keys=[self._generation_key], args=args))
        if result is _BYPASS or result is _FAILED or len(entries) > WRITE_THROUGH_KEYS_MAX:
            # Redis may now hold an older entry than the database: invalidate everything once it answers.
            self.forget()

    def forget(self) -> None:
        self._stale = True
        WRITE_FAILURES.inc()

    async def close(self) -> None:
        await self._client.aclose()
