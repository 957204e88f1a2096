"""Classification metrics from a confusion matrix, and AUC-ROC over a score.

Pure functions over counts. A metric that is undefined for the data (a division by zero, a single
class) is a :class:`Value` whose ``value`` is ``None`` and whose ``reason`` says why: a report
never shows a silent 0 where the honest answer is "cannot be computed". Counts are Python
integers, so products such as MCC's denominator do not overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from feint.errors import InvariantViolated

ROC_POINTS_MAX: Final = 256

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.integer]


@dataclass(frozen=True, slots=True)
class Confusion:
    """Counts of a binary classifier against labels (1 = bot/attack is the positive class)."""

    tp: int
    fp: int
    tn: int
    fn: int

    def __post_init__(self) -> None:
        if min(self.tp, self.fp, self.tn, self.fn) < 0:
            raise InvariantViolated("confusion counts must not be negative")

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


@dataclass(frozen=True, slots=True)
class Value:
    """A metric's value, or ``None`` with the reason it is undefined."""

    value: float | None
    reason: str | None = None


def _ratio(numerator: int, denominator: int, reason: str) -> Value:
    if denominator == 0:
        return Value(None, reason)
    return Value(numerator / denominator)


def precision(c: Confusion) -> Value:
    """TP / (TP + FP)."""
    return _ratio(c.tp, c.tp + c.fp, "no request was flagged (TP + FP = 0)")


def recall(c: Confusion) -> Value:
    """TP / (TP + FN), the true-positive rate."""
    return _ratio(c.tp, c.tp + c.fn, "no labeled attack (TP + FN = 0)")


def f1(c: Confusion) -> Value:
    """2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, "no attack labeled or flagged (2TP + FP + FN = 0)")


def fpr(c: Confusion) -> Value:
    """FP / (FP + TN): the share of benign requests flagged."""
    return _ratio(c.fp, c.fp + c.tn, "no labeled benign request (FP + TN = 0)")


def accuracy(c: Confusion) -> Value:
    """(TP + TN) / all."""
    return _ratio(c.tp + c.tn, c.total, "no labeled request")


def mcc(c: Confusion) -> Value:
    """Matthews correlation coefficient; undefined when a row or column of the matrix is empty."""
    product = (c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn)
    if product == 0:
        return Value(None, "a marginal of the confusion matrix is zero (single class or constant prediction)")
    return Value((c.tp * c.tn - c.fp * c.fn) / math.sqrt(product))


def kappa(c: Confusion) -> Value:
    """Cohen's kappa between predictions and labels; undefined when chance agreement is 1."""
    n = c.total
    if n == 0:
        return Value(None, "no labeled request")
    chance = (c.tp + c.fp) * (c.tp + c.fn) + (c.fn + c.tn) * (c.fp + c.tn)
    if chance == n * n:
        return Value(None, "chance agreement is 1 (labels and predictions are one constant class)")
    observed = (c.tp + c.tn) * n
    return Value((observed - chance) / (n * n - chance))


def summary(c: Confusion) -> dict[str, Value]:
    """Every confusion-matrix metric of the report, by name."""
    return {
        "precision": precision(c),
        "recall": recall(c),
        "f1": f1(c),
        "fpr": fpr(c),
        "accuracy": accuracy(c),
        "mcc": mcc(c),
        "kappa": kappa(c),
    }


def confusion(labels: IntArray, predictions: BoolArray) -> Confusion:
    """The confusion matrix of boolean predictions against 0/1 labels (arrays of one length)."""
    if labels.shape != predictions.shape:
        raise InvariantViolated("labels and predictions differ in length")
    positive = labels == 1
    flagged = predictions.astype(bool)
    tp = int(np.count_nonzero(positive & flagged))
    fp = int(np.count_nonzero(~positive & flagged))
    fn = int(np.count_nonzero(positive & ~flagged))
    return Confusion(tp=tp, fp=fp, tn=len(labels) - tp - fp - fn, fn=fn)


@dataclass(frozen=True, slots=True)
class ScoreCounts:
    """Per distinct score (ascending), how many attacks and benign requests have it."""

    positive: npt.NDArray[np.float64]
    negative: npt.NDArray[np.float64]


def score_counts(labels: IntArray, scores: npt.NDArray[np.number]) -> ScoreCounts:
    """The counts AUC and the ROC curve are computed from (one sort, shared by both)."""
    distinct, inverse = np.unique(scores, return_inverse=True)
    positive = np.bincount(inverse, weights=(labels == 1), minlength=len(distinct))
    negative = np.bincount(inverse, weights=(labels != 1), minlength=len(distinct))
    return ScoreCounts(positive.astype(np.float64), negative.astype(np.float64))


def auc_roc(labels: IntArray, scores: npt.NDArray[np.number], counts: ScoreCounts | None = None) -> Value:
    """Area under the ROC curve of ``scores`` (ties count half): P(score_attack > score_benign)."""
    positives = int(np.count_nonzero(labels == 1))
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return Value(None, "AUC needs labeled attacks and labeled benign requests")
    counts = counts or score_counts(labels, scores)
    positive, negative = counts.positive, counts.negative
    below = np.cumsum(negative) - negative  # benign requests scored strictly lower
    area = float(np.sum(positive * (below + negative / 2.0)))
    return Value(area / (positives * negatives))


def roc_curve(
    labels: IntArray, scores: npt.NDArray[np.number], counts: ScoreCounts | None = None
) -> list[tuple[float, float]]:
    """ROC points (FPR, TPR) from the strictest threshold to the loosest, at most ``ROC_POINTS_MAX``."""
    positives = int(np.count_nonzero(labels == 1))
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return []
    counts = counts or score_counts(labels, scores)
    positive, negative = counts.positive, counts.negative
    tpr = np.concatenate(([0.0], np.cumsum(positive[::-1]) / positives))
    fpr_ = np.concatenate(([0.0], np.cumsum(negative[::-1]) / negatives))
    if len(tpr) > ROC_POINTS_MAX:
        keep = np.unique(np.linspace(0, len(tpr) - 1, ROC_POINTS_MAX).round().astype(int))
        tpr, fpr_ = tpr[keep], fpr_[keep]
    return [(float(x), float(y)) for x, y in zip(fpr_, tpr, strict=True)]
