"""Client windows shared through Redis; the decision queue drops (and counts) instead of blocking."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from feint.camouflage.engine import threat
from feint.camouflage.engine.clients import CLIENT_STATE_SKIPPED, MemoryClients, RedisClients
from feint.camouflage.engine.decisions import DECISIONS_DROPPED, Decision, DecisionLog
from feint.platform.cache import RedisBackend
from feint.shadow.record import RequestRecord

pytestmark = pytest.mark.integration


@pytest.fixture
async def replicas(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[RedisClients, RedisClients]]:
    """Two gateway replicas' window stores on one Redis, each with its own connection; they share
    at once (no delay before a write, every read asks Redis), so that the tests decide the order."""
    first = RedisBackend(redis_url, prefix=redis_prefix)
    second = RedisBackend(redis_url, prefix=redis_prefix)
    yield RedisClients(first, share_seconds=0.0), RedisClients(second, share_seconds=0.0)
    await first.close()
    await second.close()


async def test_redis_windows_shared_by_replicas(replicas: tuple[RedisClients, RedisClients]) -> None:
    """What one replica records about a client, another reads."""
    a, b = replicas
    key = uuid.uuid4().hex
    window = await a.get(key)
    for n in range(10):
        window.seen(100.0 + n, f"/missing-{n}")
        window.answered(f"/missing-{n}", 404)
    a.put(key, window)
    await a.drain()
    seen = await b.get(key)
    assert seen.answers == 10 and len(seen.missing) == 10
    assert {r.signal for r in threat.behaviour(seen, now=110.0)} == {"errors", "breadth"}


async def test_replica_keeps_its_own_window_until_another_writes(
    replicas: tuple[RedisClients, RedisClients],
) -> None:
    """A replica decodes a window only when Redis holds a value it did not write or read itself."""
    a, b = replicas
    key = uuid.uuid4().hex
    window = await a.get(key)
    for n in range(600):  # a full window: 512 events kept
        window.mark(100.0 + n / 100, f"client-{n % 7}", diverted=n % 5 == 0)
    a.put(key, window)
    await a.drain()
    assert await a.get(key) is window and a.decoded == 0
    # Another replica reads it (decodes), adds a request and writes: the first decodes that.
    theirs = await b.get(key)
    assert b.decoded == 1 and theirs.flagged == window.flagged
    theirs.mark(200.0, "client-x", diverted=True)
    b.put(key, theirs)
    await b.drain()
    seen = await a.get(key)
    assert a.decoded == 1 and seen is not window
    assert seen.flagged.get("client-x") == 1 and len(seen.events) == threat.WINDOW_EVENTS_MAX
    # ... and then keeps that one while nobody else writes.
    assert await a.get(key) is seen and a.decoded == 1


async def test_writes_gathered_and_reads_spared_within_the_share_delay(redis_url: str, redis_prefix: str) -> None:
    """Many requests of one client within the share delay: its windows are read from Redis once and
    written once, with all of the requests; until then the other replica sees none of them. After
    the delay, the replica asks Redis again and sees the other's write."""
    first, second = RedisBackend(redis_url, prefix=redis_prefix), RedisBackend(redis_url, prefix=redis_prefix)
    try:
        a, b = RedisClients(first, share_seconds=3_600.0), RedisClients(second, share_seconds=0.0)
        key, address = uuid.uuid4().hex, "address:" + uuid.uuid4().hex
        for n in range(50):
            window, by_address = await a.get_many(key, address)
            window.seen(100.0 + n, f"/p{n}")
            by_address.mark(100.0 + n, key, diverted=False)
            a.put(key, window)
            a.put(address, by_address)
        assert a.written == 0 and len(window.events) == 50  # nothing sent yet, nothing lost locally
        assert a.asked == 1  # the first request asked; the next 49 used the windows it had confirmed
        assert len((await b.get(key)).events) == 0
        await a.drain()
        assert a.written == 2  # one write per window, not 50
        seen, seen_address = await b.get_many(key, address)
        assert len(seen.events) == 50 and len(seen_address.events) == 50
        seen.seen(200.0, "/from-b")
        b.put(key, seen)
        await b.drain()
        assert await a.get(key) is window  # within the delay: a's own window, b's event not yet seen
        a.share_seconds = 0.0
        later = await a.get(key)
        assert later is not window and len(later.events) == 51 and a.decoded == 1
    finally:
        await first.close()
        await second.close()


