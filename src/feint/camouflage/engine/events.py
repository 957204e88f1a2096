"""Camouflage events, OpenCanary/Cowrie style: a numbered id and a dotted name per kind.

`EventSink.emit` never blocks and never raises on the request path: it writes a structured log
line, counts the event in Prometheus, and queues it (bounded) for the database and, for alert
events, for the webhook at ``FEINT_ALERT_WEBHOOK_URL``. A full queue drops the event and counts
the drop. The webhook sender retries with exponential backoff within a bounded time per event;
the table of ids is in docs/camouflage.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import httpx
import orjson
import structlog
from prometheus_client import Counter

EVENT_QUEUE_MAX: Final = 10_000
ALERT_QUEUE_MAX: Final = 1_000
EVENT_BATCH_MAX: Final = 500
EVENT_FLUSH_SECONDS: Final = 1.0
WEBHOOK_TIMEOUT_SECONDS: Final = 5.0
WEBHOOK_ATTEMPTS_MAX: Final = 5
WEBHOOK_BACKOFF_SECONDS: Final = 0.5  # doubled after each failed attempt
WEBHOOK_DEADLINE_SECONDS: Final = 30.0  # an alert is given up after this long
DETAILS_BYTES_MAX: Final = 4_096
ALERT_THREAT_MIN: Final = 9

log = structlog.get_logger(component="feint.camouflage.events")


class EventId(enum.IntEnum):
    """Event ids (stable: dashboards and alert rules key on them)."""

    SESSION_START = 8001
    SESSION_END = 8002
    DECOY_REQUEST = 8003
    HONEYTOKEN_TAKEN = 8004
    HONEYTOKEN_USED = 8005
    THREAT_HIGH = 8006
    ARM_RETIRED = 8007
    HOLD_REFUSED = 8008
    METERING_UNAVAILABLE = 8009
    METERING_EXHAUSTED = 8010
    HONEYTOKEN_UNKNOWN = 8011

    @property
    def dotted(self) -> str:
        return EVENT_NAMES[self]

    @property
    def alert(self) -> bool:
        return self in ALERT_EVENTS


EVENT_NAMES: Final[dict[EventId, str]] = {
    EventId.SESSION_START: "feint.session.start",
    EventId.SESSION_END: "feint.session.end",
    EventId.DECOY_REQUEST: "feint.decoy.request",
    EventId.HONEYTOKEN_TAKEN: "feint.honeytoken.taken",
    EventId.HONEYTOKEN_USED: "feint.honeytoken.used",
    EventId.THREAT_HIGH: "feint.threat.high",
    EventId.ARM_RETIRED: "feint.arm.retired",
    EventId.HOLD_REFUSED: "feint.hold.refused",
    EventId.METERING_UNAVAILABLE: "feint.metering.unavailable",
    EventId.METERING_EXHAUSTED: "feint.metering.exhausted",
    EventId.HONEYTOKEN_UNKNOWN: "feint.honeytoken.unknown",
}
ALERT_EVENTS: Final = frozenset(
    {EventId.HONEYTOKEN_USED, EventId.THREAT_HIGH, EventId.METERING_UNAVAILABLE, EventId.METERING_EXHAUSTED}
)

EVENTS = Counter("feint_camouflage_events_total", "Camouflage events emitted.", ["event"])
EVENTS_DROPPED = Counter(
    "feint_camouflage_events_dropped_total", "Camouflage events dropped (queue full or store failed).", ["sink"]
)
ALERTS_SENT = Counter("feint_camouflage_alerts_total", "Alert webhook deliveries.", ["outcome"])


@dataclass(frozen=True, slots=True)
class Event:
    """One event; ``details`` is small JSON (bounded by `DETAILS_BYTES_MAX` when stored)."""

    event_id: EventId
    tenant_id: uuid.UUID | None
    time: float
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    session_id: uuid.UUID | None = None
    src_host: str = ""
    client_key: str = ""
    threat: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "logtype": int(self.event_id),
            "eventid": self.event_id.dotted,
            "time": self.time,
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "session_id": str(self.session_id) if self.session_id else None,
            "src_host": self.src_host,
            "client_key": self.client_key,
            "threat": self.threat,
            "details": dict(self.details),
        }


def bounded_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` as stored: whole when its JSON fits `DETAILS_BYTES_MAX`, else marked truncated."""
    raw = orjson.dumps(details, default=str)
    if len(raw) <= DETAILS_BYTES_MAX:
        return dict(orjson.loads(raw))
    return {"truncated": True, "json_prefix": raw[: DETAILS_BYTES_MAX // 2].decode("utf-8", "replace")}


class EventStore(Protocol):
    async def insert_events(self, events: Sequence[Event]) -> None: ...


Post = Callable[[str, bytes], Awaitable[int]]


async def _httpx_post(client: httpx.AsyncClient, url: str, body: bytes) -> int:
    response = await client.post(url, content=body, headers={"content-type": "application/json"})
    return response.status_code


class EventSink:
    """Log, count, store and alert; `start` runs the two background senders, `stop` drains them."""

    def __init__(
        self,
        *,
        store: EventStore | None = None,
        webhook_url: str | None = None,
        clock: Callable[[], float] = time.time,
        post: Post | None = None,
        backoff_seconds: float = WEBHOOK_BACKOFF_SECONDS,
    ) -> None:
        self.store = store
        self.webhook_url = webhook_url
        self.clock = clock
        self.backoff_seconds = backoff_seconds
        self._events: asyncio.Queue[Event] = asyncio.Queue(maxsize=EVENT_QUEUE_MAX)
        self._alerts: asyncio.Queue[Event] = asyncio.Queue(maxsize=ALERT_QUEUE_MAX)
        self._client: httpx.AsyncClient | None = None
        self._post = post
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[Event], None]] = []

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event emitted (the gateway's threat state, tests)."""
        self._listeners.append(listener)

    def emit(
        self,
        event_id: EventId,
        *,
        tenant_id: uuid.UUID | None,
        session_id: uuid.UUID | None = None,
        src_host: str = "",
        client_key: str = "",
        threat: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        """Record an event; never blocks, never raises (a full queue drops and counts)."""
        event = Event(
            event_id=event_id,
            tenant_id=tenant_id,
            time=self.clock(),
            session_id=session_id,
            src_host=src_host,
            client_key=client_key,
            threat=threat,
            details=details or {},
        )
        EVENTS.labels(event.event_id.dotted).inc()
        (log.warning if event_id.alert else log.info)(event.event_id.dotted, **event.to_dict())
        for listener in self._listeners:
            listener(event)
        if self.store is not None:
            self._put(self._events, event, "store")
        if event_id.alert and self.webhook_url:
            self._put(self._alerts, event, "webhook")
        return event

    def emit_threat(
        self, *, tenant_id: uuid.UUID | None, threat: int, src_host: str, client_key: str, details: Mapping[str, Any]
    ) -> Event | None:
        """The alert for a request at threat `ALERT_THREAT_MIN` or more; None below it."""
        if threat < ALERT_THREAT_MIN:
            return None
        return self.emit(
            EventId.THREAT_HIGH,
            tenant_id=tenant_id,
            src_host=src_host,
            client_key=client_key,
            threat=threat,
            details=details,
        )

    @staticmethod
    def _put(queue: asyncio.Queue[Event], event: Event, sink: str) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            EVENTS_DROPPED.labels(sink).inc()

    def start(self) -> None:
        if self._tasks:
            return
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self._store_forever(), name="camouflage-events-store"))
        if self.webhook_url:
            if self._post is None:
                self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS)
                client = self._client
                self._post = lambda url, body: _httpx_post(client, url, body)
            self._tasks.append(asyncio.create_task(self._alert_forever(), name="camouflage-alerts"))

    async def stop(self) -> None:
        """Write what is queued for the store, then stop (queued alerts are dropped and counted)."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()
        EVENTS_DROPPED.labels("webhook").inc(self._alerts.qsize())
        while not self._alerts.empty():
            self._alerts.get_nowait()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def flush(self) -> int:
        """Write every queued event to the store now; how many were written."""
        written = 0
        while not self._events.empty():
            batch = [self._events.get_nowait() for _ in range(min(EVENT_BATCH_MAX, self._events.qsize()))]
            written += await self._write(batch)
        return written

    async def _write(self, batch: list[Event]) -> int:
        if self.store is None or not batch:
            return 0
        try:
            await self.store.insert_events(batch)
        except Exception:  # the store is down: count the loss, keep the gateway serving
            log.exception("event_store_failed", events=len(batch))
            EVENTS_DROPPED.labels("store").inc(len(batch))
            return 0
        return len(batch)

    async def _store_forever(self) -> None:
        while True:
            first = await self._events.get()
            batch = [first]
            deadline = time.monotonic() + EVENT_FLUSH_SECONDS
            while len(batch) < EVENT_BATCH_MAX:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        batch.append(await self._events.get())
                except TimeoutError:
                    break
            await self._write(batch)

    async def _alert_forever(self) -> None:
        while True:
            event = await self._alerts.get()
            await self.deliver(event)

    async def deliver(self, event: Event) -> bool:
        """POST one alert, retrying 5xx/429/network failures with backoff, within the deadline."""
        if self._post is None or not self.webhook_url:
            return False
        body = orjson.dumps({"alert": event.event_id.dotted, **event.to_dict()}, default=str)
        delay = self.backoff_seconds
        started = time.monotonic()
        for attempt in range(1, WEBHOOK_ATTEMPTS_MAX + 1):
            try:
                async with asyncio.timeout(WEBHOOK_TIMEOUT_SECONDS):
                    status = await self._post(self.webhook_url, body)
            except (httpx.HTTPError, OSError, TimeoutError) as exc:
                status, failure = 0, type(exc).__name__
            else:
                failure = f"status {status}"
                if 200 <= status < 300:
                    ALERTS_SENT.labels("sent").inc()
                    return True
                if 400 <= status < 500 and status != 429:
                    break  # the receiver refuses this alert; retrying will not change that
            log.warning("alert_webhook_failed", attempt=attempt, failure=failure, event=str(event.id))
            if attempt == WEBHOOK_ATTEMPTS_MAX or time.monotonic() - started + delay > WEBHOOK_DEADLINE_SECONDS:
                break
            await asyncio.sleep(delay)
            delay *= 2
        ALERTS_SENT.labels("failed").inc()
        return False
