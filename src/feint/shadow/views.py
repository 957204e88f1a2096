"""The shadow API under /v1: rule sets, versions, transitions, rollback, diff, history, production,
evaluations. Each view parses, calls one service function and shapes the answer.

Scopes: reads need ``read``; creating rule sets, versions and evaluations ``write``; state
changes and rollbacks ``admin``. The first request of a tenant installs the starter rule set.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from feint.errors import BadRequest, Conflict, NotFound
from feint.platform.reads import etag_matches as _etag_matches
from feint.platform.web import RequestContext, scope
from feint.shadow import jobs, repository, store
from feint.shadow.repository import LIST_LIMIT_MAX
from feint.shadow.schemas import (
    DatasetCreatedOut,
    DatasetList,
    DatasetOut,
    DiffOut,
    EvaluationIn,
    EvaluationList,
    EvaluationOut,
    HistoryList,
    HistoryOut,
    ProductionOut,
    RollbackIn,
    RuleSetIn,
    RuleSetList,
    RuleSetOut,
    TransitionIn,
    VersionDetailOut,
    VersionIn,
    VersionList,
    VersionOut,
)
from feint.shadow.versions import compile_version

RUNNER_KEY: Final = "shadow.evaluations"
STARTER_DONE_KEY: Final = "shadow.starter_done"
STARTER_CACHE_TENANTS_MAX: Final = 100_000
LIST_LIMIT_DEFAULT: Final = 100
# The report shows requests an attacker wrote: it runs sandboxed, as an origin of its own, with
# nothing loaded from anywhere (the page is self-contained).
REPORT_HEADERS: Final = {
    "content-security-policy": "sandbox allow-scripts; default-src 'none'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; img-src data:",
    "x-content-type-options": "nosniff",
}

router = APIRouter(prefix="/v1", tags=["shadow"])
Ref = Path(min_length=1, max_length=64, description="Rule set id or name.")
Number = Path(ge=1, le=2**31 - 1, description="Version number.")
Limit = Query(LIST_LIMIT_DEFAULT, ge=1, le=LIST_LIMIT_MAX)


class EvaluationNotFinished(Conflict):
    slug, title = "evaluation-not-finished", "Evaluation not finished"

    def __init__(self, *, evaluation_id: uuid.UUID, status: str) -> None:
        super().__init__(f"evaluation {evaluation_id} is {status}; it has no report", evaluation_status=status)


class EvaluationNotFound(NotFound):
    slug, title = "evaluation-not-found", "Evaluation not found"

    def __init__(self, *, evaluation_id: uuid.UUID) -> None:
        super().__init__(f"no evaluation {evaluation_id}")


def _actor(ctx: RequestContext) -> str:
    return f"key:{ctx.principal.key_id}"


async def _tenant(ctx: RequestContext) -> uuid.UUID:
    """The caller's tenant; on its first request in this process, the starter set is ensured."""
    if ctx.tenant_id is None:
        raise BadRequest("an operator key names the tenant it acts for in the Feint-Tenant header")
    done: set[uuid.UUID] = ctx.platform.extras.setdefault(STARTER_DONE_KEY, set())
    if ctx.tenant_id not in done:
        await repository.ensure_starter(ctx.platform.db, tenant_id=ctx.tenant_id)
        if len(done) >= STARTER_CACHE_TENANTS_MAX:
            done.clear()
        done.add(ctx.tenant_id)
    return ctx.tenant_id


# --- rule sets ----------------------------------------------------------------------------


@router.post("/rulesets", status_code=201, summary="Create a rule set.")
async def create_ruleset(body: RuleSetIn, ctx: RequestContext = Depends(scope("write"))) -> RuleSetOut:
    row = await repository.create_ruleset(
        ctx.platform.db, tenant_id=await _tenant(ctx), name=body.name, description=body.description, actor=_actor(ctx)
    )
    return RuleSetOut.of(row)


@router.get("/rulesets", summary="The tenant's rule sets, by name.")
async def list_rulesets(
    limit: int = Limit, offset: int = Query(0, ge=0, le=1_000_000), ctx: RequestContext = Depends(scope("read"))
) -> RuleSetList:
    rows = await repository.list_rulesets(ctx.platform.db, tenant_id=await _tenant(ctx), limit=limit, offset=offset)
    return RuleSetList(items=[RuleSetOut.of(row) for row in rows])


@router.get("/rulesets/{ref}", summary="One rule set.")
async def get_ruleset(ref: str = Ref, ctx: RequestContext = Depends(scope("read"))) -> RuleSetOut:
    return RuleSetOut.of(await repository.get_ruleset(ctx.platform.db, tenant_id=await _tenant(ctx), ref=ref))


