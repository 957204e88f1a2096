"""The one app factory every service uses, and the one place errors become HTTP responses.

`create_app` gives a service ``/health``, ``/ready``, ``/metrics`` and ``/openapi.json``, the
`PlatformMiddleware` (request ids, size limits, timeouts, metrics, access log, traces, per-IP
rate limits) and the handlers that turn every error into RFC 9457 problem+json. Routes declare
their scope with ``Depends(scope("write"))``, which authenticates the bearer key and applies
the per-key rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feint import __version__
from feint.errors import (
    BadRequest,
    DependencyUnavailable,
    FeintError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unauthenticated,
    ValidationFailed,
)
from feint.platform import openapi
from feint.platform.cache import RateDecision
from feint.platform.keys import Principal, security_log
from feint.platform.keys import Scope as KeyScope
from feint.platform.runtime import Platform
from feint.platform.telemetry import (
    DB_POOL,
    HTTP_IN_FLIGHT,
    HTTP_IN_FLIGHT_PEAK,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    tracer,
)

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_LENGTH_MAX = 128
HEADER_BYTES_MAX = 16 * 1024
# Route templates bound the label sets; methods and statuses from clients are few but unbounded.
METRIC_LABEL_SETS_MAX = 4_096
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})
TENANT_HEADER = "feint-tenant"
IDEMPOTENCY_KEY_LENGTH_MAX = 255
PROBLEM_TYPE_PREFIX = "/problems/"
_REQUEST_ID = re.compile(rf"^[A-Za-z0-9._:\-]{{1,{REQUEST_ID_LENGTH_MAX}}}$")

log = structlog.get_logger(component="feint.http")


# --- problem+json -------------------------------------------------------------------------


def problem(exc: FeintError, *, request_id: str | None, instance: str | None) -> Response:
    """The RFC 9457 body for an error; the only function that builds error responses."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + exc.slug,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    if instance is not None:
        body["instance"] = instance
    body["request_id"] = request_id
    for name, value in exc.extensions.items():
        body.setdefault(name, value)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["retry-after"] = str(exc.retry_after_seconds)
    if isinstance(exc, MethodNotAllowed) and "allow" in exc.extensions:
        headers["allow"] = ", ".join(exc.extensions["allow"])
    return Response(
        content=orjson.dumps(body, default=str),
        status_code=exc.status,
        media_type="application/problem+json",
        headers=headers,
    )


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return str(value) if value is not None else None


def error_response(exc: FeintError, *, request_id: str | None, instance: str | None) -> Response:
    """A route's FeintError as problem+json, logged when it is the server's fault (5xx)."""
    if exc.status >= 500:
        log.error("request_failed", error=exc.slug, detail=exc.detail)
    return problem(exc, request_id=request_id, instance=instance)


