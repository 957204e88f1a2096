"""From the evaluation's numbers to a decision, a risk level and the checks behind them.

Decision (first rule that applies):

1. ``REJECT`` (``no-change``) when the versions never disagree on any request of the dataset;
2. ``REJECT`` (``confidence-undefined``) when there is no confidence (no labeled request);
3. ``APPROVE_FULL_DEPLOYMENT`` when confidence >= ``confidence_full`` and the candidate's FPR is
   defined and <= ``fpr_max``;
4. ``APPROVE_CANARY`` when confidence >= ``confidence_canary`` (reason ``fpr-above-limit`` when
   only the FPR stood between it and full deployment);
5. ``REJECT`` (``low-confidence``) otherwise.

Risk, the cost of being wrong about the candidate for the customers it might block:

* ``high``: the candidate's FPR is undefined or above ``fpr_max``, or it exceeds production's
  by more than ``fpr_increase_max``;
* ``medium``: the candidate's FPR is above production's at all, the versions disagree on more
  than ``disagreement_max`` of the traffic, or fewer than ``labeled_share_min`` of the requests
  are labeled (the numbers rest on a small part of the traffic);
* ``low`` otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from feint.errors import InvariantViolated, ValidationFailed
from feint.shadow.stats import OBJECTIVES, RESAMPLES_MAX, Objective

Verdict = Literal["APPROVE_FULL_DEPLOYMENT", "APPROVE_CANARY", "REJECT"]
Risk = Literal["low", "medium", "high"]
SIGNIFICANCE_LEVEL: Final = 0.05


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every number the decision depends on; the defaults are the documented policy."""

    confidence_full: float = 0.75
    confidence_canary: float = 0.50
    fpr_max: float = 0.01
    fpr_increase_max: float = 0.001
    disagreement_max: float = 0.01
    labeled_share_min: float = 0.5
    objective: Objective = "f1"
    resamples: int = 2_000
    ci_level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        shares = (
            self.confidence_full,
            self.confidence_canary,
            self.fpr_max,
            self.fpr_increase_max,
            self.disagreement_max,
            self.labeled_share_min,
        )
        problems: list[str] = []
        if not all(isinstance(share, (int, float)) and 0.0 <= share <= 1.0 for share in shares):
            problems.append("confidence, rate and share thresholds must lie in [0, 1]")
        elif self.confidence_canary > self.confidence_full:
            problems.append("the canary confidence must not exceed the full-deployment one")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective must be one of {', '.join(OBJECTIVES)}")
        if not isinstance(self.resamples, int) or not 0 < self.resamples <= RESAMPLES_MAX:
            problems.append(f"resamples must lie in 1..{RESAMPLES_MAX}")
        if not isinstance(self.ci_level, float) or not 0.0 < self.ci_level < 1.0:
            problems.append("ci_level must lie in (0, 1)")
        if not isinstance(self.seed, int):
            problems.append("seed must be an integer")
        if problems:
            raise ValidationFailed(
                "invalid evaluation thresholds", errors=[{"field": "thresholds", "problem": p} for p in problems]
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Check:
    """One named condition, its value, its threshold and whether it passed."""

    name: str
    passed: bool
    value: float | int | None
    threshold: float | int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Verdict
    reason: str
    risk: Risk
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class Evidence:
    """The numbers a decision is made from."""

    confidence: float | None
    candidate_fpr: float | None
    production_fpr: float | None
    disagreements: int
    rows: int
    labeled: int
    mcnemar_p: float | None


def _checks(evidence: Evidence, t: Thresholds) -> tuple[Check, ...]:
    confidence, fpr = evidence.confidence, evidence.candidate_fpr
    share = evidence.labeled / evidence.rows if evidence.rows else 0.0
    return (
        Check("versions-disagree", evidence.disagreements > 0, evidence.disagreements, 1,
              "requests on which production and candidate disagree"),
        Check("confidence-canary", confidence is not None and confidence >= t.confidence_canary,
              confidence, t.confidence_canary, f"P(candidate better on {t.objective}) for a canary"),
        Check("confidence-full", confidence is not None and confidence >= t.confidence_full,
              confidence, t.confidence_full, f"P(candidate better on {t.objective}) for full deployment"),
        Check("candidate-fpr", fpr is not None and fpr <= t.fpr_max, fpr, t.fpr_max,
              "share of labeled benign requests the candidate flags"),
        Check("labeled-share", share >= t.labeled_share_min, share, t.labeled_share_min,
              "share of the dataset's requests that carry a label"),
        Check("mcnemar-significant",
              evidence.mcnemar_p is not None and evidence.mcnemar_p < SIGNIFICANCE_LEVEL,
              evidence.mcnemar_p, SIGNIFICANCE_LEVEL, "McNemar p-value of the paired comparison"),
    )  # fmt: skip


def _risk(evidence: Evidence, t: Thresholds) -> Risk:
    fpr, before = evidence.candidate_fpr, evidence.production_fpr
    if fpr is None or fpr > t.fpr_max or (before is not None and fpr - before > t.fpr_increase_max):
        return "high"
    disagreement = evidence.disagreements / evidence.rows if evidence.rows else 0.0
    share = evidence.labeled / evidence.rows if evidence.rows else 0.0
    if (before is not None and fpr > before) or disagreement > t.disagreement_max:
        return "medium"
    return "medium" if share < t.labeled_share_min else "low"


def decide(evidence: Evidence, thresholds: Thresholds = Thresholds()) -> Decision:
    """The decision, its reason, the risk and the checks (see the module docstring)."""
    if evidence.disagreements < 0 or evidence.labeled > evidence.rows:
        raise InvariantViolated("disagreements must be >= 0 and labeled <= rows")
    checks = _checks(evidence, thresholds)
    risk = _risk(evidence, thresholds)
    confidence, fpr = evidence.confidence, evidence.candidate_fpr
    verdict: Verdict
    if evidence.disagreements == 0:
        verdict, reason = "REJECT", "no-change"
    elif confidence is None:
        verdict, reason = "REJECT", "confidence-undefined"
    elif confidence >= thresholds.confidence_full and fpr is not None and fpr <= thresholds.fpr_max:
        verdict, reason = "APPROVE_FULL_DEPLOYMENT", "confident-and-within-fpr"
    elif confidence >= thresholds.confidence_canary:
        full = confidence >= thresholds.confidence_full
        verdict, reason = "APPROVE_CANARY", "fpr-above-limit" if full else "moderate-confidence"
    else:
        verdict, reason = "REJECT", "low-confidence"
    return Decision(verdict, reason, risk, checks)
