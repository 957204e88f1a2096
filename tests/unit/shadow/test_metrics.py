"""Every metric against scikit-learn, on random and degenerate data."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from feint.errors import InvariantViolated
from feint.shadow import metrics

pytestmark = pytest.mark.unit

pairs = st.lists(st.tuples(st.integers(0, 1), st.booleans()), min_size=0, max_size=60)


def _arrays(data: list[tuple[int, bool]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([label for label, _ in data], dtype=np.int8)
    predictions = np.array([flag for _, flag in data], dtype=bool)
    return labels, predictions


def _sklearn(function: object, *args: object, **kwargs: object) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(*args, **kwargs))  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(pairs)
def test_confusion_metrics_match_sklearn(data: list[tuple[int, bool]]) -> None:
    """Defined metrics equal scikit-learn's; undefined ones are None with a reason."""
    labels, predictions = _arrays(data)
    c = metrics.confusion(labels, predictions)
    assert c.total == len(data)
    if not data:
        assert all(v.value is None and v.reason for v in metrics.summary(c).values())
        return
    (tn, fp), (fn, tp) = sk.confusion_matrix(labels, predictions, labels=[0, 1])
    assert (c.tp, c.fp, c.tn, c.fn) == (tp, fp, tn, fn)
    nan = float("nan")
    expected = {
        "precision": _sklearn(sk.precision_score, labels, predictions, zero_division=nan),
        "recall": _sklearn(sk.recall_score, labels, predictions, zero_division=nan),
        "f1": _sklearn(sk.f1_score, labels, predictions, zero_division=nan),
        "accuracy": _sklearn(sk.accuracy_score, labels, predictions),
        "fpr": fp / (fp + tn) if fp + tn else nan,
        "mcc": _sklearn(sk.matthews_corrcoef, labels, predictions),
        "kappa": _sklearn(sk.cohen_kappa_score, labels, predictions),
    }
    for name, value in metrics.summary(c).items():
        if value.value is None:
            assert value.reason
            # scikit-learn answers nan (or, for MCC, 0 by convention) where the metric is undefined
            assert math.isnan(expected[name]) or (name == "mcc" and expected[name] == 0.0)
        else:
            assert value.reason is None
            assert value.value == pytest.approx(expected[name], abs=1e-12), name


@pytest.mark.parametrize(
    ("labels", "predictions", "undefined"),
    [
        ([1, 1, 1], [1, 1, 1], {"fpr", "mcc", "kappa"}),
        ([0, 0, 0], [0, 0, 0], {"precision", "recall", "f1", "mcc", "kappa"}),
        ([0, 0, 1], [0, 0, 0], {"precision", "mcc"}),
        ([0, 1], [1, 1], {"mcc"}),
    ],
)
def test_degenerate_data_is_undefined_not_zero(labels: list[int], predictions: list[int], undefined: set[str]) -> None:
    """Single-class labels or constant predictions give None with reasons, never a silent 0."""
    summary = metrics.summary(metrics.confusion(np.array(labels), np.array(predictions, dtype=bool)))
    assert {name for name, value in summary.items() if value.value is None} == undefined


scored = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=1, max_size=80)


@settings(max_examples=200, deadline=None)
@given(scored)
def test_auc_matches_sklearn(data: list[tuple[int, int]]) -> None:
    """AUC over a score with ties equals roc_auc_score; one class gives None with a reason."""
    labels = np.array([label for label, _ in data])
    scores = np.array([score * 2.5 for _, score in data])
    auc = metrics.auc_roc(labels, scores)
    if len(set(labels.tolist())) < 2:
        assert auc.value is None and auc.reason
        assert metrics.roc_curve(labels, scores) == []
        return
    assert auc.value == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    points = metrics.roc_curve(labels, scores)
    fpr, tpr, _ = sk.roc_curve(labels, scores, drop_intermediate=False)
    assert points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)
    assert {(round(x, 9), round(y, 9)) for x, y in points} == {
        (round(x, 9), round(y, 9)) for x, y in zip(fpr, tpr, strict=True)
    }


def test_roc_curve_is_bounded() -> None:
    """A score with many distinct values still gives at most ROC_POINTS_MAX points."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 5000)
    points = metrics.roc_curve(labels, rng.random(5000))
    assert len(points) <= metrics.ROC_POINTS_MAX
    assert points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)


def test_invariants() -> None:
    """Negative counts and arrays of different lengths are refused."""
    with pytest.raises(InvariantViolated):
        metrics.Confusion(tp=-1, fp=0, tn=0, fn=0)
    with pytest.raises(InvariantViolated):
        metrics.confusion(np.array([1, 0]), np.array([True]))


def test_large_counts_do_not_overflow() -> None:
    """MCC and kappa on ten-million-scale counts stay finite and exact enough."""
    c = metrics.Confusion(tp=4_000_000, fp=10_000, tn=5_900_000, fn=90_000)
    assert 0.97 < (metrics.mcc(c).value or 0) < 1
    assert 0.97 < (metrics.kappa(c).value or 0) < 1