@router.post(
    "/rulesets/{ref}/versions",
    status_code=201,
    summary="Add a version (a draft) from Sigma YAML; 422 naming the rule, line and feature on bad input.",
)
async def create_version(
    body: VersionIn, ref: str = Ref, ctx: RequestContext = Depends(scope("write"))
) -> VersionDetailOut:
    tenant_id = await _tenant(ctx)
    compiled = await asyncio.to_thread(
        compile_version, body.to_documents(), weights=body.weights, threshold=body.threshold, name=ref
    )
    version = await repository.add_version(
        ctx.platform.db,
        tenant_id=tenant_id,
        ref=ref,
        compiled=compiled,
        message=body.message,
        author=body.author or _actor(ctx),
        actor=_actor(ctx),
    )
    detail = await repository.get_version(ctx.platform.db, tenant_id=tenant_id, ref=ref, number=version.number)
    return VersionDetailOut.of_detail(detail)


@router.get("/rulesets/{ref}/versions", summary="Versions, newest first.")
async def list_versions(
    ref: str = Ref,
    limit: int = Limit,
    before: int | None = Query(None, ge=1, description="Only versions older than this number."),
    ctx: RequestContext = Depends(scope("read")),
) -> VersionList:
    rows = await repository.list_versions(
        ctx.platform.db, tenant_id=await _tenant(ctx), ref=ref, limit=limit, before=before
    )
    return VersionList(items=[VersionOut.of(row) for row in rows])


@router.get("/rulesets/{ref}/versions/{number}", summary="One version with its rules and Sigma texts.")
async def get_version(
    ref: str = Ref, number: int = Number, ctx: RequestContext = Depends(scope("read"))
) -> VersionDetailOut:
    detail = await repository.get_version(ctx.platform.db, tenant_id=await _tenant(ctx), ref=ref, number=number)
    return VersionDetailOut.of_detail(detail)


@router.post(
    "/rulesets/{ref}/versions/{number}/transition",
    summary="Move a version to its next state; 409 naming both states when the move is not allowed.",
)
async def transition(
    body: TransitionIn, ref: str = Ref, number: int = Number, ctx: RequestContext = Depends(scope("admin"))
) -> VersionOut:
    row = await repository.transition(
        ctx.platform.db,
        tenant_id=await _tenant(ctx),
        ref=ref,
        number=number,
        to=body.to,
        reason=body.reason,
        actor=_actor(ctx),
    )
    return VersionOut.of(row)


@router.post("/rulesets/{ref}/rollback", summary="Return production to a former production version (audited).")
async def rollback(body: RollbackIn, ref: str = Ref, ctx: RequestContext = Depends(scope("admin"))) -> VersionOut:
    row = await repository.rollback(
        ctx.platform.db,
        tenant_id=await _tenant(ctx),
        ref=ref,
        number=body.version,
        reason=body.reason,
        actor=_actor(ctx),
    )
    return VersionOut.of(row)


@router.get("/rulesets/{ref}/diff", summary="Rules added, removed and changed between two versions.")
async def diff(
    ref: str = Ref,
    a: int = Query(alias="from", ge=1, le=2**31 - 1),
    b: int = Query(alias="to", ge=1, le=2**31 - 1),
    ctx: RequestContext = Depends(scope("read")),
) -> DiffOut:
    result = await repository.diff(ctx.platform.db, tenant_id=await _tenant(ctx), ref=ref, a=a, b=b)
    return DiffOut.of(result)


@router.get("/rulesets/{ref}/history", summary="Every version created, state change and rollback, newest first.")
async def history(
    ref: str = Ref,
    limit: int = Limit,
    before: int | None = Query(None, ge=1, description="Only events older than this seq."),
    ctx: RequestContext = Depends(scope("read")),
) -> HistoryList:
    rows = await repository.history(ctx.platform.db, tenant_id=await _tenant(ctx), ref=ref, limit=limit, before=before)
    return HistoryList(items=[HistoryOut.of(row) for row in rows])


@router.get(
    "/rulesets/{ref}/production",
    response_model=ProductionOut,
    summary="The version in production, for the gateway's hot reload; If-None-Match with its ETag → 304.",
    responses={304: {"description": "The production version is still the one the ETag names."}},
)
async def production(
    request: Request, response: Response, ref: str = Ref, ctx: RequestContext = Depends(scope("read"))
) -> Any:
    tenant_id = await _tenant(ctx)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        # A poll: the version's number and hash decide; its rules are read only when they changed.
        current = await repository.production_version(ctx.platform.db, tenant_id=tenant_id, ref=ref)
        etag = ProductionOut.etag_of(current)
        if _etag_matches(if_none_match, etag):
            return Response(status_code=304, headers={"etag": etag, "cache-control": "no-cache"})
    detail = await repository.production(ctx.platform.db, tenant_id=tenant_id, ref=ref)
    etag = ProductionOut.etag_of(detail.version)
    response.headers.update({"etag": etag, "cache-control": "no-cache"})
    return ProductionOut.of_production(detail, etag=etag)


# --- datasets -----------------------------------------------------------------------------


