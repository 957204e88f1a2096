"""A rate limiter shared by replicas without a Redis round trip per request: token leases.

Every replica draws from one token bucket per key kept in Redis (the same rule and key as
`RedisBackend.acquire`), but not one token at a time: a process *leases* a block of up to
``L = lease_size(burst)`` tokens in one call and spends them locally, in memory. When its lease
falls under half a block, a background task tops it up to ``L`` while requests go on being
answered from what is left, so under steady load no request waits for Redis; a request waits
only when its process holds no token at all (at start, after a burst, or when the shared bucket
is empty, which is then a refusal). Leases of one token (bursts under 32) are not topped up
ahead: each worker of each replica would otherwise sit on a token another one needs.

**Bound.** Redis never grants more tokens than its bucket holds, so in any interval of ``T``
seconds the replicas together admit at most what the bucket gives out in it
(``burst + rate·T``) plus what they already held when it began. A process holds at most ``L``
tokens, for at most ``LEASE_SECONDS``, so with ``N`` processes::

    admitted(T) <= burst + rate·T + N·L,   L = clamp(burst // LEASE_BURST_DIVISOR, 1, LEASE_TOKENS_MAX)

i.e. a burst across replicas goes over the limit by at most ``N·L`` requests (with the defaults,
burst 400: L = 25; 8 processes: 200). The error is also the other way: tokens a process leased
and did not spend within ``LEASE_SECONDS`` are dropped, so an idle replica may keep up to ``L``
tokens from a busy one for up to a second. After a refusal a process does not ask Redis again
before the shared bucket can have refilled one token (the refusal's own ``Retry-After``), so a
client hammering a limited key costs no Redis calls either.

Redis failures behave as before: a request that needs a lease while Redis is down (circuit
open) fails as `DependencyUnavailable` (503); a failed background top-up is logged and retried
by the next request that needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from feint.platform.cache import RATE_BUCKETS_MAX, RateDecision, decision

LEASE_TOKENS_MAX = 64
LEASE_BURST_DIVISOR = 16
LEASE_SECONDS = 1.0
# A request that finds its lease empty waits for at most this many top-ups (others in the same
# process may take the tokens first) before it is refused; each top-up is one Redis call.
LEASE_ATTEMPTS_MAX = 16

log = structlog.get_logger(component="feint.ratelimit")


def lease_size(burst: int) -> int:
    """Tokens one process leases at a time: a sixteenth of the burst, 1 to ``LEASE_TOKENS_MAX``."""
    return max(1, min(LEASE_TOKENS_MAX, burst // LEASE_BURST_DIVISOR))


class TokenSource(Protocol):
    """The shared bucket: take up to ``tokens`` at once; answers (granted, tokens left)."""

    async def lease(self, key: str, *, rate: float, burst: int, tokens: int) -> tuple[int, float]: ...


@dataclass
class _Lease:
    held: int = 0
    expires: float = 0.0
    shared: float = 0.0  # tokens left in the shared bucket when we last asked
    denied_until: float = 0.0
    refill: asyncio.Task[None] | None = None


class LeasedRateLimiter:
    """`RateLimiter` over a shared `TokenSource`, spending leased blocks of tokens locally."""

    def __init__(self, source: TokenSource, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._clock = clock
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        self.lease_calls = 0  # Redis calls made (for tests and the benchmark)

    async def acquire(self, key: str, *, rate: float, burst: int) -> RateDecision:
        lease = self._lease(key)
        size = lease_size(burst)
        for _ in range(LEASE_ATTEMPTS_MAX):
            now = self._clock()
            if lease.expires <= now:
                lease.held = 0
            if lease.held > 0:
                lease.held -= 1
                if size > 1 and lease.held * 2 < size and lease.refill is None:
                    lease.refill = asyncio.create_task(self._background(key, lease, rate=rate, burst=burst))
                left = min(float(burst), lease.held + lease.shared)
                return decision(True, left, rate=rate, burst=burst)
            if now < lease.denied_until:
                break
            if lease.refill is None:
                lease.refill = asyncio.create_task(self._top_up(key, lease, rate=rate, burst=burst))
            await asyncio.shield(lease.refill)
        return decision(False, lease.shared, rate=rate, burst=burst)

    async def close(self) -> None:
        tasks = [lease.refill for lease in self._leases.values() if lease.refill is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _lease(self, key: str) -> _Lease:
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
            while len(self._leases) > RATE_BUCKETS_MAX:
                _, dropped = self._leases.popitem(last=False)
                if dropped.refill is not None:
                    dropped.refill.cancel()
        else:
            self._leases.move_to_end(key)
        return lease

    async def _top_up(self, key: str, lease: _Lease, *, rate: float, burst: int) -> None:
        try:
            want = lease_size(burst) - lease.held
            self.lease_calls += 1
            granted, shared = await self._source.lease(key, rate=rate, burst=burst, tokens=max(1, want))
            now = self._clock()
            if lease.expires <= now:
                lease.held = 0
            lease.held += granted
            lease.shared = shared
            if granted:
                lease.expires = now + LEASE_SECONDS
            elif lease.held == 0:
                # The shared bucket cannot hold a whole token before this (others only take).
                lease.denied_until = now + max(0.0, 1.0 - shared) / rate
        finally:
            lease.refill = None

    async def _background(self, key: str, lease: _Lease, *, rate: float, burst: int) -> None:
        try:
            await self._top_up(key, lease, rate=rate, burst=burst)
        except Exception as exc:  # noqa: BLE001 - a failed prefetch is logged; the next request retries in line
            log.warning("rate_lease_failed", key=key[:64], error=type(exc).__name__)
