"""Rollouts: start a canary of a version, check it each interval, and act on what the guards say.

Each change runs in one transaction that holds the rule set's row lock: the rollout row, the
version's state (shadow → canary at the start; canary → production on promotion; canary →
retired on rollback or abort) and the rule history (an ``event = 'canary'`` row whose
``details`` carry the rollout, the weight before and after, and every guard result). So the
history tells who, when, why and on what numbers, and a crash never leaves a half-applied step.

Where the guard data comes from is a :class:`WindowSource`: the gateway's decision log in a
live deployment, an in-memory replay in ``feint rollout simulate``. Both feed the same
:func:`apply_check`, so the simulator runs the controller's own code.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

import structlog
from prometheus_client import Counter, Gauge

from feint.errors import Conflict, NotFound, ValidationFailed
from feint.platform.db import Conn, Database
from feint.shadow import repository
from feint.shadow import store as shadow_store
from feint.shadow.canary import plan as plans
from feint.shadow.canary import store
from feint.shadow.canary.guards import GuardResult, SliceStats, evaluate_all

log = structlog.get_logger(component="feint.shadow.canary")

APPROVING_DECISIONS: Final = ("APPROVE_CANARY", "APPROVE_FULL_DEPLOYMENT")
REASON_LENGTH_MAX: Final = 2_000
CHECKS_PER_TICK_MAX: Final = 50
ROLLOUTS_LIST_MAX: Final = 500

WEIGHT = Gauge("feint_canary_weight_percent", "Share of clients a canary candidate judges.", ["tenant", "ruleset"])
CHECKS = Counter("feint_canary_checks_total", "Canary checks by event.", ["event"])
GUARD_RESULTS = Counter(
    "feint_canary_guard_results_total", "Guard results by metric and outcome.", ["metric", "outcome"]
)
ROLLBACKS = Counter("feint_canary_rollbacks_total", "Rollouts rolled back automatically.")


class RolloutNotFound(NotFound):
    slug, title = "rollout-not-found", "Rollout not found"

    def __init__(self, *, rollout_id: uuid.UUID) -> None:
        super().__init__(f"no rollout {rollout_id}")


class CandidateNotEvaluated(Conflict):
    """A candidate without an approving offline evaluation; ``force`` (audited) overrides."""

    slug, title = "candidate-not-evaluated", "Candidate has not passed an offline evaluation"

    def __init__(self, *, ruleset: str, version: int) -> None:
        super().__init__(
            f"{ruleset}@{version} has no succeeded evaluation approving it (APPROVE_CANARY or "
            "APPROVE_FULL_DEPLOYMENT); evaluate it first, or start with force and a reason",
            ruleset=ruleset,
            version=version,
        )


@dataclass(frozen=True, slots=True)
class Window:
    """The two slices of one rollout over one time window."""

    production: SliceStats
    canary: SliceStats


class WindowSource(Protocol):
    """Where guard data comes from: the gateway's decision log, or a replay."""

    async def window(
        self, *, tenant_id: uuid.UUID, rollout_id: uuid.UUID, since: datetime, until: datetime
    ) -> Window: ...


def _reason(reason: str) -> str:
    text = reason.strip()
    if not text:
        raise ValidationFailed("a reason is required", errors=[{"field": "reason", "problem": "not empty"}])
    if len(text) > REASON_LENGTH_MAX:
        raise ValidationFailed("reason too long", errors=[{"field": "reason", "problem": f"<= {REASON_LENGTH_MAX}"}])
    return text


def progress_of(row: store.RolloutRow) -> plans.Progress:
    if row.phase not in ("running", "paused", "rolled_back", "promoted", "aborted"):  # pragma: no cover - CHECK
        raise ValueError(f"rollout {row.id} has unknown phase {row.phase!r}")
    return plans.Progress(
        phase=row.phase,  # type: ignore[arg-type]
        step=row.step,
        weight=row.weight,
        failures=row.failures,
        inconclusive=row.inconclusive,
        checks=row.checks,
        reasons=tuple(row.reasons),
    )


async def _approving_evaluation(conn: Conn, *, tenant_id: uuid.UUID, content_hash: str) -> uuid.UUID | None:
    cur = await conn.execute(
        b"""SELECT id FROM shadow_evaluations
            WHERE tenant_id = %s AND status = 'succeeded'
              AND inputs -> 'candidate' ->> 'content_hash' = %s AND report ->> 'decision' = ANY(%s)
            ORDER BY finished_at DESC LIMIT 1""",
        (tenant_id, content_hash, list(APPROVING_DECISIONS)),
    )
    row = await cur.fetchone()
    return None if row is None else row["id"]


