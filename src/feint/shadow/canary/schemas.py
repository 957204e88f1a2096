"""Input and output models of ``/v1/rollouts``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feint.shadow.canary import plan as plans
from feint.shadow.canary.guards import DEFAULT_GUARDS, GUARDS_PER_ROLLOUT_MAX, SAMPLES_MIN_DEFAULT, Guard, Metric
from feint.shadow.canary.service import REASON_LENGTH_MAX
from feint.shadow.canary.store import RolloutRow


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GuardIn(_In):
    metric: Metric
    threshold: float = Field(
        ge=0, allow_inf_nan=False, description="Largest tolerated degradation: rate points, or p99 ratio increase."
    )
    critical: bool = Field(False, description="One failure rolls back at once.")
    direction: Literal["lower", "higher"] | None = Field(None, description="Which way is better; default per metric.")
    min_samples: int = Field(SAMPLES_MIN_DEFAULT, ge=1, le=10_000_000, description="Per slice; fewer: inconclusive.")
    zero_tolerance: bool | None = Field(None, description="Nonzero in the canary vs zero in production fails.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the one-sided test.")

    def to_domain(self) -> Guard:
        return Guard(**self.model_dump())


class RolloutIn(_In):
    ruleset: str = Field(min_length=1, max_length=64, description="Rule set id or name.")
    candidate: int = Field(ge=1, le=2**31 - 1, description="The version to roll out (state shadow).")
    steps: list[float] = Field(
        default_factory=lambda: list(plans.DEFAULT_STEPS), min_length=1, max_length=plans.STEPS_MAX
    )
    interval_seconds: float = Field(60.0, ge=plans.INTERVAL_SECONDS_MIN, le=plans.INTERVAL_SECONDS_MAX)
    failure_limit: int = Field(plans.FAILURE_LIMIT_DEFAULT, ge=1, le=1_000)
    inconclusive_limit: int = Field(plans.INCONCLUSIVE_LIMIT_DEFAULT, ge=1, le=1_000)
    guards: list[GuardIn] | None = Field(
        None,
        max_length=GUARDS_PER_ROLLOUT_MAX,
        description="Default: false-positive rate and error rate (critical), detection rate, evaluation latency p99.",
    )
    force: bool = Field(False, description="Start without an approving offline evaluation (audited).")
    reason: str = Field(min_length=1, max_length=REASON_LENGTH_MAX)

    def plan(self) -> plans.Plan:
        guards = tuple(g.to_domain() for g in self.guards) if self.guards else DEFAULT_GUARDS
        return plans.Plan(
            steps=tuple(self.steps),
            interval_seconds=self.interval_seconds,
            failure_limit=self.failure_limit,
            inconclusive_limit=self.inconclusive_limit,
            guards=guards,
        )


class ActionIn(_In):
    reason: str = Field(min_length=1, max_length=REASON_LENGTH_MAX)


class RolloutOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    ruleset_id: uuid.UUID
    candidate: int
    baseline: int | None = Field(description="The production version when the rollout started.")
    phase: Literal["running", "paused", "rolled_back", "promoted", "aborted"]
    weight_percent: float
    step: int
    failures: int
    inconclusive: int
    checks: int
    reasons: list[str]
    last_results: list[dict[str, Any]] = Field(description="The guard results of the last check.")
    plan: dict[str, Any]
    forced: bool
    evaluation_id: uuid.UUID | None
    step_started_at: datetime
    next_check_at: datetime
    started_by: str
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: RolloutRow) -> RolloutOut:
        return cls(
            id=row.id,
            ruleset_id=row.ruleset_id,
            candidate=row.candidate,
            baseline=row.baseline,
            phase=row.phase,
            weight_percent=row.weight,
            step=row.step,
            failures=row.failures,
            inconclusive=row.inconclusive,
            checks=row.checks,
            reasons=row.reasons,
            last_results=row.last_results,
            plan=row.plan,
            forced=row.forced,
            evaluation_id=row.evaluation_id,
            step_started_at=row.step_started_at,
            next_check_at=row.next_check_at,
            started_by=row.started_by,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )


class RolloutList(BaseModel):
    items: list[RolloutOut]


class FeedbackIn(_In):
    client_key: str = Field(pattern=r"^[0-9a-f]{32}$", description="The gateway's client key (decision log).")
    verdict: Literal["benign", "bot"]
    source: Literal["analyst", "appeal"] = Field(
        "analyst", description="Known-good clients go on the gateway's allow-list (camouflage API) instead."
    )
    note: str = Field("", max_length=REASON_LENGTH_MAX)


class FeedbackOut(BaseModel):
    client_key: str
    source: str
    verdict: str
    note: str
    created_by: str
    created_at: datetime


class FeedbackList(BaseModel):
    items: list[FeedbackOut]