async def test_write_after_the_delay_without_drain(redis_url: str, redis_prefix: str) -> None:
    """The gathered write goes out by itself after the delay (no drain), and another replica reads it."""
    first, second = RedisBackend(redis_url, prefix=redis_prefix), RedisBackend(redis_url, prefix=redis_prefix)
    try:
        a, b = RedisClients(first, share_seconds=0.01), RedisClients(second, share_seconds=0.0)
        key = uuid.uuid4().hex
        window = await a.get(key)
        window.seen(1.0, "/x")
        a.put(key, window)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if a.written:
                break
        assert a.written == 1 and len((await b.get(key)).events) == 1
    finally:
        await first.close()
        await second.close()


async def test_digest_that_outlived_its_window_reads_the_value(replicas: tuple[RedisClients, RedisClients]) -> None:
    """Redis says "unchanged" but this replica no longer holds the window (evicted apart from its
    digest): the value is read again, not replaced by an empty window."""
    a, _ = replicas
    key = uuid.uuid4().hex
    window = await a.get(key)
    for n in range(20):
        window.seen(100.0 + n, f"/p{n}")
    a.put(key, window)
    await a.drain()
    a.fallback._windows.clear()
    back = await a.get(key)
    assert len(back.events) == 20 and a.decoded == 1


async def test_redis_down_serves_the_local_windows(redis_url: str, redis_prefix: str) -> None:
    """Redis unreachable: reads fall back to this process's windows, failed writes are counted."""
    backend = RedisBackend("redis://127.0.0.1:1/0", prefix=redis_prefix)
    try:
        store = RedisClients(backend)
        key = uuid.uuid4().hex
        before_read = CLIENT_STATE_SKIPPED.labels("read")._value.get()
        before_write = CLIENT_STATE_SKIPPED.labels("write")._value.get()
        window = await store.get(key)
        window.seen(1.0, "/x")
        store.put(key, window)
        await store.drain()
        assert (await store.get(key)) is window
        assert CLIENT_STATE_SKIPPED.labels("read")._value.get() - before_read == 2
        assert CLIENT_STATE_SKIPPED.labels("write")._value.get() - before_write == 1
    finally:
        await backend.close()


def test_window_codec_reads_the_previous_format() -> None:
    """Windows written by the json module (before orjson) decode to the same counters."""
    import json

    window = threat.ClientWindow(decoy_paths=2, honeytokens=1)
    for n in range(40):
        window.seen(10.0 + n, f"/p{n % 9}")
        window.answered(f"/p{n % 9}", 404 if n % 3 else 200)
    window.carry(30.0, [("rule-a", 0.5)])
    old = json.dumps(
        {"e": list(window.events), "c": list(window.carried), "d": 2, "h": 1}, separators=(",", ":")
    ).encode()
    for raw in (old, window.to_json()):
        back = threat.ClientWindow.from_json(raw)
        assert list(back.events) == list(window.events) and list(back.carried) == list(window.carried)
        assert (back.answers, back.errors, back.missing) == (window.answers, window.errors, window.missing)
        assert (back.decoy_paths, back.honeytokens) == (2, 1)


def test_memory_clients_bounded() -> None:
    """The in-process store keeps at most its named number of clients (least recent out)."""
    store = MemoryClients(entries_max=3)
    for n in range(5):
        store.local(f"k{n}")
    assert len(store) == 3


def test_window_counters_match_a_recount() -> None:
    """After random requests, answers and expiry, the running counters equal a recount."""
    rng = random.Random(3)
    window = threat.ClientWindow()
    now = 0.0
    for _ in range(3_000):
        now += rng.random()
        path = f"/p{rng.randrange(40)}"
        if rng.random() < 0.6:
            window.seen(now, path)
        else:
            window.answered(path, rng.choice((200, 404, 403, 500)))
        window.expire(now)
    statuses = [s for _, _, s in window.events if s >= 100]
    assert window.answers == len(statuses)
    assert window.errors == sum(1 for s in statuses if 400 <= s < 500)
    assert set(window.missing) == {p for _, p, s in window.events if s == 404}
    assert len(window.events) <= threat.WINDOW_EVENTS_MAX


async def test_full_queue_drops_and_counts() -> None:
    """Submitting to a full queue returns at once and counts the drop."""
    log = DecisionLog(db=None, path=None, queue_max=1)
    before = DECISIONS_DROPPED.labels("queue-full")._value.get()
    for n in range(3):
        log.submit(
            Decision(
                record=RequestRecord(id=str(uuid.uuid4()), c_ip="192.0.2.1", cs_method="GET", cs_uri_stem=f"/{n}"),
                decided_at=datetime.now(UTC),
                tenant_id=uuid.uuid4(),
                client_key="0" * 32,
                fingerprint="fh1_11_t_000000000000",
                threat=0,
                action="allow",
                explanation=[],
                rules=(),
                rules_tag="t",
                eval_latency_us=1.0,
            )
        )
    assert DECISIONS_DROPPED.labels("queue-full")._value.get() - before == 2
    await log.flush()
    assert log.written == 1