async def start(
    db: Database,
    *,
    tenant_id: uuid.UUID,
    ref: str,
    candidate: int,
    plan: plans.Plan,
    force: bool,
    reason: str,
    actor: str,
) -> store.RolloutRow:
    """Put ``candidate`` (a shadow version) in canary at the plan's first weight."""
    reason = _reason(reason)
    async with db.transaction() as conn:
        ruleset = await repository._ruleset(conn, tenant_id=tenant_id, ref=ref, lock=True)
        version = await repository._version(conn, tenant_id=tenant_id, ruleset=ruleset, number=candidate)
        evaluation = await _approving_evaluation(conn, tenant_id=tenant_id, content_hash=version.content_hash)
        if evaluation is None and not force:
            raise CandidateNotEvaluated(ruleset=ruleset.name, version=candidate)
        changes = repository.plan_transition(
            number=candidate, current=repository._state(version), to="canary", production=ruleset.production
        )
        await repository._apply(
            conn, tenant_id=tenant_id, ruleset_id=ruleset.id, changes=changes, actor=actor, reason=reason
        )
        begun = plans.start(plan)
        rollout_id = uuid.uuid4()
        notes = [*begun.reasons, *(["forced: no approving offline evaluation"] if evaluation is None else [])]
        row = await store.insert(
            conn,
            tenant_id=tenant_id,
            rollout_id=rollout_id,
            ruleset_id=ruleset.id,
            ruleset_name=ruleset.name,
            candidate=candidate,
            baseline=ruleset.production,
            plan=plans.plan_to_json(plan),
            weight=begun.after.weight,
            forced=evaluation is None,
            evaluation_id=evaluation,
            interval_seconds=plan.interval_seconds,
            started_by=actor,
            reasons=notes,
        )
        await _history(conn, tenant_id=tenant_id, row=row, transition=begun, actor=actor, reason=reason)
    WEIGHT.labels(str(tenant_id), str(ruleset.id)).set(row.weight)
    log.info("canary_started", ruleset=ruleset.name, candidate=candidate, weight=row.weight, forced=row.forced)
    return row


async def _history(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    row: store.RolloutRow,
    transition: plans.Transition,
    actor: str,
    reason: str,
) -> None:
    details: dict[str, Any] = {
        "rollout_id": str(row.id),
        "event": transition.event,
        "phase": transition.after.phase,
        "weight_before": None if transition.before is None else transition.before.weight,
        "weight_after": transition.after.weight,
        "failures": transition.after.failures,
        "checks": transition.after.checks,
        "reasons": list(transition.reasons),
        "results": [r.as_dict() for r in transition.results],
    }
    await shadow_store.insert_history(
        conn,
        tenant_id=tenant_id,
        ruleset_id=row.ruleset_id,
        event="canary",
        number=row.candidate,
        from_state="canary",
        to_state="canary",
        actor=actor,
        reason=f"{transition.event}: {reason}",
        details=details,
    )


async def _apply_transition(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    row: store.RolloutRow,
    plan: plans.Plan,
    transition: plans.Transition,
    actor: str,
    reason: str,
) -> store.RolloutRow:
    """Store a transition: the rollout, the version's state when it ends, and the history."""
    after = transition.after
    final = after.phase in plans.FINAL_PHASES
    if final:
        ruleset = await repository._ruleset(conn, tenant_id=tenant_id, ref=str(row.ruleset_id), lock=True)
        version = await repository._version(conn, tenant_id=tenant_id, ruleset=ruleset, number=row.candidate)
        to: repository.State = "production" if after.phase == "promoted" else "retired"
        changes = repository.plan_transition(
            number=row.candidate, current=repository._state(version), to=to, production=ruleset.production
        )
        await repository._apply(
            conn, tenant_id=tenant_id, ruleset_id=row.ruleset_id, changes=changes, actor=actor, reason=reason
        )
    updated = await store.update(
        conn,
        tenant_id=tenant_id,
        rollout_id=row.id,
        phase=after.phase,
        step=after.step,
        weight=after.weight,
        failures=after.failures,
        inconclusive=after.inconclusive,
        checks=after.checks,
        reasons=list(after.reasons),
        last_results=[r.as_dict() for r in transition.results] or row.last_results,
        new_step=transition.event in ("advanced", "resumed"),
        interval_seconds=plan.interval_seconds,
        final=final,
    )
    await _history(conn, tenant_id=tenant_id, row=updated, transition=transition, actor=actor, reason=reason)
    return updated