@router.post(
    "/datasets",
    status_code=201,
    summary="Upload a log (nginx/Apache combined, W3C, JSON lines; gzip or plain) as a traffic dataset.",
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
)
async def upload_dataset(
    request: Request,
    name: str = Query(min_length=1, max_length=300, description="A name to recognise the dataset by."),
    ctx: RequestContext = Depends(scope("write")),
) -> DatasetCreatedOut:
    tenant_id = await _tenant(ctx)
    datasets = jobs.datasets_root(ctx.platform.settings.home_dir, await _tenant_name(ctx, tenant_id))
    row, summary = await jobs.upload_dataset(
        ctx.platform.db, tenant_id=tenant_id, datasets=datasets, name=name, chunks=request.stream(), actor=_actor(ctx)
    )
    return DatasetCreatedOut(**DatasetOut.of(row).model_dump(), **summary)


@router.get("/datasets", summary="The tenant's uploaded datasets, newest first.")
async def list_datasets(limit: int = Limit, ctx: RequestContext = Depends(scope("read"))) -> DatasetList:
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_datasets(conn, tenant_id=await _tenant(ctx), limit=limit)
    return DatasetList(items=[DatasetOut.of(row) for row in rows])


@router.get("/datasets/{dataset_id}", summary="One uploaded dataset.")
async def get_dataset(dataset_id: uuid.UUID, ctx: RequestContext = Depends(scope("read"))) -> DatasetOut:
    tenant_id = await _tenant(ctx)
    async with ctx.platform.db.connection() as conn:
        row = await store.get_dataset(conn, tenant_id=tenant_id, dataset_id=dataset_id)
    if row is None:
        raise jobs.DatasetNotFound(ref=str(dataset_id))
    return DatasetOut.of(row)


# --- evaluations --------------------------------------------------------------------------


def _runner(ctx: RequestContext) -> jobs.EvaluationRunner:
    runner: jobs.EvaluationRunner = ctx.platform.extras[RUNNER_KEY]
    return runner


async def _tenant_name(ctx: RequestContext, tenant_id: uuid.UUID) -> str:
    if ctx.principal.tenant_name is not None:
        return ctx.principal.tenant_name
    async with ctx.platform.db.connection() as conn:
        return await store.tenant_name(conn, tenant_id)


@router.post(
    "/evaluations",
    status_code=202,
    summary="Evaluate a candidate against production on labelled traffic, as a background job.",
)
async def create_evaluation(body: EvaluationIn, ctx: RequestContext = Depends(scope("write"))) -> EvaluationOut:
    tenant_id = await _tenant(ctx)
    datasets = jobs.datasets_root(ctx.platform.settings.home_dir, await _tenant_name(ctx, tenant_id))
    job = await jobs.prepare(ctx.platform.db, tenant_id=tenant_id, datasets=datasets, body=body)
    row = await _runner(ctx).submit(job, request=body.model_dump(mode="json"), created_by=_actor(ctx))
    return EvaluationOut.of(row)


@router.get("/evaluations", summary="The tenant's evaluations, newest first.")
async def list_evaluations(limit: int = Limit, ctx: RequestContext = Depends(scope("read"))) -> EvaluationList:
    async with ctx.platform.db.connection() as conn:
        rows = await store.list_evaluations(conn, tenant_id=await _tenant(ctx), limit=limit)
    return EvaluationList(items=[EvaluationOut.of(row) for row in rows])


@router.get("/evaluations/{evaluation_id}", summary="Status and progress of an evaluation.")
async def get_evaluation(evaluation_id: uuid.UUID, ctx: RequestContext = Depends(scope("read"))) -> EvaluationOut:
    tenant_id = await _tenant(ctx)
    async with ctx.platform.db.connection() as conn:
        row = await store.get_evaluation(conn, tenant_id=tenant_id, evaluation_id=evaluation_id)
    if row is None:
        raise EvaluationNotFound(evaluation_id=evaluation_id)
    return EvaluationOut.of(row)


async def _report(ctx: RequestContext, evaluation_id: uuid.UUID, *, html: bool) -> Any:
    tenant_id = await _tenant(ctx)
    async with ctx.platform.db.connection() as conn:
        found = await store.evaluation_report(conn, tenant_id=tenant_id, evaluation_id=evaluation_id, html=html)
    if found is None:
        raise EvaluationNotFound(evaluation_id=evaluation_id)
    status, report = found
    if report is None:
        raise EvaluationNotFinished(evaluation_id=evaluation_id, status=status)
    return report


@router.get("/evaluations/{evaluation_id}/report", summary="The report (JSON, schema in docs/shadow.md).")
async def evaluation_report(evaluation_id: uuid.UUID, ctx: RequestContext = Depends(scope("read"))) -> Any:
    return await _report(ctx, evaluation_id, html=False)


@router.get(
    "/evaluations/{evaluation_id}/report.html",
    response_class=Response,
    summary="The report as one self-contained page.",
)
async def evaluation_report_html(evaluation_id: uuid.UUID, ctx: RequestContext = Depends(scope("read"))) -> Response:
    page = await _report(ctx, evaluation_id, html=True)
    return Response(content=page, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)
