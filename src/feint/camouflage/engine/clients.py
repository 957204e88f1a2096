"""Where each client's behaviour window lives: this process (an LRU), or Redis for every replica.

The window is small (at most ``threat.WINDOW_EVENTS_MAX`` events) and read and updated once per
request. With Redis, replicas share it, kept for twice the window:

- **Reads** ask Redis, in one script call for the client's and the address's windows, whether it
  still holds the value this replica last wrote or read (a 16-byte digest heads each stored
  value). If so the answer is one integer and the replica's own window object is used as it is;
  only a value another replica wrote travels and is decoded (a busy client's full window, 512
  events and ~24 kB, costs ~200 us to decode). A window Redis confirmed less than
  `SHARE_SECONDS` ago is used without asking.
- **Writes** are gathered: `put` marks the window dirty, and every `SHARE_SECONDS` the dirty
  windows go out in one pipeline, each encoded once however many requests changed it. A request
  never waits for Redis to store its window.

Measured at 1,000 requests/s of one busy client (`bench/camouflage/windows.py`): ~10 us of CPU
per request for both windows, against ~500 us when every request read and wrote them (a Redis
round trip costs ~250 us of CPU in a process that is not saturated: the wake-ups and syscalls).

What sharing gives up, bounded: a replica sees another's events up to twice `SHARE_SECONDS` plus
a round trip late, and when two replicas answer one client within that time, the events of the
one whose window is replaced by the other's decoded value are lost. The window is evidence, not
a ledger. When Redis fails (circuit open) the process falls back to its own LRU until Redis
answers again; a failed write forgets the digest, so the next read decodes whatever Redis holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from typing import Final, Protocol

import structlog
from prometheus_client import Counter

from feint.camouflage.engine.threat import WINDOW_SECONDS, ClientWindow
from feint.errors import DependencyUnavailable
from feint.platform.cache import RedisBackend

CLIENTS_MAX: Final = 100_000
# How long a changed window waits to be written with the others, and how long a replica serves a
# window it has just read or written without asking Redis again: the bound on how late replicas
# see each other's events.
SHARE_SECONDS: Final = 0.05
DIGEST_BYTES: Final = 16
KEY_PREFIX: Final = "camouflage:window:"  # value: 16-byte digest + JSON (was camouflage:client:, JSON)

CLIENT_STATE_SKIPPED = Counter(
    "feint_gateway_client_state_skipped_total",
    "Client window reads or writes to Redis skipped (busy or failed); the local window served.",
    ["operation"],
)
log = structlog.get_logger(component="feint.camouflage.clients")


class ClientStore(Protocol):
    async def get(self, key: str) -> ClientWindow: ...
    async def get_many(self, *keys: str) -> list[ClientWindow]: ...
    def put(self, key: str, window: ClientWindow) -> None: ...
    async def drain(self) -> None: ...


class MemoryClients:
    """Windows of the most recent ``entries_max`` clients of this process."""

    def __init__(self, *, entries_max: int = CLIENTS_MAX) -> None:
        self._windows: OrderedDict[str, ClientWindow] = OrderedDict()
        self.entries_max = entries_max

    def __len__(self) -> int:
        return len(self._windows)

    async def get(self, key: str) -> ClientWindow:
        return self.local(key)

    async def get_many(self, *keys: str) -> list[ClientWindow]:
        return [self.local(k) for k in keys]

    async def drain(self) -> None:
        """Nothing to write: the windows live here."""

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
    return hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest()


# For each key: 0 when Redis holds nothing, 1 when the stored value starts with one of the digests
# in ARGV[i] (the caller's own: the value it last wrote or read, and the one it is writing now),
# else the whole stored value.
_READ_LUA: Final = f"""
local out = {{}}
for i, key in ipairs(KEYS) do
  local head = redis.call('GETRANGE', key, 0, {DIGEST_BYTES - 1})
  if head == '' then
    out[i] = 0
  elseif head == string.sub(ARGV[i], 1, {DIGEST_BYTES}) or head == string.sub(ARGV[i], {DIGEST_BYTES + 1}) then
    out[i] = 1
  else
    out[i] = redis.call('GET', key)
  end
