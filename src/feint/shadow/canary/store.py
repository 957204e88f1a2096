"""The SQL of canary rollouts: the only module that touches ``shadow_rollouts``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from feint.errors import Conflict, InvariantViolated
from feint.platform.db import Conn

ROLLOUT_COLUMNS = (
    "id, ruleset_id, candidate, baseline, plan, phase, step, weight, failures, inconclusive, checks, reasons, "
    "last_results, forced, evaluation_id, step_started_at, next_check_at, started_by, created_at, updated_at, "
    "finished_at"
)


class RolloutAlreadyLive(Conflict):
    slug, title = "rollout-already-live", "A rollout of this rule set is already live"

    def __init__(self, *, ruleset: str) -> None:
        super().__init__(f"rule set {ruleset} already has a running or paused rollout; abort it first", ruleset=ruleset)


@dataclass(frozen=True, slots=True)
class RolloutRow:
    id: uuid.UUID
    ruleset_id: uuid.UUID
    candidate: int
    baseline: int | None
    plan: dict[str, Any]
    phase: str
    step: int
    weight: float
    failures: int
    inconclusive: int
    checks: int
    reasons: list[str]
    last_results: list[dict[str, Any]]
    forced: bool
    evaluation_id: uuid.UUID | None
    step_started_at: datetime
    next_check_at: datetime
    started_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class LiveRollout:
    """What a gateway needs to split traffic: one per rule set at most."""

    tenant_id: uuid.UUID
    id: uuid.UUID
    ruleset_id: uuid.UUID
    candidate: int
    weight: float
    phase: str


async def _one(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any]) -> dict[str, Any] | None:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchone()


async def _all(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any]) -> list[dict[str, Any]]:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchall()


async def insert(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    rollout_id: uuid.UUID,
    ruleset_id: uuid.UUID,
    ruleset_name: str,
    candidate: int,
    baseline: int | None,
    plan: dict[str, Any],
    weight: float,
    forced: bool,
    evaluation_id: uuid.UUID | None,
    interval_seconds: float,
    started_by: str,
    reasons: list[str],
) -> RolloutRow:
    try:
        row = await _one(
            conn,
            f"""INSERT INTO shadow_rollouts (tenant_id, id, ruleset_id, candidate, baseline, plan, phase, step, weight,
                                             forced, evaluation_id, next_check_at, started_by, reasons)
                VALUES (%s, %s, %s, %s, %s, %s, 'running', 0, %s, %s, %s,
                        now() + make_interval(secs => %s), %s, %s)
                RETURNING {ROLLOUT_COLUMNS}""",
            (
                tenant_id,
                rollout_id,
                ruleset_id,
                candidate,
                baseline,
                Jsonb(plan),
                weight,
                forced,
                evaluation_id,
                interval_seconds,
                started_by,
                Jsonb(reasons),
            ),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise RolloutAlreadyLive(ruleset=ruleset_name) from exc
    if row is None:  # pragma: no cover - INSERT … RETURNING always returns the row
        raise InvariantViolated("rollout insert returned nothing")
    return RolloutRow(**row)


async def get(conn: Conn, *, tenant_id: uuid.UUID, rollout_id: uuid.UUID, lock: bool = False) -> RolloutRow | None:
    row = await _one(
        conn,
        f"""SELECT {ROLLOUT_COLUMNS} FROM shadow_rollouts WHERE tenant_id = %s AND id = %s
            {"FOR UPDATE" if lock else ""}""",
        (tenant_id, rollout_id),
    )
    return RolloutRow(**row) if row else None


async def list_for_tenant(
    conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID | None, limit: int
) -> list[RolloutRow]:
    rows = await _all(
        conn,
        f"""SELECT {ROLLOUT_COLUMNS} FROM shadow_rollouts
            WHERE tenant_id = %s AND (%s::uuid IS NULL OR ruleset_id = %s)
            ORDER BY created_at DESC LIMIT %s""",
        (tenant_id, ruleset_id, ruleset_id, limit),
    )
    return [RolloutRow(**row) for row in rows]


async def live_for_ruleset(conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID) -> RolloutRow | None:
    row = await _one(
        conn,
        f"""SELECT {ROLLOUT_COLUMNS} FROM shadow_rollouts
            WHERE tenant_id = %s AND ruleset_id = %s AND phase IN ('running', 'paused')""",
        (tenant_id, ruleset_id),
    )
    return RolloutRow(**row) if row else None


async def all_live(conn: Conn, *, limit: int) -> list[LiveRollout]:
    """Every running or paused rollout of every tenant (what gateway replicas poll)."""
    rows = await _all(
        conn,
        """SELECT tenant_id, id, ruleset_id, candidate, weight, phase FROM shadow_rollouts
           WHERE phase IN ('running', 'paused') ORDER BY tenant_id, ruleset_id LIMIT %s""",
        (limit,),
    )
    return [LiveRollout(**row) for row in rows]


async def claim_due(conn: Conn, *, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(tenant, rollout) of running rollouts whose check is due, locked and skipped by other replicas."""
    rows = await _all(
        conn,
        """SELECT tenant_id, id FROM shadow_rollouts
           WHERE phase = 'running' AND next_check_at <= now()
           ORDER BY next_check_at LIMIT %s FOR UPDATE SKIP LOCKED""",
        (limit,),
    )
    return [(row["tenant_id"], row["id"]) for row in rows]


