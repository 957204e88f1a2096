"""The hot routes, dispatched by hand before FastAPI: single transfer, hold, capture, void, balance,
and batches of plain transfers.

These routes carry nearly all of the traffic. FastAPI still declares them (the OpenAPI
document is unchanged, and a test compares it), but a request that matches one exactly is
answered here, inside the platform middleware (request id, limits, timeout, metrics, problem+json
all still apply), without routing through every route's regex, without per-request dependency
resolution and without FastAPI's body handling: the body is decoded with orjson and validated by
the model's pydantic-core validator directly, then `authenticate` (the one implementation behind
``scope()``) and the service run as the FastAPI view would.

A batch is answered here only when it is plain transfers (`schemas.plain_transfer_batch`: no
client ids, canonical ids, valid amounts): then it is never made into models or domain objects,
but posted as columns (`models.TransferColumns`) by one call of the database's function.

Anything unusual goes to FastAPI untouched, so its answers stay the reference: a body that does
not decode or validate (FastAPI then names the fields exactly as before), a content type other
than JSON, an id that is not a canonical UUID, any other method or path. Decoding and validation
happen before authentication, so a request handed on has spent nothing (no rate-limit token).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import orjson
from prometheus_client import Counter
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feint.credits import schemas
from feint.credits.engine import Idempotency
from feint.credits.errors import TenantRequired
from feint.credits.models import TransferColumns
from feint.credits.service import Credits, Reply, service_of
from feint.errors import FeintError
from feint.platform.keys import Scope as KeyScope
from feint.platform.runtime import Platform
from feint.platform.web import TENANT_HEADER, RequestContext, authenticate, bearer_token, error_response

HOT_REQUESTS = Counter(
    "feint_credits_hot_requests_total",
    "Requests on the hand-dispatched hot routes: answered here, or handed to FastAPI (unusual input).",
    ["route", "outcome"],
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_JSON_HEADERS = [(b"content-type", b"application/json")]
_REPLAYED = (b"idempotent-replayed", b"true")


class _Fallback(Exception):
    """Hand the request to FastAPI (its answer is the reference for anything unusual)."""


@dataclass(frozen=True)
class _Route:
    path: str  # the template, what the platform's metrics label a request with


_TRANSFERS = _Route("/v1/transfers")
_HOLDS = _Route("/v1/holds")
_CAPTURE = _Route("/v1/holds/{id}/capture")
_VOID = _Route("/v1/holds/{id}/void")
_ACCOUNT = _Route("/v1/accounts/{id}")
_BATCHES = _Route("/v1/batches")


@dataclass
class _Request:
    scope: Scope
    headers: dict[bytes, bytes]
    body: bytes


M = TypeVar("M", bound=BaseModel)
Handler = Callable[["HotRoutes", _Request, UUID | None], Awaitable[Reply | bytes]]


class HotRoutes:
    """ASGI layer in front of the credits router: answers the five hot routes, passes the rest on."""

    def __init__(self, app: ASGIApp, *, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _match(scope) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        route, handler, object_id = found
        headers = dict(scope["headers"])  # the last of repeated headers wins, as request.headers.get
        body = await _read(receive) if scope["method"] == "POST" else b""
        request = _Request(scope=scope, headers=headers, body=body)
        try:
            answer = await handler(self, request, object_id)
        except _Fallback:
            HOT_REQUESTS.labels(route.path, "fallback").inc()
            await self.app(scope, _replay(body, receive), send)
            return
        except FeintError as exc:
            scope["route"] = route
            state = scope.get("state", {})
            response = error_response(exc, request_id=state.get("request_id"), instance=scope.get("path"))
            await response(scope, receive, send)
            return
        scope["route"] = route
        HOT_REQUESTS.labels(route.path, "answered").inc()
        await _send(send, answer)

    @property
    def service(self) -> Credits:
        return service_of(self.platform)

    async def context(self, request: _Request, required: KeyScope) -> RequestContext:
        headers = request.headers
        authorization = headers.get(b"authorization")
        tenant = headers.get(TENANT_HEADER.encode())
        key = headers.get(b"idempotency-key")
        return await authenticate(
            self.platform,
            token=bearer_token(authorization.decode("latin-1") if authorization is not None else None),
            required=required,
            path=request.scope["path"],
            tenant_name=tenant.decode("latin-1") if tenant is not None else None,
            idempotency_key=key.decode("latin-1") if key is not None else None,
            state=request.scope["state"],
        )

    def idempotency(self, ctx: RequestContext, request: _Request, body: BaseModel | None) -> Idempotency | None:
        if ctx.idempotency_key is None:
            return None
        key = self.service.request_key
        return Idempotency(
            ctx.idempotency_key, schemas.request_hash(request.scope["method"], request.scope["path"], body, key=key)
        )

    async def transfer(self, request: _Request, _: UUID | None) -> Reply:
        body = _decode(request, schemas.TransferIn)
        ctx = await self.context(request, "write")
        return await self.service.one(body.to_domain(_tenant(ctx)), idempotency=self.idempotency(ctx, request, body))

    async def hold(self, request: _Request, _: UUID | None) -> Reply:
        body = _decode(request, schemas.HoldIn)
        ctx = await self.context(request, "write")
        return await self.service.one(body.to_domain(_tenant(ctx)), idempotency=self.idempotency(ctx, request, body))

    async def capture(self, request: _Request, hold_id: UUID | None) -> Reply:
        body = _decode(request, schemas.CaptureIn) if request.body else schemas.CaptureIn()
        ctx = await self.context(request, "write")
        op = body.to_domain(_tenant(ctx), _required(hold_id))
        return await self.service.one(op, idempotency=self.idempotency(ctx, request, body))

    async def void(self, request: _Request, hold_id: UUID | None) -> Reply:
        ctx = await self.context(request, "write")
        op = schemas.VoidOp(op="void", hold_id=_required(hold_id)).to_domain(_tenant(ctx))
        return await self.service.one(op, idempotency=self.idempotency(ctx, request, None))

    async def batch(self, request: _Request, _: UUID | None) -> Reply:
        """A batch of plain transfers (`schemas.plain_transfer_batch`) as columns; any other batch: FastAPI."""
        data = _decode_json(request)
        plain = schemas.plain_transfer_batch(data)
        if plain is None:
            raise _Fallback
        ctx = await self.context(request, "write")
        tenant_id = _tenant(ctx)
        idempotency = None
        if ctx.idempotency_key is not None:
            key = self.service.request_key
            digest = schemas.request_hash_of(request.scope["method"], request.scope["path"], data, key=key)
            idempotency = Idempotency(ctx.idempotency_key, digest)
        columns = TransferColumns(tenant_id, plain.debits, plain.credits, plain.amounts, plain.metadata)
        return await self.service.batch(
            columns, tenant_id=tenant_id, mode=plain.mode, idempotency=idempotency, everything=plain.everything
        )

    async def account(self, request: _Request, account_id: UUID | None) -> bytes:
        ctx = await self.context(request, "read")
        return await self.service.account(tenant_id=_tenant(ctx), account_id=_required(account_id))


_POSTS: dict[str, tuple[_Route, Handler]] = {
    "/v1/transfers": (_TRANSFERS, HotRoutes.transfer),
    "/v1/batches": (_BATCHES, HotRoutes.batch),
    "/v1/holds": (_HOLDS, HotRoutes.hold),
}
_HOLD_ACTIONS: dict[str, tuple[_Route, Handler]] = {
    "capture": (_CAPTURE, HotRoutes.capture),
    "void": (_VOID, HotRoutes.void),
}


def _match(scope: Scope) -> tuple[_Route, Handler, UUID | None] | None:
    method, path = scope["method"], scope["path"]
    if method == "POST":
        fixed = _POSTS.get(path)
        if fixed is not None:
            return fixed[0], fixed[1], None
        parts = path.split("/")  # "", "v1", "holds", id, action
        if len(parts) == 5 and parts[1] == "v1" and parts[2] == "holds" and _UUID.match(parts[3]):
            action = _HOLD_ACTIONS.get(parts[4])
            if action is not None:
                return action[0], action[1], UUID(parts[3])
        return None
    if method == "GET" and path.startswith("/v1/accounts/"):
        tail = path[len("/v1/accounts/") :]
        if _UUID.match(tail):
            return _ACCOUNT, HotRoutes.account, UUID(tail)
    return None


def _decode(request: _Request, model: type[M]) -> M:
    data = _decode_json(request)
    try:
        return model.__pydantic_validator__.validate_python(data)  # type: ignore[no-any-return]
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise _Fallback from exc


def _decode_json(request: _Request) -> Any:
    content_type = request.headers.get(b"content-type")
    if content_type is not None and not _is_json(content_type):
        raise _Fallback
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise _Fallback from exc


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def _tenant(ctx: RequestContext) -> UUID:
    if ctx.tenant_id is None:
        raise TenantRequired()
    return ctx.tenant_id


def _required(value: UUID | None) -> UUID:
    if value is None:  # pragma: no cover - the matcher always passes the id to these handlers
        raise _Fallback
    return value


async def _read(receive: Receive) -> bytes:
    """The whole body (the platform middleware's receive already bounds its size)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _send(send: Send, answer: Reply | bytes) -> None:
    if isinstance(answer, Reply):
        status, body = answer.status, answer.body
        headers = [*_JSON_HEADERS, _REPLAYED] if answer.replayed else list(_JSON_HEADERS)
    else:
        status, body, headers = 200, answer, list(_JSON_HEADERS)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
