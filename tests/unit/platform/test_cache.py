"""The token-bucket rule, the circuit breaker and the in-process cache."""

from __future__ import annotations

import time

import pytest

from feint.platform.cache import CircuitBreaker, MemoryCache, MemoryRateLimiter, decision, take_token

pytestmark = pytest.mark.unit


def test_token_bucket_refills_and_caps() -> None:
    """Tokens refill with time up to the burst and a request takes exactly one."""
    allowed, tokens = take_token(0.0, 0.0, 2.0, rate=1.0, burst=5)
    assert allowed and tokens == pytest.approx(1.0)
    allowed, tokens = take_token(5.0, 0.0, 100.0, rate=1.0, burst=5)
    assert allowed and tokens == pytest.approx(4.0)
    allowed, tokens = take_token(0.2, 0.0, 0.1, rate=1.0, burst=5)
    assert not allowed and tokens == pytest.approx(0.3)


def test_decision_headers_math() -> None:
    """Retry-After is the whole seconds until a token; reset until the bucket is full."""
    d = decision(False, 0.5, rate=0.25, burst=4)
    assert (d.allowed, d.retry_after_seconds, d.remaining, d.reset_seconds, d.limit) == (False, 2, 0, 14, 4)
    assert decision(True, 3.2, rate=1.0, burst=4).retry_after_seconds == 0


async def test_memory_limiter_per_key() -> None:
    """Buckets are per key: one key's exhaustion does not limit another."""
    limiter = MemoryRateLimiter()
    results = [(await limiter.acquire("a", rate=0.001, burst=2)).allowed for _ in range(3)]
    assert results == [True, True, False]
    assert (await limiter.acquire("b", rate=0.001, burst=2)).allowed


async def test_memory_cache_ttl_and_bound() -> None:
    """Entries expire after their TTL and the cache never holds more than its bound."""
    cache = MemoryCache(entries_max=2)
    await cache.set("a", b"1", ttl_seconds=60)
    await cache.set("b", b"2", ttl_seconds=0.01)
    assert await cache.get("a") == b"1"
    time.sleep(0.02)
    assert await cache.get("b") is None
    await cache.set("c", b"3", ttl_seconds=60)
    await cache.set("d", b"4", ttl_seconds=60)
    assert await cache.get("a") is None  # evicted, least recently used
    await cache.delete("c", "missing")
    assert await cache.get("c") is None
    await cache.ping()
    await cache.close()
    assert await cache.get("d") is None


def test_breaker_opens_probes_and_closes() -> None:
    """After N failures the breaker opens, lets one probe through after the pause, and closes on success."""
    breaker = CircuitBreaker("test", failures_max=2, open_seconds=0.05)
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.state == "half-open" and breaker.allow()
    breaker.failure()  # the probe failed: open again at once
    assert breaker.state == "open"
    time.sleep(0.06)
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_cli_logs_follow_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI logs go to whatever stderr is when a line is written, never to a stream closed since."""
    import io

    import structlog

    from feint.platform.telemetry import configure_logging

    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging(level="info", fmt="json", stderr=True)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    structlog.get_logger(component="test").info("hello", card_number="4111111111111111")
    assert '"event": "hello"' in second.getvalue()
    assert "4111111111111111" not in second.getvalue()
    configure_logging(level="info", fmt="json")
