"""HTTP routes of the credits service: parse, call the service, answer. Nothing else."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from feint.credits import schemas
from feint.credits.engine import Idempotency
from feint.credits.errors import TenantRequired
from feint.credits.models import CODE_PATTERN, AccountKind
from feint.credits.payments import CardDetails
from feint.credits.service import Credits, Reply, service_of
from feint.credits.store.reads import ACCOUNTS_PAGE_MAX, ENTRIES_PAGE_MAX
from feint.credits.verify import verify
from feint.errors import Forbidden
from feint.platform.reads import Instant
from feint.platform.web import RequestContext, scope

router = APIRouter(prefix="/v1", tags=["credits"])
JSON = "application/json"
REPLAYED_HEADER = "idempotent-replayed"

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown account or hold (also another tenant's: existence never leaks)."},
    409: {"description": "insufficient-funds (with `available`), hold state, idempotency-key-reused, …"},
    422: {"description": "Invalid input; `errors` names each field."},
}


async def _service(request: Request) -> Credits:
    # async on purpose: FastAPI runs a plain-def dependency in a worker thread, per request.
    return service_of(request.app.state.platform)


def _tenant(ctx: RequestContext) -> UUID:
    if ctx.tenant_id is None:
        raise TenantRequired()
    return ctx.tenant_id


def _idempotency(ctx: RequestContext, request: Request, body: BaseModel | None) -> Idempotency | None:
    if ctx.idempotency_key is None:
        return None
    key = service_of(ctx.platform).request_key
    return Idempotency(ctx.idempotency_key, schemas.request_hash(request.method, request.url.path, body, key=key))


def _answer(reply: Reply) -> Response:
    headers = {REPLAYED_HEADER: "true"} if reply.replayed else None
    return Response(content=reply.body, status_code=reply.status, media_type=JSON, headers=headers)


def _json(body: bytes) -> Response:
    return Response(content=body, media_type=JSON)


Service = Annotated[Credits, Depends(_service)]
Reader = Annotated[RequestContext, Depends(scope("read"))]
Writer = Annotated[RequestContext, Depends(scope("write"))]
Admin = Annotated[RequestContext, Depends(scope("admin"))]
Operator = Annotated[RequestContext, Depends(scope("operator"))]


@router.post(
    "/accounts",
    status_code=201,
    response_model=schemas.AccountOut,
    responses={
        **_ERRORS,
        200: {"model": schemas.AccountOut, "description": "The same account (id and fields) was opened before."},
    },
    summary="Open an account (its tenant's system accounts for the code are opened with it).",
)
async def create_account(body: schemas.AccountIn, request: Request, ctx: Writer, service: Service) -> Response:
    op = body.to_domain(_tenant(ctx))
    return _answer(await service.one(op, idempotency=_idempotency(ctx, request, body)))


@router.get("/accounts", response_model=schemas.AccountsOut, summary="List accounts (system accounts with kind=…).")
async def list_accounts(
    ctx: Reader,
    service: Service,
    kind: AccountKind | None = None,
    code: Annotated[str | None, Query(pattern=CODE_PATTERN)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=ACCOUNTS_PAGE_MAX)] = 50,
) -> Response:
    return _json(
        await service.accounts(
            tenant_id=_tenant(ctx), kind=kind.value if kind else None, code=code, cursor=cursor, limit=limit
        )
    )


@router.get(
    "/accounts/{id}",
    response_model=schemas.AccountOut,
    responses=_ERRORS,
    summary="An account with posted, pending and available balances.",
)
async def get_account(id: UUID, ctx: Reader, service: Service) -> Response:
    return _json(await service.account(tenant_id=_tenant(ctx), account_id=id))


@router.get(
    "/accounts/{id}/entries",
    response_model=schemas.EntriesOut,
    responses=_ERRORS,
    summary="Entries newest first, with running balances; as_of gives the balance at a past instant.",
)
async def get_entries(
    id: UUID,
    ctx: Reader,
    service: Service,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=ENTRIES_PAGE_MAX)] = 100,
    as_of: Instant | None = None,
) -> Response:
    return _json(await service.entries(tenant_id=_tenant(ctx), account_id=id, cursor=cursor, limit=limit, as_of=as_of))


@router.post(
    "/grants",
    status_code=201,
    response_model=schemas.GrantIssuedOut,
    responses=_ERRORS,
    summary="Issue credits to an account (operator keys only: a tenant never mints credits).",
)
async def create_grant(body: schemas.GrantIn, request: Request, ctx: Operator, service: Service) -> Response:
    return _answer(await service.one(body.to_domain(_tenant(ctx)), idempotency=_idempotency(ctx, request, body)))


@router.post(
    "/transfers",
    status_code=201,
    response_model=schemas.TransferOut,
    responses=_ERRORS,
    summary="Move credits from one account to another.",
)
async def create_transfer(body: schemas.TransferIn, request: Request, ctx: Writer, service: Service) -> Response:
    return _answer(await service.one(body.to_domain(_tenant(ctx)), idempotency=_idempotency(ctx, request, body)))


@router.post(
    "/holds",
    status_code=201,
    response_model=schemas.HoldOut,
    responses=_ERRORS,
    summary="Reserve credits until captured, voided or timed out.",
)
async def create_hold(body: schemas.HoldIn, request: Request, ctx: Writer, service: Service) -> Response:
    return _answer(await service.one(body.to_domain(_tenant(ctx)), idempotency=_idempotency(ctx, request, body)))


@router.get("/holds/{id}", response_model=schemas.HoldOut, responses=_ERRORS, summary="A hold and its state.")
async def get_hold(id: UUID, ctx: Reader, service: Service) -> Response:
    return _json(await service.hold(tenant_id=_tenant(ctx), hold_id=id))


@router.post(
    "/holds/{id}/capture",
    response_model=schemas.HoldOut,
    responses=_ERRORS,
    summary="Capture all of a hold or part of it (the rest is released).",
)
async def capture_hold(
    id: UUID, request: Request, ctx: Writer, service: Service, body: schemas.CaptureIn | None = None
) -> Response:
    body = body or schemas.CaptureIn()
    op = body.to_domain(_tenant(ctx), id)
    return _answer(await service.one(op, idempotency=_idempotency(ctx, request, body)))


@router.post("/holds/{id}/void", response_model=schemas.HoldOut, responses=_ERRORS, summary="Release a hold.")
async def void_hold(id: UUID, request: Request, ctx: Writer, service: Service) -> Response:
    op = schemas.VoidOp(op="void", hold_id=id).to_domain(_tenant(ctx))
    return _answer(await service.one(op, idempotency=_idempotency(ctx, request, None)))


@router.post(
    "/batches",
    response_model=schemas.BatchOut,
    responses=_ERRORS,
    summary="Up to 8,190 operations: atomic (all or nothing) or independent; the answer lists the failures "
    "(every result with `results: all`).",
)
async def create_batch(body: schemas.BatchIn, request: Request, ctx: Writer, service: Service) -> Response:
    if body.grants and not ctx.principal.is_operator:
        raise Forbidden("grant operations need an operator key")
    tenant_id = _tenant(ctx)
    reply = await service.batch(
        body.to_domain(tenant_id),
        tenant_id=tenant_id,
        mode=body.mode,
        idempotency=_idempotency(ctx, request, body),
        everything=body.results == "all",
    )
    return _answer(reply)


@router.get(
    "/audit/verify",
    response_model=schemas.AuditReportOut,
    summary="Recompute the audit chain (a tenant's; every tenant's for an operator without Feint-Tenant).",
)
async def verify_audit(ctx: Admin, service: Service) -> Response:
    report = await verify(service.db, tenant_id=ctx.tenant_id)
    return _json(schemas.dumps(report.body()))


@router.post(
    "/payment-methods",
    status_code=201,
    response_model=schemas.PaymentMethodOut,
    responses={
        **_ERRORS,
        200: {"model": schemas.PaymentMethodOut, "description": "This card is stored already: the stored method."},
    },
    summary="Store a card: last four digits, keyed fingerprint, sealed expiry and holder; never the number.",
)
async def create_payment_method(
    body: schemas.PaymentMethodIn, request: Request, ctx: Admin, service: Service
) -> Response:
    reply = await service.add_payment_method(
        tenant_id=_tenant(ctx),
        card_number=body.card_number,
        details=CardDetails(expiry=body.expiry, holder=body.holder),
        idempotency=_idempotency(ctx, request, body),
    )
    return _answer(reply)


@router.get(
    "/payment-methods/{id}",
    response_model=schemas.PaymentMethodOut,
    responses=_ERRORS,
    summary="A payment method with its decrypted expiry and holder.",
)
async def get_payment_method(id: UUID, ctx: Admin, service: Service) -> Response:
    return _json(await service.payment_method(tenant_id=_tenant(ctx), method_id=id))