async def _feint_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, FeintError):  # pragma: no cover - registered for FeintError only
        raise exc
    return error_response(exc, request_id=_request_id(request), instance=request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    errors = []
    for err in getattr(exc, "errors", list)():
        location = ".".join(str(part) for part in err.get("loc", ()))
        # The input is never echoed: it may be a card number or a key.
        errors.append({"field": location, "problem": str(err.get("msg", "invalid"))})
    fields = ", ".join(e["field"] for e in errors[:5]) or "request"
    feint_exc = ValidationFailed(f"invalid input at {fields}", errors=errors)
    return problem(feint_exc, request_id=_request_id(request), instance=request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    feint_exc: FeintError
    if isinstance(exc.__cause__, FeintError):
        # FastAPI wraps any failure while reading the body (our size limit among them) in a 400.
        feint_exc = exc.__cause__
    elif status == 404:
        feint_exc = NotFound(f"no route {request.method} {request.url.path}")
    elif status == 405:
        feint_exc = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}", allow=_allowed_methods(request)
        )
    else:
        feint_exc = BadRequest(str(getattr(exc, "detail", "bad request")))
    return problem(feint_exc, request_id=_request_id(request), instance=request.url.path)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document gives this path (Starlette's 405 names one route's only)."""
    app = request.app
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, operations in app.openapi().get("paths", {}).items():
            parts = re.split(r"\{[^/{}]+\}", template)
            pattern = re.compile("^" + "[^/]+".join(re.escape(part) for part in parts) + "$")
            methods = sorted(m.upper() for m in operations if m in openapi.HTTP_METHODS)
            table.append((pattern, methods))
        app.state.allowed_methods = table
    for pattern, methods in table:
        if pattern.match(request.url.path):
            return methods
    return []


# --- middleware ---------------------------------------------------------------------------


class PlatformMiddleware:
    """Request id, header and body limits, timeout, metrics, access log, trace span, per-IP limit.

    A pure ASGI middleware (no BaseHTTPMiddleware) so that it costs one function call per request
    and can still answer with problem+json when the app below it fails or runs out of time.
    """

    def __init__(self, app: ASGIApp, *, service: str, platform: Platform) -> None:
        self.app = app
        self.service = service
        self.platform = platform
        self.settings = platform.settings
        self.in_flight = 0
        self.in_flight_peak = 0
        self._metric_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._in_flight_gauge = HTTP_IN_FLIGHT.labels(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state["request_id"] = request_id
        path = scope.get("path", "")
        status_holder = {"status": 500, "started": False}
        rid_header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = list(message.get("headers", []))
                headers.append(rid_header)
                decision: RateDecision | None = state.get("rate")
                if decision is not None:
                    headers.extend(_rate_headers(decision))
                message = {**message, "headers": headers}
            await send(message)

        self.in_flight += 1
        self._in_flight_gauge.inc()
        if self.in_flight > self.in_flight_peak:
            self.in_flight_peak = self.in_flight
            HTTP_IN_FLIGHT_PEAK.labels(self.service).set(self.in_flight)
        structlog.contextvars.bind_contextvars(request_id=request_id, service=self.service)
        try:
            with tracer.start_as_current_span(f"{scope.get('method', 'GET')} {path}") as span:
                await self._guarded(scope, receive, send_wrapper, state, status_holder)
                span.set_attribute("http.status_code", int(status_holder["status"]))
        finally:
            self.in_flight -= 1
            self._in_flight_gauge.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            status = str(status_holder["status"])
            elapsed = time.perf_counter() - started
            method = scope.get("method", "")
            counter, histogram = self._children(method if method in KNOWN_METHODS else "OTHER", template, status)
            counter.inc()
            histogram.observe(elapsed)
            if path not in PROBE_PATHS:
                log.info(
                    "request",
                    method=scope.get("method"),
                    route=template,
                    status=status_holder["status"],
                    duration_ms=round(elapsed * 1000, 3),
                )
            structlog.contextvars.unbind_contextvars("request_id", "service")

    def _children(self, method: str, template: str, status: str) -> tuple[Any, Any]:
        """The metric children of one label set, looked up once (labels() is a hot-path cost)."""
        key = (method, template, status)
        found = self._metric_children.get(key)
        if found is None:
            found = (
                HTTP_REQUESTS.labels(self.service, method, template, status),
                HTTP_LATENCY.labels(self.service, method, template, status),
            )
            if len(self._metric_children) < METRIC_LABEL_SETS_MAX:
                self._metric_children[key] = found
        return found

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any], status_holder: dict[str, Any]
    ) -> None:
        async def fail(exc: FeintError) -> None:
            if status_holder["started"]:
                return  # the response is on the wire; nothing more can be said to the client
            await problem(exc, request_id=state["request_id"], instance=scope.get("path"))(scope, receive, send)

        try:
            _check_headers(scope, body_max=self.settings.request_body_bytes_max)
            if scope.get("path") not in PROBE_PATHS and not _has_authorization(scope):
                await self._limit_ip(scope, state)
            bounded = _bounded_receive(receive, self.settings.request_body_bytes_max)
            # asyncio.timeout (not wait_for): no extra task per request.
            async with asyncio.timeout(self.settings.request_timeout_seconds):
                await self.app(scope, bounded, send)
        except TimeoutError:
            log.warning("request_timeout", timeout_seconds=self.settings.request_timeout_seconds)
            await fail(RequestTimeout(f"request took longer than {self.settings.request_timeout_seconds:g} s"))
        except FeintError as exc:
            await fail(exc)
        except Exception:
            log.exception("unhandled_error")
            await fail(FeintError("internal error; the request id identifies it in the logs"))

    async def _limit_ip(self, scope: Scope, state: dict[str, Any]) -> None:
        client = scope.get("client") or ("unknown", 0)
        await rate_limit(self.platform, f"ip:{client[0]}", state=state, refusal="too many requests from this address")


async def rate_limit(platform: Platform, key: str, *, state: dict[str, Any], refusal: str) -> None:
    """Take a token of ``key``'s bucket (the decision feeds the RateLimit-* headers); 429 when empty."""
    decision = await platform.limiter.acquire(
        key, rate=platform.settings.rate_limit_per_second, burst=platform.settings.rate_limit_burst
    )
    state["rate"] = decision
    if not decision.allowed:
        raise RateLimited(refusal, retry_after_seconds=decision.retry_after_seconds)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.match(text) else None
    return None


