"""Telling people and Prometheus how a backup went: an alert webhook and Pushgateway metrics.

The webhook gets one JSON POST per outcome (``backup.succeeded``, ``backup.failed``,
``verify.succeeded``, ``verify.failed``), retried with a short back-off, ``WEBHOOK_ATTEMPTS_MAX``
attempts and ``WEBHOOK_SECONDS_MAX`` in all, so a dead receiver can delay a backup job by
seconds, never hang it. A failed delivery is logged and printed, and does not change the
backup's own outcome. (A candidate to merge with the camouflage events poster once both live on
one branch.)

A CronJob is gone before Prometheus could scrape it, so its metrics are pushed to a Pushgateway
(job ``feint-backup``, grouped by database): see NOTES for the metric names and the alerts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

WEBHOOK_ATTEMPTS_MAX = 3
WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_SECONDS_MAX = 20.0
WEBHOOK_BACKOFF_SECONDS = (1.0, 2.0)
PUSH_TIMEOUT_SECONDS = 5.0
PUSH_JOB = "feint-backup"

log = structlog.get_logger(component="feint.backup")


def post_event(
    url: str | None,
    *,
    event: str,
    data: dict[str, Any],
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx.BaseTransport | None = None,
) -> str | None:
    """POST ``{event, at, data}`` to ``url``; returns None when delivered, else why it was not."""
    if not url:
        return None
    body = {"event": event, "at": datetime.now(UTC).isoformat(), "data": data}
    deadline = time.monotonic() + WEBHOOK_SECONDS_MAX
    problem = "not attempted"
    with httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS, transport=transport) as client:
        for attempt in range(WEBHOOK_ATTEMPTS_MAX):
            try:
                response = client.post(url, json=body)
                if response.status_code < 300:
                    return None
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    break  # the receiver refuses this request; retrying will not change that
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            pause = WEBHOOK_BACKOFF_SECONDS[min(attempt, len(WEBHOOK_BACKOFF_SECONDS) - 1)]
            if attempt + 1 == WEBHOOK_ATTEMPTS_MAX or time.monotonic() + pause > deadline:
                break
            sleep(pause)
    log.warning("backup_webhook_failed", url=url, event_name=event, problem=problem)
    return problem


def push_metrics(
    url: str | None,
    *,
    operation: str,
    database: str,
    succeeded: bool,
    duration_seconds: float,
    stored_bytes: int | None = None,
    database_bytes: int | None = None,
) -> str | None:
    """Push this run's gauges; returns None when pushed (or no gateway is set), else why not."""
    if not url:
        return None
    from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

    registry = CollectorRegistry()
    now = time.time()
    outcome = "success" if succeeded else "failure"
    Gauge(
        f"feint_backup_last_{outcome}_timestamp_seconds",
        f"When the last {outcome} of this operation ended (unix seconds).",
        ["operation"],
        registry=registry,
    ).labels(operation).set(now)
    Gauge("feint_backup_last_duration_seconds", "How long the last run took.", ["operation"], registry=registry).labels(
        operation
    ).set(duration_seconds)
    if stored_bytes is not None:
        Gauge("feint_backup_last_stored_bytes", "Bytes of the last backup object.", registry=registry).set(stored_bytes)
    if database_bytes is not None:
        Gauge("feint_backup_last_database_bytes", "Database size at the last backup.", registry=registry).set(
            database_bytes
        )
    try:
        # One group per operation, and pushadd (POST) replaces only the metric names pushed now:
        # a failure keeps the last success timestamp, and create and verify keep each other's.
        pushadd_to_gateway(
            url,
            job=PUSH_JOB,
            grouping_key={"instance": database, "operation": operation},
            registry=registry,
            timeout=PUSH_TIMEOUT_SECONDS,
        )
    except OSError as exc:
        log.warning("backup_metrics_push_failed", url=url, problem=str(exc))
        return str(exc)
    return None
