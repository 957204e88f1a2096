"""Where each client's behaviour window lives: this process (an LRU), or Redis for every replica.

The window is small (at most ``threat.WINDOW_EVENTS_MAX`` events) and read and written once per
request. With Redis, replicas share it: read on each request, written back without waiting (a
bounded number of writes in flight; beyond, the write is skipped and counted), kept for twice the
window. Two replicas answering one client at the same instant may each miss the other's last
event: the window is evidence, not a ledger. When Redis fails (circuit open) the process falls
back to its own LRU until Redis answers again.

Decoding a full window is most of the gateway's work for a busy client or address (512 events:
~150 us, against ~25 us for the rest of a judgement), so a replica remembers a digest of the last
value it wrote or read for each key: while Redis still holds that value (no other replica wrote
since), the replica's own window object is used as it is, the same object the in-process store
would give.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Final, Protocol

import structlog
from prometheus_client import Counter

from feint.camouflage.engine.threat import WINDOW_SECONDS, ClientWindow
from feint.errors import DependencyUnavailable
from feint.platform.cache import Cache

CLIENTS_MAX: Final = 100_000
REDIS_WRITES_IN_FLIGHT_MAX: Final = 256
KEY_PREFIX: Final = "camouflage:client:"

CLIENT_STATE_SKIPPED = Counter(
    "feint_gateway_client_state_skipped_total",
    "Client window reads or writes to Redis skipped (busy or failed); the local window served.",
    ["operation"],
)
log = structlog.get_logger(component="feint.camouflage.clients")


class ClientStore(Protocol):
    async def get(self, key: str) -> ClientWindow: ...
    def put(self, key: str, window: ClientWindow) -> None: ...


class MemoryClients:
    """Windows of the most recent ``entries_max`` clients of this process."""

    def __init__(self, *, entries_max: int = CLIENTS_MAX) -> None:
        self._windows: OrderedDict[str, ClientWindow] = OrderedDict()
        self.entries_max = entries_max

    def __len__(self) -> int:
        return len(self._windows)

    async def get(self, key: str) -> ClientWindow:
        return self.local(key)

    def local(self, key: str) -> ClientWindow:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = ClientWindow()
            if len(self._windows) > self.entries_max:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        return window

    def peek(self, key: str) -> ClientWindow | None:
        """The window of ``key`` if this process holds it (no new entry, no LRU change)."""
        return self._windows.get(key)

    def put(self, key: str, window: ClientWindow) -> None:
        self._windows[key] = window
        self._windows.move_to_end(key)
        if len(self._windows) > self.entries_max:
            self._windows.popitem(last=False)


def _digest(raw: bytes) -> bytes:
    """What a replica remembers of a window's value: enough to tell whether Redis still holds it."""
    return hashlib.blake2b(raw, digest_size=16).digest()


class RedisClients:
    """Windows shared by replicas through the platform's Redis cache."""

    def __init__(self, cache: Cache, *, entries_max: int = CLIENTS_MAX) -> None:
        self.cache = cache
        self.fallback = MemoryClients(entries_max=entries_max)
        self._writes: set[asyncio.Task[None]] = set()
        # key -> digest of the value this replica last wrote or read (bounded like `fallback`)
        self._digests: OrderedDict[str, bytes] = OrderedDict()
        self.entries_max = entries_max
        self.decoded = 0  # windows decoded from Redis (another replica wrote them, or first sight)

    def _remember(self, key: str, digest: bytes) -> None:
        self._digests[key] = digest
        self._digests.move_to_end(key)
        if len(self._digests) > self.entries_max:
            self._digests.popitem(last=False)

    async def get(self, key: str) -> ClientWindow:
        try:
            raw = await self.cache.get(KEY_PREFIX + key)
        except DependencyUnavailable:
            CLIENT_STATE_SKIPPED.labels("read").inc()
            return self.fallback.local(key)
        if raw is None:
            return ClientWindow()
        digest = _digest(raw)
        mine = self.fallback.peek(key)
        if mine is not None and self._digests.get(key) == digest:
            return mine
        window = ClientWindow.from_json(raw)
        self.decoded += 1
        self.fallback.put(key, window)
        self._remember(key, digest)
        return window

    def put(self, key: str, window: ClientWindow) -> None:
        self.fallback.put(key, window)
        if len(self._writes) >= REDIS_WRITES_IN_FLIGHT_MAX:
            # Redis keeps an older value: forget ours, so the next read decodes what Redis has.
            self._digests.pop(key, None)
            CLIENT_STATE_SKIPPED.labels("write").inc()
            return
        raw = window.to_json()
        self._remember(key, _digest(raw))
        task = asyncio.get_running_loop().create_task(self._write(key, raw))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, raw: bytes) -> None:
        try:
            await self.cache.set(KEY_PREFIX + key, raw, ttl_seconds=2 * WINDOW_SECONDS)
        except DependencyUnavailable:
            self._digests.pop(key, None)
            CLIENT_STATE_SKIPPED.labels("write").inc()

    async def drain(self) -> None:
        """Wait for the writes in flight (shutdown, tests)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