def _has_authorization(scope: Scope) -> bool:
    return any(name == b"authorization" for name, _ in scope.get("headers", []))


def _check_headers(scope: Scope, *, body_max: int) -> None:
    total = 0
    for name, value in scope.get("headers", []):
        total += len(name) + len(value) + 4
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise BadRequest("Content-Length is not an integer") from None
            if length > body_max:
                raise PayloadTooLarge(f"body of {length} bytes exceeds the {body_max}-byte limit", limit_bytes=body_max)
    if total > HEADER_BYTES_MAX:
        raise PayloadTooLarge(
            f"headers of {total} bytes exceed the {HEADER_BYTES_MAX}-byte limit", limit_bytes=HEADER_BYTES_MAX
        )


def _bounded_receive(receive: Receive, body_max: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > body_max:
                raise PayloadTooLarge(f"body exceeds the {body_max}-byte limit", limit_bytes=body_max)
        return message

    return wrapped


def _rate_headers(decision: RateDecision) -> list[tuple[bytes, bytes]]:
    return [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(decision.reset_seconds).encode()),
    ]


# --- authentication -------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestContext:
    """What a view knows about the caller: platform, principal, tenant and request keys."""

    platform: Platform
    principal: Principal
    tenant_id: uuid.UUID | None
    request_id: str
    idempotency_key: str | None


def _route(request: Request) -> str:
    """The matched route's template: the raw path may hold a pasted key or card number (never logged)."""
    return str(getattr(request.scope.get("route"), "path", "?"))


_bearer = HTTPBearer(auto_error=False, description="An API key from `feint keys create`.")


def bearer_token(authorization: str | None) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (None when absent or another scheme), as HTTPBearer reads it."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if not scheme or not token or scheme.lower() != "bearer":
        return None
    return token


async def authenticate(
    platform: Platform,
    *,
    token: str | None,
    required: KeyScope,
    path: str,
    tenant_name: str | None,
    idempotency_key: str | None,
    state: dict[str, Any],
    service: str = "",
    src_host: str = "",
) -> RequestContext:
    """Authenticate a bearer key, apply its rate limit, check ``required``, resolve the tenant.

    The one implementation behind `scope` (FastAPI routes) and hand-dispatched hot routes; sets
    ``state["rate"]`` for the RateLimit-* headers. Raises 401, 403, 404 (unknown tenant), 422, 429."""
    if token is None:
        security_log.warning("auth_failed", reason="missing", route=path)
        raise Unauthenticated("missing bearer API key (Authorization: Bearer <key>)")
    principal = await platform.keys.resolve(token)
    if principal is None:
        security_log.warning("auth_failed", reason="invalid-or-revoked", route=path)
        # A key that looks like a planted honeytoken raises the camouflage alert (valid keys never get here).
        await platform.keys.report_failure(token, service=service, path=path, src_host=src_host)
        raise Unauthenticated("API key is invalid or revoked")
    await rate_limit(platform, f"key:{principal.key_id}", state=state, refusal="rate limit of this API key exceeded")
    if not principal.allows(required):
        security_log.warning(
            "scope_denied", key_id=str(principal.key_id), has=principal.scope, needs=required, route=path
        )
        raise Forbidden(f"this key has scope '{principal.scope}'; the route needs '{required}'")
    tenant_id = principal.tenant_id
    if principal.is_operator and tenant_name:
        tenant_id = await platform.keys.tenant_id(tenant_name)
        if tenant_id is None:
            raise NotFound(f"no tenant {tenant_name[:64]!r}")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_LENGTH_MAX:
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 characters",
            errors=[{"field": "header.Idempotency-Key", "problem": "length 1-255"}],
        )
    return RequestContext(
        platform=platform,
        principal=principal,
        tenant_id=tenant_id,
        request_id=str(state["request_id"]),
        idempotency_key=idempotency_key,
    )


