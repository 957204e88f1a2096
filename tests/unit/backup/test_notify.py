"""The alert webhook retries a bounded number of times and reports, never raises."""

from __future__ import annotations

import httpx
import pytest

from feint.backup.notify import WEBHOOK_ATTEMPTS_MAX, post_event

pytestmark = pytest.mark.unit


def test_retries_then_reports() -> None:
    """A receiver answering 503 gets WEBHOOK_ATTEMPTS_MAX attempts, then the problem is returned."""
    calls: list[httpx.Request] = []
    pauses: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    problem = post_event(
        "http://hook.test/x", event="backup.failed", data={"error": "boom"},
        sleep=pauses.append, transport=httpx.MockTransport(handler),
    )  # fmt: skip
    assert problem == "HTTP 503"
    assert len(calls) == WEBHOOK_ATTEMPTS_MAX
    assert len(pauses) == WEBHOOK_ATTEMPTS_MAX - 1


def test_delivered_once_and_client_errors_not_retried() -> None:
    """A 204 is one attempt; a 400 is not retried."""
    seen: list[bytes] = []

    def ok(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(204)

    assert post_event("http://hook.test", event="backup.succeeded", data={}, transport=httpx.MockTransport(ok)) is None
    assert b'"event":"backup.succeeded"' in seen[0]
    count = []
    transport = httpx.MockTransport(lambda r: count.append(r) or httpx.Response(400))
    assert post_event("http://hook.test", event="e", data={}, sleep=lambda _: None, transport=transport) == "HTTP 400"
    assert len(count) == 1
    assert post_event(None, event="e", data={}) is None
