"""Tests of significance and the bootstrap behind ``confidence``.

Production and candidate judge the same requests, so the comparison is paired:

* **McNemar's test** on the discordant pairs (``b``: only production right, ``c``: only the
  candidate right): exact two-sided binomial when ``b + c < MCNEMAR_EXACT_BELOW``, otherwise
  chi-square with continuity correction, as ``statsmodels.stats.contingency_tables.mcnemar``.
* **Chi-square** of each version's predictions against the labels (2x2, Yates-corrected as
  ``scipy.stats.chi2_contingency``): is the rule related to the labels at all?
* **Bootstrap** of the labeled requests. Every labeled request falls in one of eight cells
  (label x production verdict x candidate verdict); resampling requests with replacement is a
  multinomial draw over those cells, so each resample costs O(1) whatever the dataset's size.

``confidence`` is the bootstrap probability that the candidate is better than production on the
objective (F1 by default): the share of resamples where it is strictly better, plus half the
share where they tie. A resample where the objective is undefined for either version counts as a
tie. The confidence interval of the difference (candidate minus production) is the percentile
interval of the defined resamples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from feint.errors import InvariantViolated
from feint.shadow.metrics import Confusion


def _scipy_stats() -> Any:
    # scipy.stats costs half a second to import; only evaluations need it, not every CLI start.
    from scipy import stats

    return stats


MCNEMAR_EXACT_BELOW: Final = 25
RESAMPLES_MAX: Final = 100_000
# Share of resamples that must have a defined difference for an interval to be reported.
DEFINED_SHARE_MIN: Final = 0.5

Objective = Literal["f1", "mcc", "precision", "recall", "accuracy"]
OBJECTIVES: Final[tuple[Objective, ...]] = ("f1", "mcc", "precision", "recall", "accuracy")


@dataclass(frozen=True, slots=True)
class TestResult:
    """A test's p-value and statistic, or ``None`` with the reason it cannot be computed."""

    p_value: float | None
    statistic: float | None
    method: str
    reason: str | None = None


def mcnemar(b: int, c: int) -> TestResult:
    """McNemar's test on the discordant counts of a paired comparison."""
    if b < 0 or c < 0:
        raise InvariantViolated("discordant counts must not be negative")
    n = b + c
    if n < MCNEMAR_EXACT_BELOW:
        p = min(1.0, 2.0 * float(_scipy_stats().binom.cdf(min(b, c), n, 0.5)))
        reason = "no discordant pairs: the versions agree on every labeled request" if n == 0 else None
        return TestResult(p, float(min(b, c)), "exact-binomial", reason)
    statistic = (abs(b - c) - 1.0) ** 2 / n
    return TestResult(float(_scipy_stats().chi2.sf(statistic, 1)), statistic, "chi2-continuity")


def chi2_predictions(c: Confusion) -> TestResult:
    """Chi-square test of independence between predictions and labels (Yates-corrected)."""
    observed = np.array([[c.tp, c.fn], [c.fp, c.tn]], dtype=float)
    rows, columns = observed.sum(axis=1), observed.sum(axis=0)
    if not (rows.all() and columns.all()):
        return TestResult(None, None, "chi2-yates", "a row or column of the 2x2 table is empty")
    expected = np.outer(rows, columns) / observed.sum()
    difference = expected - observed
    corrected = observed + np.minimum(0.5, np.abs(difference)) * np.sign(difference)
    statistic = float(((corrected - expected) ** 2 / expected).sum())
    return TestResult(float(_scipy_stats().chi2.sf(statistic, 1)), statistic, "chi2-yates")


def paired_cells(
    labels: npt.NDArray[np.integer], production: npt.NDArray[np.bool_], candidate: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    """Counts indexed ``[label, production verdict, candidate verdict]`` of labeled requests."""
    index = (labels.astype(np.int64) * 4) + production.astype(np.int64) * 2 + candidate.astype(np.int64)
    return np.bincount(index, minlength=8).astype(np.int64).reshape(2, 2, 2)


def discordant(cells: npt.NDArray[np.int64]) -> tuple[int, int]:
    """(b, c): requests only production judged right, and only the candidate judged right."""
    b = int(cells[1, 1, 0] + cells[0, 0, 1])  # attack caught by production only; benign flagged by candidate only
    c = int(cells[1, 0, 1] + cells[0, 1, 0])
    return b, c


Floats = npt.NDArray[np.float64]


def _objective(name: Objective, tp: Floats, fp: Floats, tn: Floats, fn: Floats) -> Floats:
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "f1":
            value = 2 * tp / (2 * tp + fp + fn)
        elif name == "precision":
            value = tp / (tp + fp)
        elif name == "recall":
            value = tp / (tp + fn)
        elif name == "accuracy":
            value = (tp + tn) / (tp + fp + tn + fn)
        else:
            value = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.asarray(value, dtype=np.float64)


def objective_of(name: Objective, cells: npt.NDArray[np.int64], version: int) -> float | None:
    """The objective of one version (0 production, 1 candidate) on the cells; None if undefined."""
    value = _version_objective(name, cells.reshape(1, 2, 2, 2).astype(float), version)[0]
    return None if np.isnan(value) else float(value)


def _version_objective(name: Objective, samples: Floats, version: int) -> Floats:
    # samples: (B, label, production, candidate); sum out the other version's verdict.
    verdicts = samples.sum(axis=3) if version == 0 else samples.sum(axis=2)
    tp, fn = verdicts[:, 1, 1], verdicts[:, 1, 0]
    fp, tn = verdicts[:, 0, 1], verdicts[:, 0, 0]
    return _objective(name, tp, fp, tn, fn)


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Confidence that the candidate is better, and the interval of the difference."""

    confidence: float | None
    difference_ci: tuple[float, float] | None
    resamples: int
    reason: str | None = None


def bootstrap(
    cells: npt.NDArray[np.int64],
    *,
    objective: Objective = "f1",
    resamples: int = 2_000,
    level: float = 0.95,
    seed: int = 0,
) -> Bootstrap:
    """Resample the labeled requests; see the module docstring for the definitions."""
    if not 0 < resamples <= RESAMPLES_MAX:
        raise InvariantViolated(f"resamples must lie in 1..{RESAMPLES_MAX}")
    total = int(cells.sum())
    if total == 0:
        return Bootstrap(None, None, resamples, "no labeled request")
    generator = np.random.default_rng(seed)
    draws = generator.multinomial(total, cells.reshape(8) / total, size=resamples).astype(float)
    samples = draws.reshape(resamples, 2, 2, 2)
    difference = _version_objective(objective, samples, 1) - _version_objective(objective, samples, 0)
    defined = difference[~np.isnan(difference)]
    better = np.count_nonzero(defined > 0) + 0.5 * (np.count_nonzero(defined == 0) + (resamples - len(defined)))
    confidence = float(better / resamples)
    if len(defined) < DEFINED_SHARE_MIN * resamples:
        return Bootstrap(confidence, None, resamples, f"{objective} undefined in most resamples")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail])
    return Bootstrap(confidence, (float(low), float(high)), resamples)
