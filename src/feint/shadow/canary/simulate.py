"""``feint rollout simulate``: a canary replayed on recorded traffic, on simulated time.

Every request of the traffic file goes, in order, through the same steps as live traffic:

1. the gateway's client key, and the split (:func:`feint.shadow.canary.split.judged_by_candidate`)
   at the rollout's current weight;
2. the gateway's decision path (:mod:`feint.camouflage.engine.judge`) with the version the split
   chose: threat level, divert or not, and the time the evaluation took;
3. the decision, with its label, into a :class:`~feint.shadow.canary.windows.MemorySource`.

At each interval boundary of simulated time the controller's own decision (:func:`service.decide`:
guards, then plan) runs on the window since the step began. The simulation ends when the rollout
reaches a final phase or pauses, or the traffic ends. Nothing here re-implements the split, the
guards or the plan.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from feint.shadow.canary import plan as plans
from feint.shadow.canary import service
from feint.shadow.canary.windows import Decision, Label, MemorySource
from feint.shadow.record import RequestRecord

EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the decision path said of one request, and which slice judged it."""

    diverted: bool
    level: int
    canary: bool
    error: bool = False
    latency_us: float = 0.0


# (record, the candidate's current weight in percent) → verdict.
Judge = Callable[[RequestRecord, float], Awaitable[Verdict]]


def _label(value: int | None) -> Label:
    if value is None:
        return None
    return "bot" if value == 1 else "benign"


async def run(
    records: Iterable[RequestRecord],
    *,
    labels: Mapping[str, int],
    plan: plans.Plan,
    judge: Judge,
    rate: float,
) -> dict[str, Any]:
    """Replay ``records`` through a canary of ``plan``; the JSON ``feint rollout simulate`` prints."""
    if rate <= 0:
        raise ValueError("rate must be above 0 requests per second")
    rollout_id = uuid.uuid4()
    source = MemorySource()
    progress = plans.start(plan).after
    step_started: datetime | None = None
    next_check: datetime | None = None
    steps: list[dict[str, Any]] = []
    reasons: list[str] = []
    total = exposed = 0
    first_time: datetime | None = None
    last_time: datetime | None = None
    for index, record in enumerate(records):
        at = _time_of(record, index=index, rate=rate, first=first_time)
        # Logs are written when requests end, so their times are nearly but not quite in order.
        at = at if last_time is None or at >= last_time else last_time
        first_time, last_time = first_time or at, at
        if step_started is None or next_check is None:
            step_started, next_check = at, at + timedelta(seconds=plan.interval_seconds)
        while progress.phase == "running" and at >= next_check:
            transition = await _decide(source, rollout_id, plan, progress, since=step_started, until=next_check)
            steps.append(_step(transition, at=next_check - first_time))
            if transition.event == "advanced":
                step_started = next_check
            progress = transition.after
            reasons = list(transition.reasons)
            next_check = next_check + timedelta(seconds=plan.interval_seconds)
        verdict = await judge(record, progress.weight)
        total += 1
        exposed += verdict.canary
        if progress.phase in ("running", "paused"):
            source.record(
                rollout_id,
                Decision(
                    at=at,
                    canary=verdict.canary,
                    diverted=verdict.diverted,
                    latency_us=verdict.latency_us,
                    error=verdict.error,
                    label=_label(labels.get(record.id)),
                ),
            )
    if progress.phase == "running" and step_started is not None and next_check is not None and first_time:
        # The traffic ended inside a step: one last check on what that step saw.
        transition = await _decide(source, rollout_id, plan, progress, since=step_started, until=next_check)
        steps.append(_step(transition, at=next_check - first_time))
        progress = transition.after
        reasons = list(transition.reasons)
    outcome = {"promoted": "promoted", "rolled_back": "rolled_back"}.get(progress.phase, "paused")
    return {
        "outcome": outcome,
        "exposed_fraction": exposed / total if total else 0.0,
        "requests": total,
        "steps": steps,
        "reasons": reasons,
    }


async def _decide(
    source: MemorySource,
    rollout_id: uuid.UUID,
    plan: plans.Plan,
    progress: plans.Progress,
    *,
    since: datetime,
    until: datetime,
) -> plans.Transition:
    window = await source.window(tenant_id=rollout_id, rollout_id=rollout_id, since=since, until=until)
    return service.decide(plan, progress, window)


def _step(transition: plans.Transition, *, at: timedelta) -> dict[str, Any]:
    before = transition.before
    return {
        "at_seconds": at.total_seconds(),
        "event": transition.event,
        "weight_before": None if before is None else before.weight,
        "weight_after": transition.after.weight,
        "phase": transition.after.phase,
        "results": [
            {k: r.as_dict()[k] for k in ("metric", "outcome", "production", "canary", "test", "p_value", "samples")}
            for r in transition.results
        ],
    }


def _time_of(record: RequestRecord, *, index: int, rate: float, first: datetime | None) -> datetime:
    if record.time is not None:
        return record.time if record.time.tzinfo else record.time.replace(tzinfo=UTC)
    return (first or EPOCH) + timedelta(seconds=index / rate)