end
return out
"""


class RedisClients:
    """Windows shared by replicas through Redis (see the module's docstring)."""

    def __init__(
        self, redis: RedisBackend, *, entries_max: int = CLIENTS_MAX, share_seconds: float = SHARE_SECONDS
    ) -> None:
        self.redis = redis
        self.fallback = MemoryClients(entries_max=entries_max)
        self._read = redis.client.register_script(_READ_LUA)
        # key -> (digest of the value this replica last wrote or read, when Redis last confirmed it),
        # bounded like `fallback`
        self._digests: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._dirty: dict[str, ClientWindow] = {}
        self._sending: dict[str, bytes] = {}  # key -> digest of the value a write in flight stores
        self._flusher: asyncio.Task[None] | None = None
        self._now = asyncio.Event()  # set by `drain`: write without waiting for the delay
        self.entries_max = entries_max
        self.share_seconds = share_seconds
        self.decoded = 0  # windows decoded from Redis (another replica wrote them, or first sight)
        self.written = 0  # windows written to Redis
        self.asked = 0  # script calls (a read of one or more windows)

    def _remember(self, key: str, digest: bytes, now: float) -> None:
        self._digests[key] = (digest, now)
        self._digests.move_to_end(key)
        if len(self._digests) > self.entries_max:
            self._digests.popitem(last=False)

    async def get(self, key: str) -> ClientWindow:
        (window,) = await self.get_many(key)
        return window

    def _fresh(self, key: str, now: float) -> ClientWindow | None:
        """This replica's window of ``key`` if Redis confirmed it within `share_seconds`."""
        known = self._digests.get(key)
        if known is None or now - known[1] >= self.share_seconds:
            return None
        return self.fallback.peek(key)

    async def get_many(self, *keys: str) -> list[ClientWindow]:
        now = time.monotonic()
        windows = [self._fresh(k, now) for k in keys]
        stale = tuple(k for k, w in zip(keys, windows, strict=True) if w is None)
        if not stale:
            return windows  # type: ignore[return-value]  # every entry is a window here
        try:
            answers = await self._ask(stale)
            if any(a == 1 and self.fallback.peek(k) is None for k, a in zip(stale, answers, strict=True)):
                # A digest outlived its window in the LRU (both bounded, evicted apart): ask again for values.
                for key in stale:
                    self._digests.pop(key, None)
                answers = await self._ask(stale)
        except DependencyUnavailable:
            CLIENT_STATE_SKIPPED.labels("read").inc()
            return [self.fallback.local(k) for k in keys]
        read = {key: self._window(key, answer, now) for key, answer in zip(stale, answers, strict=True)}
        return [w if w is not None else read[k] for k, w in zip(keys, windows, strict=True)]

    async def _ask(self, keys: tuple[str, ...]) -> list[int | bytes]:
        self.asked += 1
        answers: list[int | bytes] = await self.redis.call(
            "client windows",
            self._read(
                keys=[self.redis.key(KEY_PREFIX + k) for k in keys],
                args=[self._digest_of(k) + self._sending.get(k, b"") for k in keys],
            ),
        )
        return answers

    def _digest_of(self, key: str) -> bytes:
        known = self._digests.get(key)
        return b"" if known is None else known[0]

    def _window(self, key: str, answer: int | bytes, now: float) -> ClientWindow:
        mine = self.fallback.peek(key)
        if answer == 1 and mine is not None:
            # Redis holds what this replica wrote or read last: its own object is current.
            self._remember(key, self._digest_of(key) or self._sending[key], now)
            return mine
        if not isinstance(answer, bytes):
            # Nothing stored: expired or never written, or this replica's write is still to go out.
            if mine is None or not (key in self._dirty or key in self._sending):
                mine = ClientWindow()
                self.fallback.put(key, mine)
            self._remember(key, b"", now)  # confirmed: Redis holds nothing of it yet
            return mine
        window = ClientWindow.from_json(answer[DIGEST_BYTES:])
        self.decoded += 1
        self.fallback.put(key, window)
        self._remember(key, answer[:DIGEST_BYTES], now)
        self._dirty.pop(key, None)  # another replica's value replaces this one's unsent events
        return window

    def put(self, key: str, window: ClientWindow) -> None:
        self.fallback.put(key, window)
        self._dirty[key] = window
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        try:
            while self._dirty:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._now.wait(), self.share_seconds)
                await self._flush()
        finally:
            self._flusher = None

    async def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        pipe = self.redis.client.pipeline(transaction=False)
        ttl = int(2 * WINDOW_SECONDS * 1000)
        for key, window in dirty.items():
            raw = window.to_json()
            # Until the write returns, a read may see the old value or this one: both are ours.
            self._sending[key] = digest = _digest(raw)
            pipe.set(self.redis.key(KEY_PREFIX + key), digest + raw, px=ttl)
        try:
            await self.redis.call("client windows write", pipe.execute())
        except DependencyUnavailable:
            for key in dirty:
                self._digests.pop(key, None)
            CLIENT_STATE_SKIPPED.labels("write").inc(len(dirty))
            return
        finally:
            sent = {key: self._sending.pop(key) for key in dirty}
        self.written += len(dirty)
        now = time.monotonic()
        for key, window in dirty.items():
            if self.fallback.peek(key) is window:
                self._remember(key, sent[key], now)
            else:  # replaced meanwhile by another replica's value: compare with what Redis holds next time
                self._digests.pop(key, None)

    async def drain(self) -> None:
        """Write the dirty windows now (shutdown, tests)."""
        if self._flusher is not None:
            self._now.set()
            try:
                await self._flusher
            finally:
                self._now.clear()
        while self._dirty:
            await self._flush()
