"""``/v1/rollouts``: start, watch and steer canaries; ``/v1/rulesets/{ref}/rollout`` for gateways.

Scopes: reading needs ``read``; starting and every operator action ``admin`` (they change what
judges live traffic). Each view parses, calls one service function and shapes the answer.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from feint.errors import NotFound
from feint.platform.reads import etag_matches
from feint.platform.web import RequestContext, scope
from feint.shadow import repository
from feint.shadow.canary import service
from feint.shadow.canary import store as canary_store
from feint.shadow.canary.schemas import (
    ActionIn,
    FeedbackIn,
    FeedbackList,
    FeedbackOut,
    RolloutIn,
    RolloutList,
    RolloutOut,
)
from feint.shadow.views import _actor, _tenant

router = APIRouter(prefix="/v1", tags=["rollouts"])
LIST_LIMIT_DEFAULT: Final = 100
RolloutId = Path(description="Rollout id.")
Ref = Path(min_length=1, max_length=64, description="Rule set id or name.")


class NoLiveRollout(NotFound):
    slug, title = "no-live-rollout", "No live rollout"

    def __init__(self, *, ruleset: str) -> None:
        super().__init__(f"rule set {ruleset} has no running or paused rollout")


@router.post("/rollouts", status_code=201, summary="Start a canary of a shadow version at the plan's first weight.")
async def start_rollout(body: RolloutIn, ctx: RequestContext = Depends(scope("admin"))) -> RolloutOut:
    row = await service.start(
        ctx.platform.db,
        tenant_id=await _tenant(ctx),
        ref=body.ruleset,
        candidate=body.candidate,
        plan=body.plan(),
        force=body.force,
        reason=body.reason,
        actor=_actor(ctx),
    )
    return RolloutOut.of(row)


@router.get("/rollouts", summary="The tenant's rollouts, newest first.")
async def list_rollouts(
    ruleset: str | None = Query(None, min_length=1, max_length=64),
    limit: int = Query(LIST_LIMIT_DEFAULT, ge=1, le=service.ROLLOUTS_LIST_MAX),
    ctx: RequestContext = Depends(scope("read")),
) -> RolloutList:
    rows = await service.list_rollouts(ctx.platform.db, tenant_id=await _tenant(ctx), ref=ruleset, limit=limit)
    return RolloutList(items=[RolloutOut.of(r) for r in rows])


@router.get("/rollouts/{rollout_id}", summary="One rollout: phase, weight, the last check's guard results.")
async def get_rollout(rollout_id: uuid.UUID = RolloutId, ctx: RequestContext = Depends(scope("read"))) -> RolloutOut:
    return RolloutOut.of(await service.get(ctx.platform.db, tenant_id=await _tenant(ctx), rollout_id=rollout_id))


async def _act(ctx: RequestContext, rollout_id: uuid.UUID, action: str, body: ActionIn) -> RolloutOut:
    row = await service.operate(
        ctx.platform.db,
        tenant_id=await _tenant(ctx),
        rollout_id=rollout_id,
        action=action,
        reason=body.reason,
        actor=_actor(ctx),
    )
    return RolloutOut.of(row)


@router.post("/rollouts/{rollout_id}/pause", summary="Hold the weight where it is until resumed.")
async def pause(
    body: ActionIn, rollout_id: uuid.UUID = RolloutId, ctx: RequestContext = Depends(scope("admin"))
) -> RolloutOut:
    return await _act(ctx, rollout_id, "pause", body)


@router.post("/rollouts/{rollout_id}/resume", summary="Resume checks of a paused rollout.")
async def resume(
    body: ActionIn, rollout_id: uuid.UUID = RolloutId, ctx: RequestContext = Depends(scope("admin"))
) -> RolloutOut:
    return await _act(ctx, rollout_id, "resume", body)


@router.post("/rollouts/{rollout_id}/abort", summary="Weight to 0 now; the candidate is retired.")
async def abort(
    body: ActionIn, rollout_id: uuid.UUID = RolloutId, ctx: RequestContext = Depends(scope("admin"))
) -> RolloutOut:
    return await _act(ctx, rollout_id, "abort", body)


@router.post("/rollouts/{rollout_id}/promote", summary="Promote now, skipping the remaining steps (audited).")
async def promote(
    body: ActionIn, rollout_id: uuid.UUID = RolloutId, ctx: RequestContext = Depends(scope("admin"))
) -> RolloutOut:
    return await _act(ctx, rollout_id, "promote", body)


@router.get(
    "/rulesets/{ref}/rollout",
    response_model=RolloutOut,
    summary="The live rollout of a rule set, for the gateway's split; If-None-Match with its ETag → 304.",
    responses={304: {"description": "Unchanged since the ETag."}, 404: {"description": "No live rollout."}},
)
async def live_rollout(
    request: Request, response: Response, ref: str = Ref, ctx: RequestContext = Depends(scope("read"))
) -> Any:
    tenant_id = await _tenant(ctx)
    async with ctx.platform.db.connection() as conn:
        ruleset = await repository._ruleset(conn, tenant_id=tenant_id, ref=ref)
        row = await canary_store.live_for_ruleset(conn, tenant_id=tenant_id, ruleset_id=ruleset.id)
    if row is None:
        raise NoLiveRollout(ruleset=ruleset.name)
    etag = f'"{row.id}-{row.phase}-{row.weight:g}-{row.updated_at.timestamp():.6f}"'
    headers = {"etag": etag, "cache-control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return RolloutOut.of(row)


@router.post(
    "/feedback",
    status_code=201,
    summary="An analyst's verdict or a customer's appeal on a client: the canary guards' ground truth.",
)
async def give_feedback(body: FeedbackIn, ctx: RequestContext = Depends(scope("write"))) -> FeedbackOut:
    async with ctx.platform.db.connection() as conn:
        row = await canary_store.upsert_feedback(
            conn,
            tenant_id=await _tenant(ctx),
            client_key=body.client_key,
            source=body.source,
            verdict=body.verdict,
            note=body.note,
            actor=_actor(ctx),
        )
    return FeedbackOut(**dataclasses.asdict(row))


@router.get("/feedback", summary="The tenant's feedback on clients, newest first.")
async def list_feedback(
    limit: int = Query(LIST_LIMIT_DEFAULT, ge=1, le=service.ROLLOUTS_LIST_MAX),
    ctx: RequestContext = Depends(scope("read")),
) -> FeedbackList:
    async with ctx.platform.db.connection() as conn:
        rows = await canary_store.list_feedback(conn, tenant_id=await _tenant(ctx), limit=limit)
    return FeedbackList(items=[FeedbackOut(**dataclasses.asdict(r)) for r in rows])
