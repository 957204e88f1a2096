"""The decision, its reason, the risk level and the checks."""

from __future__ import annotations

import pytest

from feint.errors import InvariantViolated, ValidationFailed
from feint.shadow.decision import Evidence, Thresholds, decide

pytestmark = pytest.mark.unit


def evidence(**changes: object) -> Evidence:
    base: dict[str, object] = {
        "confidence": 0.9,
        "candidate_fpr": 0.001,
        "production_fpr": 0.001,
        "disagreements": 10,
        "rows": 10_000,
        "labeled": 10_000,
        "mcnemar_p": 0.01,
    }
    return Evidence(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "decision", "reason"),
    [
        ({}, "APPROVE_FULL_DEPLOYMENT", "confident-and-within-fpr"),
        ({"confidence": 0.75, "candidate_fpr": 0.01}, "APPROVE_FULL_DEPLOYMENT", "confident-and-within-fpr"),
        ({"candidate_fpr": 0.02}, "APPROVE_CANARY", "fpr-above-limit"),
        ({"candidate_fpr": None}, "APPROVE_CANARY", "fpr-above-limit"),
        ({"confidence": 0.6}, "APPROVE_CANARY", "moderate-confidence"),
        ({"confidence": 0.5}, "APPROVE_CANARY", "moderate-confidence"),
        ({"confidence": 0.49}, "REJECT", "low-confidence"),
        ({"confidence": None}, "REJECT", "confidence-undefined"),
        ({"disagreements": 0, "confidence": 0.5}, "REJECT", "no-change"),
    ],
)
def test_decisions(changes: dict[str, object], decision: str, reason: str) -> None:
    """Each rule of the documented policy, at and around its thresholds."""
    result = decide(evidence(**changes))
    assert (result.decision, result.reason) == (decision, reason)


@pytest.mark.parametrize(
    ("changes", "risk"),
    [
        ({}, "low"),
        ({"candidate_fpr": 0.02}, "high"),
        ({"candidate_fpr": None}, "high"),
        ({"candidate_fpr": 0.0025, "production_fpr": 0.001}, "high"),
        ({"candidate_fpr": 0.0015, "production_fpr": 0.001}, "medium"),
        ({"disagreements": 500}, "medium"),
        ({"labeled": 1_000}, "medium"),
        ({"rows": 0, "labeled": 0, "disagreements": 0}, "medium"),
    ],
)
def test_risk(changes: dict[str, object], risk: str) -> None:
    """High when customers may be blocked, medium on weaker evidence, low otherwise."""
    assert decide(evidence(**changes)).risk == risk


def test_checks_report_values_and_thresholds() -> None:
    """Every check carries its name, verdict, value and threshold."""
    checks = {check.name: check for check in decide(evidence(confidence=0.6, mcnemar_p=0.2)).checks}
    assert set(checks) == {
        "versions-disagree", "confidence-canary", "confidence-full", "candidate-fpr", "labeled-share",
        "mcnemar-significant",
    }  # fmt: skip
    assert checks["confidence-canary"].passed and not checks["confidence-full"].passed
    assert (checks["candidate-fpr"].value, checks["candidate-fpr"].threshold) == (0.001, 0.01)
    assert not checks["mcnemar-significant"].passed
    assert checks["labeled-share"].to_dict()["value"] == 1.0


def test_thresholds_are_configurable_and_validated() -> None:
    """Custom thresholds change the decision; impossible ones are a 422."""
    strict = Thresholds(confidence_full=0.95, fpr_max=0.0005)
    assert decide(evidence(), strict).decision == "APPROVE_CANARY"
    assert strict.to_dict()["fpr_max"] == 0.0005
    for bad in ({"fpr_max": 2.0}, {"confidence_canary": 0.9, "confidence_full": 0.8}, {"objective": "auc"},
                {"resamples": 0}, {"ci_level": 1.0}, {"seed": "x"}):  # fmt: skip
        with pytest.raises(ValidationFailed):
            Thresholds(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvariantViolated):
        decide(evidence(disagreements=-1))