def scope(required: KeyScope) -> Callable[..., Awaitable[RequestContext]]:
    """A dependency that authenticates the caller and checks ``required``; 401 or 403 otherwise.

    An operator key acts on the tenant named by the ``Feint-Tenant`` header (or none). ``required``
    is declared as the bearer scheme's role, so each operation's OpenAPI ``security`` names it
    (OpenAPI 3.1 allows roles for non-OAuth schemes) and tests read the scopes from the document."""

    async def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer, scopes=[required])
    ) -> RequestContext:
        token = credentials.credentials if credentials is not None and credentials.scheme.lower() == "bearer" else None
        return await authenticate(
            request.app.state.platform,
            token=token,
            required=required,
            path=_route(request),
            tenant_name=request.headers.get(TENANT_HEADER),
            idempotency_key=request.headers.get("idempotency-key"),
            state=request.scope["state"],
            service=str(request.app.state.service),
            src_host=request.client.host if request.client else "",
        )

    return dependency


# --- the factory --------------------------------------------------------------------------


def _probes(service: str, *, redis_optional: bool = False) -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get("/health", summary="The process is alive.")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service, "version": __version__}

    @router.get("/ready", summary="Every dependency answers; 503 naming the one that does not.")
    async def ready(request: Request) -> dict[str, Any]:
        platform: Platform = request.app.state.platform
        checks: dict[str, str] = {}
        status = "ready"
        try:
            await platform.db.ping()
            checks["database"] = "ok"
        except DependencyUnavailable as exc:
            raise DependencyUnavailable("database is not reachable", dependency="database") from exc
        if platform.redis is not None:
            try:
                await platform.redis.ping()
                checks["redis"] = "ok"
            except DependencyUnavailable as exc:
                if not redis_optional:
                    raise DependencyUnavailable("redis is not reachable", dependency="redis") from exc
                # The service works without it (the gateway's bandit falls back to PostgreSQL):
                # taking every replica out of service for a shared cache would stop the site.
                checks["redis"] = "unavailable"
                status = "degraded"
        return {"status": status, "service": service, "checks": checks}

    @router.get("/v1/whoami", summary="The caller's key: tenant, scope and key id.", tags=["keys"])
    async def whoami(ctx: RequestContext = Depends(scope("read"))) -> dict[str, Any]:
        return {
            "key_id": str(ctx.principal.key_id),
            "tenant": ctx.principal.tenant_name,
            "scope": ctx.principal.scope,
        }

    @router.get("/metrics", summary="Prometheus metrics.", response_class=Response)
    async def metrics(request: Request) -> Response:
        platform: Platform = request.app.state.platform
        for state, value in platform.db.pool_stats().items():
            DB_POOL.labels(state).set(value)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def create_app(
    service: str,
    *,
    platform: Platform,
    routers: Sequence[APIRouter] = (),
    description: str = "",
    on_startup: Sequence[Callable[[Platform], Awaitable[None]]] = (),
    on_shutdown: Sequence[Callable[[Platform], Awaitable[None]]] = (),
    inner: Sequence[type[Any]] = (),
    redis_optional: bool = False,
) -> FastAPI:
    """A service app with the shared plumbing; ``routers`` carry the domain routes.

    ``redis_optional``: the service keeps working while Redis is down, so ``/ready`` stays 200
    (status ``degraded``, ``checks.redis`` ``unavailable``) instead of 503.

    ``inner``: ASGI layers (constructed as ``cls(app, platform=platform)``) placed inside the
    platform middleware, in front of the router: hand-dispatched hot routes (`feint.credits.hot`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.open()
        for hook in on_startup:
            await hook(platform)
        try:
            yield
        finally:
            for hook in on_shutdown:
                await hook(platform)
            await platform.close()

    app = FastAPI(
        title=f"Feint {service}",
        version=__version__,
        description=description,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.platform = platform
    app.state.service = service

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi.with_problems(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
    app.add_exception_handler(FeintError, _feint_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(_probes(service, redis_optional=redis_optional))
    for router in routers:
        app.include_router(router)
    for layer in reversed(inner):
        app.add_middleware(layer, platform=platform)
    app.add_middleware(PlatformMiddleware, service=service, platform=platform)
    return app
