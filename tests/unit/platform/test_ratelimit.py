"""The leased rate limiter's bookkeeping, against an in-memory shared bucket (pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from feint.errors import DependencyUnavailable
from feint.platform.ratelimit import LEASE_SECONDS, LEASE_TOKENS_MAX, LeasedRateLimiter, lease_size

pytestmark = pytest.mark.unit


class Bucket:
    """The shared bucket's rule (as the Redis script has it) on a settable clock; counts calls."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.state: dict[str, tuple[float, float]] = {}
        self.calls = 0

    async def lease(self, key: str, *, rate: float, burst: int, tokens: int) -> tuple[int, float]:
        self.calls += 1
        await asyncio.sleep(0)
        now = self.clock[0]
        have, stamp = self.state.get(key, (float(burst), now))
        have = min(float(burst), have + max(0.0, now - stamp) * rate)
        granted = max(0, min(tokens, int(have)))
        self.state[key] = (have - granted, now)
        return granted, have - granted


def test_lease_size_bounds() -> None:
    """A lease is a sixteenth of the burst, at least one token and at most the cap."""
    assert lease_size(1) == 1
    assert lease_size(400) == 25
    assert lease_size(10**9) == LEASE_TOKENS_MAX


async def test_steady_load_costs_one_call_per_block() -> None:
    """Under steady load the process asks the shared bucket about twice per lease size, not per request."""
    clock = [0.0]
    bucket = Bucket(clock)
    limiter = LeasedRateLimiter(bucket, clock=lambda: clock[0])
    for _ in range(1_000):
        assert (await limiter.acquire("k", rate=1e6, burst=1_600)).allowed
        await asyncio.sleep(0)
    assert bucket.calls <= 2 * 1_000 // lease_size(1_600) + 2  # top-ups of half a lease each
    await limiter.close()


async def test_never_admits_more_than_the_bucket_gives() -> None:
    """With no refill, exactly the burst is admitted, and refusals stop asking the bucket."""
    clock = [0.0]
    bucket = Bucket(clock)
    limiter = LeasedRateLimiter(bucket, clock=lambda: clock[0])
    decisions = [await limiter.acquire("k", rate=0.001, burst=100) for _ in range(300)]
    assert sum(d.allowed for d in decisions) == 100
    refused = [d for d in decisions if not d.allowed]
    assert refused[0].retry_after_seconds >= 1 and refused[0].remaining == 0
    calls = bucket.calls
    for _ in range(50):
        assert not (await limiter.acquire("k", rate=0.001, burst=100)).allowed
    assert bucket.calls == calls
    await limiter.close()


async def test_refusal_ends_when_the_bucket_can_refill() -> None:
    """After Retry-After has passed, the process asks again and is admitted."""
    clock = [0.0]
    bucket = Bucket(clock)
    limiter = LeasedRateLimiter(bucket, clock=lambda: clock[0])
    assert [(await limiter.acquire("k", rate=1.0, burst=1)).allowed for _ in range(2)] == [True, False]
    clock[0] += 1.01
    assert (await limiter.acquire("k", rate=1.0, burst=1)).allowed
    await limiter.close()


async def test_unspent_lease_expires() -> None:
    """Tokens held longer than LEASE_SECONDS are dropped, not spent later."""
    clock = [0.0]
    bucket = Bucket(clock)
    limiter = LeasedRateLimiter(bucket, clock=lambda: clock[0])
    assert (await limiter.acquire("k", rate=0.001, burst=160)).allowed
    await asyncio.sleep(0)
    clock[0] += LEASE_SECONDS + 0.01
    spent_before = 160 - bucket.state["k"][0]
    assert (await limiter.acquire("k", rate=0.001, burst=160)).allowed
    assert 160 - bucket.state["k"][0] > spent_before  # a fresh lease was taken
    await limiter.close()


async def test_concurrent_waiters_share_top_ups() -> None:
    """Many requests on an empty lease are all admitted from a few shared top-ups."""
    clock = [0.0]
    bucket = Bucket(clock)
    limiter = LeasedRateLimiter(bucket, clock=lambda: clock[0])
    decisions = await asyncio.gather(*(limiter.acquire("k", rate=1e6, burst=160) for _ in range(40)))
    assert all(d.allowed for d in decisions)
    assert bucket.calls <= 40 // lease_size(160) + 2
    await limiter.close()


class Down:
    """A shared bucket that is unreachable."""

    async def lease(self, key: str, *, rate: float, burst: int, tokens: int) -> tuple[int, float]:
        raise DependencyUnavailable("redis down", dependency="redis")


async def test_unreachable_bucket_fails_the_request() -> None:
    """A request that needs a lease while the bucket is unreachable fails as DependencyUnavailable."""
    limiter = LeasedRateLimiter(Down())
    with pytest.raises(DependencyUnavailable):
        await limiter.acquire("k", rate=1.0, burst=10)
    await limiter.close()


async def test_one_token_leases_are_not_topped_up_ahead() -> None:
    """With a lease of one token a process takes a token only for a request it is answering."""
    clock = [0.0]
    bucket = Bucket(clock)
    limiter = LeasedRateLimiter(bucket, clock=lambda: clock[0])
    assert (await limiter.acquire("k", rate=0.001, burst=4)).allowed
    for _ in range(3):
        await asyncio.sleep(0)
    assert bucket.state["k"][0] == 3.0  # one taken, none held in reserve
    await limiter.close()
