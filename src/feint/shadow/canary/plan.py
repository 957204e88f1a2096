"""The rollout state machine: a step plan, and what each check's guard results do to it.

    running ──check: all pass──► next step (weight up) ──last step passes──► promoted
       │ ──check: a critical guard fails, or failure_limit failed checks──► rolled_back (weight 0)
       │ ──check: inconclusive inconclusive_limit times in a row──► paused (a human decides)
       ├──pause──► paused ──resume──► running
       └──abort──► aborted (weight 0)          promote (forced, audited) ──► promoted

Steps are traffic weights in percent. A step of 100 is the promotion itself, since at 100 % there
is no production slice left to compare with: the plan 5 → 25 → 50 → 100 checks at 5, 25 and 50,
and promotes when 50 passes. Failed checks count over the whole rollout (a candidate that fails
once at every step is still rolled back). Everything here is pure; the controller stores each
:class:`Transition` and applies the weight.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from feint.errors import Conflict, ValidationFailed
from feint.shadow.canary.guards import DEFAULT_GUARDS, GUARDS_PER_ROLLOUT_MAX, Guard, GuardResult

Phase = Literal["running", "paused", "rolled_back", "promoted", "aborted"]
Event = Literal["started", "advanced", "held", "rolled-back", "paused", "resumed", "aborted", "promoted"]
FINAL_PHASES: Final[frozenset[Phase]] = frozenset({"rolled_back", "promoted", "aborted"})

DEFAULT_STEPS: Final = (5.0, 25.0, 50.0, 100.0)
STEPS_MAX: Final = 20
INTERVAL_SECONDS_MIN: Final = 1.0
INTERVAL_SECONDS_MAX: Final = 86_400.0
FAILURE_LIMIT_DEFAULT: Final = 2
INCONCLUSIVE_LIMIT_DEFAULT: Final = 5


class RolloutStateInvalid(Conflict):
    """An operator action the rollout's phase does not allow."""

    slug, title = "rollout-state-invalid", "Rollout state does not allow this"

    def __init__(self, *, action: str, phase: Phase) -> None:
        super().__init__(f"cannot {action} a rollout that is {phase.replace('_', ' ')}", action=action, phase=phase)
        self.action = action
        self.phase = phase


@dataclass(frozen=True, slots=True)
class Plan:
    """How a rollout proceeds: weights, check interval, guards and the limits on bad checks."""

    steps: tuple[float, ...] = DEFAULT_STEPS
    interval_seconds: float = 60.0
    failure_limit: int = FAILURE_LIMIT_DEFAULT
    inconclusive_limit: int = INCONCLUSIVE_LIMIT_DEFAULT
    guards: tuple[Guard, ...] = DEFAULT_GUARDS

    def __post_init__(self) -> None:
        problems: list[dict[str, Any]] = []
        steps = self.steps
        if not 1 <= len(steps) <= STEPS_MAX:
            problems.append({"field": "steps", "problem": f"between 1 and {STEPS_MAX} weights"})
        elif any(not math.isfinite(s) or not 0 < s <= 100 for s in steps):
            problems.append({"field": "steps", "problem": "each weight above 0 and at most 100 percent"})
        elif any(b <= a for a, b in itertools.pairwise(steps)):
            problems.append({"field": "steps", "problem": "weights must increase"})
        elif steps == (100.0,):
            problems.append({"field": "steps", "problem": "a plan needs a step below 100 percent to check"})
        if not INTERVAL_SECONDS_MIN <= self.interval_seconds <= INTERVAL_SECONDS_MAX:
            problems.append(
                {"field": "interval_seconds", "problem": f"between {INTERVAL_SECONDS_MIN} and {INTERVAL_SECONDS_MAX}"}
            )
        if self.failure_limit < 1:
            problems.append({"field": "failure_limit", "problem": "at least 1"})
        if self.inconclusive_limit < 1:
            problems.append({"field": "inconclusive_limit", "problem": "at least 1"})
        if not 1 <= len(self.guards) <= GUARDS_PER_ROLLOUT_MAX:
            problems.append({"field": "guards", "problem": f"between 1 and {GUARDS_PER_ROLLOUT_MAX} guards"})
        elif len({g.metric for g in self.guards}) != len(self.guards):
            problems.append({"field": "guards", "problem": "one guard per metric"})
        if problems:
            raise ValidationFailed("the rollout plan is invalid", errors=problems)

    @property
    def checked_steps(self) -> tuple[float, ...]:
        """The weights at which checks run (every step below 100 %)."""
        return tuple(s for s in self.steps if s < 100.0)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a rollout stands."""

    phase: Phase
    step: int  # index into Plan.checked_steps
    weight: float  # percent of clients the candidate judges now
    failures: int = 0  # failed checks over the whole rollout
    inconclusive: int = 0  # inconclusive checks in a row
    checks: int = 0
    reasons: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a rollout, with the evidence: what the audit trail records."""

    event: Event
    before: Progress | None
    after: Progress
    reasons: tuple[str, ...]
    results: tuple[GuardResult, ...] = ()


def start(plan: Plan) -> Transition:
    after = Progress(phase="running", step=0, weight=plan.checked_steps[0])
    return Transition(event="started", before=None, after=after, reasons=(f"weight {after.weight:g}%",))


