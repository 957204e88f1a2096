"""The client-window store's cost per request with Redis: a busy client's (or address's) full window.

    FEINT_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/camouflage/windows.py

Every gateway request reads the window of its client and of its address (one script call) and
writes both back (gathered: every `WRITE_DELAY_SECONDS`, one pipeline).
A client behind one address with many requests (a crawler, a NAT, the load test's loopback) has
a full window (512 events, ~28 kB). Prints, in one process, the CPU per read+write of such a
window in three cases:

1. decoded on every read: another replica wrote it in between (what every read cost before the
   replica kept its own window), written after each request;
2. the replica's own window, still what Redis holds: the read compares a digest inside Redis and
   answers one integer; written after each request (cases 1 and 2 with no share delay: every
   read asks Redis, every write goes at once);
3. the gateway's way at 1,000 requests/s: the window read from Redis and written at most once per
   share delay (`SHARE_SECONDS`); printed with the CPU of the pacing alone (a timer per request),
   which is not the store's;
4. the window codec alone (encode, decode), without Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from feint.camouflage.engine.clients import KEY_PREFIX, RedisClients
from feint.camouflage.engine.threat import ClientWindow
from feint.platform.cache import RedisBackend


def full_window() -> ClientWindow:
    window = ClientWindow()
    for n in range(600):
        window.mark(1_000.0 + n / 100, f"{n % 37:032x}", diverted=n % 5 == 0)
    return window


async def per_request(store: RedisClients, key: str, rounds: int, *, foreign: bool) -> float:
    cpu = time.process_time()
    for n in range(rounds):
        if foreign:
            store._digests.clear()  # as if another replica had written: the read decodes
        window = await store.get(key)
        window.mark(2_000.0 + n / 100, "client", diverted=False)
        store.put(key, window)
        await store.drain()
    return (time.process_time() - cpu) / rounds


async def paced(store: RedisClients, key: str, rounds: int, *, rate: float = 1_000.0) -> tuple[float, int]:
    """CPU per request at ``rate`` requests/s, and the writes it took; a negative ``rate`` paces alone."""
    written = store.written
    loop = asyncio.get_running_loop()
    start = loop.time()
    cpu = time.process_time()
    for n in range(rounds):
        if rate:
            window = await store.get(key)
            window.mark(3_000.0 + n / 100, "client", diverted=False)
            store.put(key, window)
        await asyncio.sleep(max(0.0, start + (n + 1) / abs(rate) - loop.time()))
    await store.drain()
    return (time.process_time() - cpu) / rounds, store.written - written


async def main(rounds: int) -> None:
    url = os.environ.get("FEINT_REDIS_URL", "redis://127.0.0.1:6379/0")
    backend = RedisBackend(url, prefix=f"bench-windows-{uuid.uuid4().hex[:8]}:")
    store = RedisClients(backend, share_seconds=0.0)
    key = "address:127.0.0.1"
    store.put(key, full_window())
    await store.drain()
    print(f"a full window: {len(full_window().to_json()):,} bytes, {rounds:,} requests per case")
    for _ in range(2):  # alternate, so that a busy spell of the machine touches both
        decoded = await per_request(store, key, rounds, foreign=True)
        kept = await per_request(store, key, rounds, foreign=False)
        print(
            f"  read+write, decoded every time: {decoded * 1e6:6.0f} us CPU   "
            f"own window kept: {kept * 1e6:6.0f} us CPU   ratio {decoded / kept:4.1f}x"
        )
    shared = RedisClients(backend)
    gathered, writes = await paced(shared, key, rounds)
    pacing, _ = await paced(shared, key, rounds, rate=-1_000.0)
    print(
        f"  the gateway's way, 1,000 requests/s: {gathered * 1e6:6.0f} us CPU per request, of which the pacing "
        f"{pacing * 1e6:.0f} us ({shared.asked} reads, {writes} writes for {rounds:,} requests)"
    )
    window = full_window()
    raw = window.to_json()
    cpu = time.process_time()
    for _ in range(rounds):
        window.to_json()
    encode = (time.process_time() - cpu) / rounds
    cpu = time.process_time()
    for _ in range(rounds):
        ClientWindow.from_json(raw)
    decode = (time.process_time() - cpu) / rounds
    print(f"  codec alone: encode {encode * 1e6:.0f} us, decode {decode * 1e6:.0f} us")
    await backend.delete(KEY_PREFIX + key)
    await backend.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2_000)
    asyncio.run(main(parser.parse_args().rounds))
