"""Events: ids documented, stored in batches, alerts retried with backoff within bounds."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from feint.camouflage.engine.events import (
    ALERT_EVENTS,
    DETAILS_BYTES_MAX,
    EVENT_NAMES,
    WEBHOOK_ATTEMPTS_MAX,
    EventId,
    EventSink,
    bounded_details,
)
from tests.unit.camouflage.engine.fakes import EventStore

pytestmark = pytest.mark.unit
DOCS = Path(__file__).resolve().parents[4] / "docs" / "camouflage.md"


def test_every_event_id_is_named_and_documented() -> None:
    """Each id has a dotted name, and docs/camouflage.md lists both."""
    text = DOCS.read_text(encoding="utf-8")
    for event in EventId:
        assert event in EVENT_NAMES
        assert f"| {int(event)} | `{event.dotted}` |" in text


async def test_events_are_stored_in_batches() -> None:
    """Emitted events reach the store on flush, with their session and details."""
    store = EventStore()
    sink = EventSink(store=store)
    tenant, session = uuid.uuid4(), uuid.uuid4()
    for _ in range(3):
        sink.emit(EventId.DECOY_REQUEST, tenant_id=tenant, session_id=session, details={"path": "/"})
    assert await sink.flush() == 3
    assert [e.session_id for e in store.events] == [session] * 3
    assert sink.emit_threat(tenant_id=tenant, threat=8, src_host="", client_key="", details={}) is None
    high = sink.emit_threat(tenant_id=tenant, threat=9, src_host="1.2.3.4", client_key="k", details={"why": "x"})
    assert high is not None and high.event_id in ALERT_EVENTS


async def test_webhook_retries_then_succeeds() -> None:
    """5xx and network errors are retried with growing delays; a 2xx ends the retries."""
    answers = [503, OSError("down"), 200]
    calls: list[bytes] = []

    async def post(url: str, body: bytes) -> int:
        calls.append(body)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sink = EventSink(webhook_url="http://alerts.invalid/hook", post=post, backoff_seconds=0.001)
    event = sink.emit(EventId.HONEYTOKEN_USED, tenant_id=uuid.uuid4(), session_id=uuid.uuid4())
    assert await sink.deliver(event)
    assert len(calls) == 3 and b'"alert":"feint.honeytoken.used"' in calls[0]


async def test_webhook_gives_up_on_4xx_and_after_the_attempt_limit() -> None:
    """A 4xx is not retried; endless 500s stop after the attempt limit."""
    statuses: list[int] = []

    async def refuse(url: str, body: bytes) -> int:
        statuses.append(400)
        return 400

    async def broken(url: str, body: bytes) -> int:
        statuses.append(500)
        return 500

    event = EventSink().emit(EventId.THREAT_HIGH, tenant_id=None, threat=10)
    assert not await EventSink(webhook_url="http://x.invalid", post=refuse, backoff_seconds=0.001).deliver(event)
    assert statuses == [400]
    statuses.clear()
    assert not await EventSink(webhook_url="http://x.invalid", post=broken, backoff_seconds=0.001).deliver(event)
    assert statuses == [500] * WEBHOOK_ATTEMPTS_MAX


async def test_queues_are_bounded_and_background_senders_stop() -> None:
    """The sink's background tasks start and stop cleanly; huge details are truncated when stored."""
    store = EventStore()
    sink = EventSink(store=store, webhook_url="http://x.invalid", post=lambda url, body: _ok())
    sink.start()
    sink.emit(EventId.THREAT_HIGH, tenant_id=uuid.uuid4(), threat=10)
    await sink.stop()
    assert len(store.events) == 1
    big = bounded_details({"x": "y" * (DETAILS_BYTES_MAX * 2)})
    assert big["truncated"] is True


async def _ok() -> int:
    return 204