def check(plan: Plan, progress: Progress, results: Sequence[GuardResult]) -> Transition:
    """Apply one check's guard results to a running rollout."""
    if progress.phase != "running":
        raise RolloutStateInvalid(action="check", phase=progress.phase)
    results = tuple(results)
    counted = replace(progress, checks=progress.checks + 1)
    failed = [r for r in results if r.outcome == "fail"]
    critical = [r for r in failed if r.critical]
    if critical:
        reasons = tuple(f"critical guard {r.metric} failed: {r.reason}" for r in critical)
        return _end(progress, "rolled-back", "rolled_back", reasons, results, counted=counted)
    if failed:
        failures = counted.failures + 1
        reasons = tuple(f"guard {r.metric} failed: {r.reason}" for r in failed)
        if failures >= plan.failure_limit:
            limit = f"{failures} failed checks reach the failure limit {plan.failure_limit}"
            counted = replace(counted, failures=failures)
            return _end(progress, "rolled-back", "rolled_back", (*reasons, limit), results, counted=counted)
        held = replace(counted, failures=failures, inconclusive=0, reasons=reasons)
        return Transition(event="held", before=progress, after=held, reasons=reasons, results=results)
    unsure = [r for r in results if r.outcome == "inconclusive"]
    if unsure:
        streak = counted.inconclusive + 1
        reasons = tuple(f"guard {r.metric} inconclusive: {r.reason}" for r in unsure)
        if streak >= plan.inconclusive_limit:
            waiting = (*reasons, f"inconclusive {streak} times in a row: paused for a human (resume or abort)")
            paused = replace(counted, phase="paused", inconclusive=streak, reasons=waiting)
            return Transition(event="paused", before=progress, after=paused, reasons=waiting, results=results)
        held = replace(counted, inconclusive=streak, reasons=reasons)
        return Transition(event="held", before=progress, after=held, reasons=reasons, results=results)
    following = progress.step + 1
    if following < len(plan.checked_steps):
        weight = plan.checked_steps[following]
        reasons = (f"every guard passed at {progress.weight:g}%: weight {weight:g}%",)
        advanced = replace(counted, step=following, weight=weight, inconclusive=0, reasons=reasons)
        return Transition(event="advanced", before=progress, after=advanced, reasons=reasons, results=results)
    reasons = (f"every guard passed at the last step ({progress.weight:g}%): promoted",)
    promoted = replace(counted, phase="promoted", weight=100.0, inconclusive=0, reasons=reasons)
    return Transition(event="promoted", before=progress, after=promoted, reasons=reasons, results=results)


def pause(progress: Progress, *, reason: str) -> Transition:
    if progress.phase != "running":
        raise RolloutStateInvalid(action="pause", phase=progress.phase)
    after = replace(progress, phase="paused", reasons=(reason,))
    return Transition(event="paused", before=progress, after=after, reasons=(reason,))


def resume(progress: Progress, *, reason: str) -> Transition:
    if progress.phase != "paused":
        raise RolloutStateInvalid(action="resume", phase=progress.phase)
    after = replace(progress, phase="running", inconclusive=0, reasons=(reason,))
    return Transition(event="resumed", before=progress, after=after, reasons=(reason,))


def abort(progress: Progress, *, reason: str) -> Transition:
    if progress.phase in FINAL_PHASES:
        raise RolloutStateInvalid(action="abort", phase=progress.phase)
    return _end(progress, "aborted", "aborted", (reason,), ())


def promote(progress: Progress, *, reason: str) -> Transition:
    """Forced promotion by an operator (audited with the reason)."""
    if progress.phase in FINAL_PHASES:
        raise RolloutStateInvalid(action="promote", phase=progress.phase)
    after = replace(progress, phase="promoted", weight=100.0, reasons=(reason,))
    return Transition(event="promoted", before=progress, after=after, reasons=(reason,))


def _end(
    progress: Progress,
    event: Event,
    phase: Phase,
    reasons: tuple[str, ...],
    results: tuple[GuardResult, ...],
    *,
    counted: Progress | None = None,
) -> Transition:
    after = replace(counted or progress, phase=phase, weight=100.0 if phase == "promoted" else 0.0, reasons=reasons)
    return Transition(event=event, before=progress, after=after, reasons=reasons, results=results)


def plan_to_json(p: Plan) -> dict[str, Any]:
    """The plan as stored with the rollout and shown by the API."""
    return {
        "steps": list(p.steps),
        "interval_seconds": p.interval_seconds,
        "failure_limit": p.failure_limit,
        "inconclusive_limit": p.inconclusive_limit,
        "guards": [
            {
                "metric": g.metric,
                "threshold": g.threshold,
                "critical": g.critical,
                "direction": g.better,
                "min_samples": g.min_samples,
                "zero_tolerance": g.zero_rule,
                "alpha": g.alpha,
            }
            for g in p.guards
        ],
    }


def plan_from_json(data: dict[str, Any]) -> Plan:
    """The inverse of :func:`plan_to_json`; raises 422 naming the field on bad input."""
    try:
        guards = tuple(Guard(**g) for g in data.get("guards", [])) or DEFAULT_GUARDS
        return Plan(
            steps=tuple(float(s) for s in data.get("steps", DEFAULT_STEPS)),
            interval_seconds=float(data.get("interval_seconds", 60.0)),
            failure_limit=int(data.get("failure_limit", FAILURE_LIMIT_DEFAULT)),
            inconclusive_limit=int(data.get("inconclusive_limit", INCONCLUSIVE_LIMIT_DEFAULT)),
            guards=guards,
        )
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(
            f"the rollout plan is invalid: {exc}", errors=[{"field": "plan", "problem": str(exc)}]
        ) from exc
