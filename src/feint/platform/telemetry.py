"""Logs, metrics and traces: one place that configures each.

- Logs: structlog, JSON lines to stdout (console format on a TTY), with the request id bound
  from a context variable to every line of a request. Secrets never reach a log: the
  `_redact` processor masks any field whose name says it holds one.
- Metrics: prometheus-client collectors defined here and shared by every service in the
  process (the ``service`` label tells them apart under ``feint up``).
- Traces: OpenTelemetry, exported over OTLP/HTTP only when ``FEINT_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog
from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram, Info

from feint import __version__

REDACTED_FIELDS = frozenset(
    {"authorization", "api_key", "key", "password", "card_number", "cvc", "master_key", "secret", "token"}
)

HTTP_REQUESTS = Counter(
    "feint_http_requests_total", "HTTP requests answered.", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "feint_http_request_duration_seconds",
    "HTTP request latency, by route template.",
    ["service", "method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_IN_FLIGHT = Gauge("feint_http_requests_in_flight", "HTTP requests being served.", ["service"])
HTTP_IN_FLIGHT_PEAK = Gauge(
    "feint_http_requests_in_flight_peak", "Most HTTP requests served at once since start.", ["service"]
)
DB_POOL = Gauge("feint_db_pool_connections", "Database pool connections by state.", ["state"])
BREAKER_STATE = Gauge("feint_circuit_breaker_open", "1 while a circuit breaker is open.", ["dependency"])
SECURITY_EVENTS = Counter("feint_security_events_total", "Security events logged.", ["event"])
BUILD_INFO = Info("feint_build", "Build information.")
BUILD_INFO.info({"version": __version__, "python": sys.version.split()[0]})


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in REDACTED_FIELDS.intersection(event):
        event[name] = "<redacted>"
    return event


def _count_security(logger: Any, _: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if event.get("component") == "feint.security":
        SECURITY_EVENTS.labels(str(event.get("event", "unknown"))).inc()
    return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write, as structlog's default does
    for stdout (``file=None``); a stream captured at configure time may be closed by then."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, level: str = "info", fmt: str = "auto", stderr: bool = False) -> None:
    """Configure structlog for the process (idempotent).

    Services log to stdout; CLI commands whose stdout is their answer (``feint keys create``
    prints the key alone) log to stderr."""
    stream = sys.stderr if stderr else sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            _count_security,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr()) if stderr else None),
        cache_logger_on_first_use=False,
    )


_provider: Any = None


def configure_tracing(*, endpoint: str | None) -> None:
    """Install a tracer provider exporting over OTLP/HTTP when ``endpoint`` is set (once per process).

    Without an endpoint the API's default no-op provider stays, so spans cost almost nothing."""
    global _provider
    if endpoint is None or _provider is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "feint"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
    trace.set_tracer_provider(provider)
    _provider = provider


def shutdown_tracing() -> None:
    """Flush and stop the exporter (spans still queued are sent now)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


tracer = trace.get_tracer("feint")