async def get(db: Database, *, tenant_id: uuid.UUID, rollout_id: uuid.UUID) -> store.RolloutRow:
    async with db.connection() as conn:
        row = await store.get(conn, tenant_id=tenant_id, rollout_id=rollout_id)
    if row is None:
        raise RolloutNotFound(rollout_id=rollout_id)
    return row


async def list_rollouts(db: Database, *, tenant_id: uuid.UUID, ref: str | None, limit: int) -> list[store.RolloutRow]:
    async with db.connection() as conn:
        ruleset_id = None
        if ref is not None:
            ruleset_id = (await repository._ruleset(conn, tenant_id=tenant_id, ref=ref)).id
        return await store.list_for_tenant(
            conn, tenant_id=tenant_id, ruleset_id=ruleset_id, limit=min(limit, ROLLOUTS_LIST_MAX)
        )


async def operate(
    db: Database, *, tenant_id: uuid.UUID, rollout_id: uuid.UUID, action: str, reason: str, actor: str
) -> store.RolloutRow:
    """An operator's pause, resume, abort or (forced) promote, audited with the reason."""
    reason = _reason(reason)
    actions = {"pause": plans.pause, "resume": plans.resume, "abort": plans.abort, "promote": plans.promote}
    if action not in actions:
        raise ValidationFailed(
            f"unknown action {action!r}", errors=[{"field": "action", "problem": str(sorted(actions))}]
        )
    async with db.transaction() as conn:
        row = await store.get(conn, tenant_id=tenant_id, rollout_id=rollout_id, lock=True)
        if row is None:
            raise RolloutNotFound(rollout_id=rollout_id)
        plan = plans.plan_from_json(row.plan)
        transition = actions[action](progress_of(row), reason=reason)
        updated = await _apply_transition(
            conn, tenant_id=tenant_id, row=row, plan=plan, transition=transition, actor=actor, reason=reason
        )
    _observe(tenant_id, updated, transition)
    log.warning("canary_operator_action", rollout=str(rollout_id), action=action, actor=actor, phase=updated.phase)
    return updated


def decide(plan: plans.Plan, progress: plans.Progress, window: Window) -> plans.Transition:
    """The controller's decision for one check: the guards on the window, then the plan (pure)."""
    results = evaluate_all(plan.guards, production=window.production, canary=window.canary)
    return plans.check(plan, progress, results)


async def check_due(
    db: Database, *, source: WindowSource, now: datetime, limit: int = CHECKS_PER_TICK_MAX
) -> list[store.RolloutRow]:
    """Check every running rollout whose interval has passed (each once, across replicas)."""
    checked: list[store.RolloutRow] = []
    async with db.transaction() as conn:
        for tenant_id, rollout_id in await store.claim_due(conn, limit=limit):
            row = await store.get(conn, tenant_id=tenant_id, rollout_id=rollout_id, lock=True)
            if row is None or row.phase != "running":  # pragma: no cover - claimed under the same lock
                continue
            plan = plans.plan_from_json(row.plan)
            window = await source.window(
                tenant_id=tenant_id, rollout_id=rollout_id, since=row.step_started_at, until=now
            )
            transition = decide(plan, progress_of(row), window)
            updated = await _apply_transition(
                conn,
                tenant_id=tenant_id,
                row=row,
                plan=plan,
                transition=transition,
                actor="feint:canary-controller",
                reason="; ".join(transition.reasons) or transition.event,
            )
            _observe(tenant_id, updated, transition)
            checked.append(updated)
    return checked


def _observe(tenant_id: uuid.UUID, row: store.RolloutRow, transition: plans.Transition) -> None:
    CHECKS.labels(transition.event).inc()
    for result in transition.results:
        GUARD_RESULTS.labels(result.metric, result.outcome).inc()
    if transition.event == "rolled-back":
        ROLLBACKS.inc()
        log.error("canary_rolled_back", rollout=str(row.id), reasons=list(transition.reasons))
    WEIGHT.labels(str(tenant_id), str(row.ruleset_id)).set(row.weight)


__all__ = ["GuardResult", "Window", "WindowSource", "check_due", "decide", "get", "operate", "start"]