async def update(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    rollout_id: uuid.UUID,
    phase: str,
    step: int,
    weight: float,
    failures: int,
    inconclusive: int,
    checks: int,
    reasons: list[str],
    last_results: list[dict[str, Any]],
    new_step: bool,
    interval_seconds: float,
    final: bool,
) -> RolloutRow:
    row = await _one(
        conn,
        f"""UPDATE shadow_rollouts SET phase = %s, step = %s, weight = %s, failures = %s, inconclusive = %s,
                   checks = %s, reasons = %s, last_results = %s, updated_at = now(),
                   step_started_at = CASE WHEN %s THEN now() ELSE step_started_at END,
                   next_check_at = now() + make_interval(secs => %s),
                   finished_at = CASE WHEN %s THEN now() ELSE NULL END
            WHERE tenant_id = %s AND id = %s
            RETURNING {ROLLOUT_COLUMNS}""",
        (
            phase,
            step,
            weight,
            failures,
            inconclusive,
            checks,
            Jsonb(reasons),
            Jsonb(last_results),
            new_step,
            interval_seconds,
            final,
            tenant_id,
            rollout_id,
        ),
    )
    if row is None:
        raise InvariantViolated(f"rollout {rollout_id} vanished under its lock")
    return RolloutRow(**row)


# --- feedback (ground truth of the guards) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    client_key: str
    source: str
    verdict: str
    note: str
    created_by: str
    created_at: datetime


async def upsert_feedback(
    conn: Conn, *, tenant_id: uuid.UUID, client_key: str, source: str, verdict: str, note: str, actor: str
) -> FeedbackRow:
    row = await _one(
        conn,
        """INSERT INTO shadow_feedback (tenant_id, client_key, source, verdict, note, created_by)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (tenant_id, client_key, source)
           DO UPDATE SET verdict = excluded.verdict, note = excluded.note, created_by = excluded.created_by,
                         created_at = now()
           RETURNING client_key, source, verdict, note, created_by, created_at""",
        (tenant_id, client_key, source, verdict, note, actor),
    )
    if row is None:  # pragma: no cover - INSERT … RETURNING always returns the row
        raise InvariantViolated("feedback upsert returned nothing")
    return FeedbackRow(**row)


async def list_feedback(conn: Conn, *, tenant_id: uuid.UUID, limit: int) -> list[FeedbackRow]:
    rows = await _all(
        conn,
        """SELECT client_key, source, verdict, note, created_by, created_at FROM shadow_feedback
           WHERE tenant_id = %s ORDER BY created_at DESC LIMIT %s""",
        (tenant_id, limit),
    )
    return [FeedbackRow(**row) for row in rows]
