"""Guard metrics of a canary step: the canary slice against the production slice, with a test.

Each guard compares one metric between the two slices of the same time window and answers
``pass``, ``fail`` or ``inconclusive`` with the numbers behind it:

* ``false_positive_rate``: diverted ÷ requests of clients labeled benign (allow-listed known-good
  clients, analyst verdicts, customer appeals); lower is better.
* ``detection_rate``: diverted ÷ requests of clients labeled bots (decoy engagement, honeytoken
  use); higher is better.
* ``error_rate``: gateway errors ÷ requests; lower is better.
* ``latency_p99``: the 99th percentile of the evaluation latency; lower is better. The threshold
  is a relative increase (0.2 = the canary's p99 may be 20 % above production's).

For the rates the threshold is the largest tolerated degradation in absolute terms (0.005 = half a
percentage point). A guard **fails** only when the degradation exceeds its threshold *and* a
one-sided test says it is not chance (p < ``alpha``): two-proportion z-test when every expected
cell count is at least ``Z_TEST_EXPECTED_MIN``, else Fisher's exact test; Mann-Whitney U for
latencies, reported with its effect size (the probability that a canary sample exceeds a
production sample, 0.5 meaning no effect). A degradation beyond the threshold that is not yet
significant is ``inconclusive``: the step waits for more data instead of passing on noise.

Two rules where other canary analysers are weak:

* **Too little data is never a pass.** A slice with fewer than ``min_samples`` observations of
  the metric's denominator gives ``inconclusive``, naming the slice and both counts; no NaN ever
  reaches a verdict.
* **Zero against nonzero fails.** With ``zero_tolerance`` (the default for ``error_rate``), a
  canary that has errors while a production slice with enough data has none fails at once,
  whatever the canary's sample size: errors that appear only in the canary are the defect a
  canary exists to catch, and a ratio or a test on a zero count hides them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from feint.errors import ValidationFailed

Metric = Literal["false_positive_rate", "detection_rate", "error_rate", "latency_p99"]
METRICS: Final[tuple[Metric, ...]] = get_args(Metric)
Direction = Literal["lower", "higher"]
Outcome = Literal["pass", "fail", "inconclusive"]

DEFAULT_DIRECTION: Final[dict[Metric, Direction]] = {
    "false_positive_rate": "lower",
    "detection_rate": "higher",
    "error_rate": "lower",
    "latency_p99": "lower",
}
ALPHA_DEFAULT: Final = 0.05
Z_TEST_EXPECTED_MIN: Final = 5
SAMPLES_MIN_DEFAULT: Final = 100
LATENCY_SAMPLES_MAX: Final = 50_000
GUARDS_PER_ROLLOUT_MAX: Final = 16


def _scipy_stats() -> Any:
    # scipy.stats costs half a second to import; only the controller's checks need it.
    from scipy import stats

    return stats


@dataclass(frozen=True, slots=True)
class Guard:
    """One guard metric of a rollout: how much worse the canary may be, and what failing means."""

    metric: Metric
    threshold: float
    critical: bool = False
    direction: Direction | None = None  # None: the metric's natural direction
    min_samples: int = SAMPLES_MIN_DEFAULT
    zero_tolerance: bool | None = None  # None: on for error_rate only
    alpha: float = ALPHA_DEFAULT

    def __post_init__(self) -> None:
        problems: list[dict[str, Any]] = []
        if self.metric not in METRICS:
            problems.append({"field": "metric", "problem": f"one of {', '.join(METRICS)}"})
        if not math.isfinite(self.threshold) or self.threshold < 0:
            problems.append({"field": "threshold", "problem": "a finite number >= 0"})
        if self.direction is not None and self.direction not in get_args(Direction):
            problems.append({"field": "direction", "problem": "lower or higher"})
        if self.min_samples < 1:
            problems.append({"field": "min_samples", "problem": "at least 1"})
        if not 0.0 < self.alpha < 1.0:
            problems.append({"field": "alpha", "problem": "between 0 and 1"})
        if problems:
            raise ValidationFailed(f"guard {self.metric!r} is invalid", errors=problems)

    @property
    def better(self) -> Direction:
        return self.direction or DEFAULT_DIRECTION[self.metric]

    @property
    def zero_rule(self) -> bool:
        return self.metric == "error_rate" if self.zero_tolerance is None else self.zero_tolerance


DEFAULT_GUARDS: Final = (
    Guard(metric="false_positive_rate", threshold=0.005, critical=True),
    Guard(metric="detection_rate", threshold=0.05),
    Guard(metric="latency_p99", threshold=0.5),
    Guard(metric="error_rate", threshold=0.001, critical=True),
)


@dataclass(frozen=True, slots=True)
class SliceStats:
    """What one slice (production or canary) saw in a check window."""

    requests: int = 0
    errors: int = 0
    benign: int = 0
    benign_diverted: int = 0
    bots: int = 0
    bots_diverted: int = 0
    latencies_us: tuple[float, ...] = field(default=(), repr=False)

    def counts(self, metric: Metric) -> tuple[int, int]:
        """(hits, denominator) of a rate metric."""
        if metric == "false_positive_rate":
            return self.benign_diverted, self.benign
        if metric == "detection_rate":
            return self.bots_diverted, self.bots
        if metric == "error_rate":
            return self.errors, self.requests
        raise ValueError(f"{metric} is not a rate")


@dataclass(frozen=True, slots=True)
class GuardResult:
    """A guard's verdict with every number behind it (what the audit trail and the API show)."""

    metric: Metric
    outcome: Outcome
    critical: bool
    production: float | None
    canary: float | None
    degradation: float | None  # how much worse the canary is, in the metric's threshold units
    threshold: float
    test: str
    p_value: float | None
    effect_size: float | None
    samples: tuple[int, int]  # (production, canary) denominators
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "outcome": self.outcome,
            "critical": self.critical,
            "production": self.production,
            "canary": self.canary,
            "degradation": self.degradation,
            "threshold": self.threshold,
            "test": self.test,
            "p_value": self.p_value,
            "effect_size": self.effect_size,
            "samples": {"production": self.samples[0], "canary": self.samples[1]},
            "reason": self.reason,
        }


def evaluate(guard: Guard, *, production: SliceStats, canary: SliceStats) -> GuardResult:
    """The verdict of one guard on one window."""
    if guard.metric == "latency_p99":
        return _latency(guard, production.latencies_us, canary.latencies_us)
    p_hits, p_n = production.counts(guard.metric)
    c_hits, c_n = canary.counts(guard.metric)
    return _rate(guard, p_hits=p_hits, p_n=p_n, c_hits=c_hits, c_n=c_n)


def evaluate_all(guards: Sequence[Guard], *, production: SliceStats, canary: SliceStats) -> tuple[GuardResult, ...]:
    return tuple(evaluate(g, production=production, canary=canary) for g in guards)


def _result(
    guard: Guard,
    outcome: Outcome,
    reason: str,
    *,
    values: tuple[float | None, float | None],
    samples: tuple[int, int],
    degradation: float | None = None,
    test: str = "none",
    p_value: float | None = None,
    effect_size: float | None = None,
) -> GuardResult:
    """A guard's verdict: ``values`` and ``samples`` are (production, canary)."""
    return GuardResult(
        metric=guard.metric,
        outcome=outcome,
        critical=guard.critical,
        production=values[0],
        canary=values[1],
        degradation=degradation,
        threshold=guard.threshold,
        test=test,
        p_value=p_value,
        effect_size=effect_size,
        samples=samples,
        reason=reason,
    )


def _rate(guard: Guard, *, p_hits: int, p_n: int, c_hits: int, c_n: int) -> GuardResult:
    p_rate = p_hits / p_n if p_n else None
    c_rate = c_hits / c_n if c_n else None

    def result(outcome: Outcome, reason: str, **extra: Any) -> GuardResult:
        return _result(guard, outcome, reason, values=(p_rate, c_rate), samples=(p_n, c_n), **extra)

    if guard.zero_rule and p_n >= guard.min_samples and p_hits == 0 and c_hits > 0:
        return result(
            "fail",
            f"{c_hits} in the canary against none in {p_n} production requests (zero against nonzero)",
            test="zero-vs-nonzero",
            degradation=c_rate,
        )
    short = [(name, n) for name, n in (("production", p_n), ("canary", c_n)) if n < guard.min_samples]
    if short or p_rate is None or c_rate is None:
        named = ", ".join(f"{name} has {n}" for name, n in short)
        return result("inconclusive", f"too little data: {named}; each slice needs {guard.min_samples}")
    worse = c_rate - p_rate if guard.better == "lower" else p_rate - c_rate
    test, p_value = _rate_test(p_hits=p_hits, p_n=p_n, c_hits=c_hits, c_n=c_n, canary_higher=guard.better == "lower")
    extra = {"degradation": worse, "test": test, "p_value": p_value}
    if worse <= guard.threshold:
        return result("pass", f"canary {_fmt(c_rate)} vs production {_fmt(p_rate)}: within {guard.threshold}", **extra)
    if p_value < guard.alpha:
        return result(
            "fail",
            f"canary {_fmt(c_rate)} vs production {_fmt(p_rate)}: worse by {_fmt(worse)} "
            f"(threshold {guard.threshold}, {test} p={p_value:.3g})",
            **extra,
        )
    return result(
        "inconclusive",
        f"worse by {_fmt(worse)} but not significant ({test} p={p_value:.3g} >= {guard.alpha}); waiting for data",
        **extra,
    )


def _rate_test(*, p_hits: int, p_n: int, c_hits: int, c_n: int, canary_higher: bool) -> tuple[str, float]:
    """One-sided test that the canary's rate is worse: higher (``canary_higher``) or lower."""
    pooled = (p_hits + c_hits) / (p_n + c_n)
    expected = (pooled * p_n, (1 - pooled) * p_n, pooled * c_n, (1 - pooled) * c_n)
    stats = _scipy_stats()
    if min(expected) >= Z_TEST_EXPECTED_MIN:
        se = math.sqrt(pooled * (1 - pooled) * (1 / p_n + 1 / c_n))
        z = (c_hits / c_n - p_hits / p_n) / se
        p = float(stats.norm.sf(z)) if canary_higher else float(stats.norm.cdf(z))
        return "two-proportion-z", p
    table = [[c_hits, c_n - c_hits], [p_hits, p_n - p_hits]]
    _, p = stats.fisher_exact(table, alternative="greater" if canary_higher else "less")
    return "fisher-exact", float(p)


def _latency(guard: Guard, production: Sequence[float], canary: Sequence[float]) -> GuardResult:
    p_n, c_n = len(production), len(canary)
    p99_p = _p99(production)
    p99_c = _p99(canary)

    def result(outcome: Outcome, reason: str, **extra: Any) -> GuardResult:
        return _result(guard, outcome, reason, values=(p99_p, p99_c), samples=(p_n, c_n), **extra)

    short = [(name, n) for name, n in (("production", p_n), ("canary", c_n)) if n < guard.min_samples]
    if short or p99_p is None or p99_c is None:
        named = ", ".join(f"{name} has {n} samples" for name, n in short)
        return result("inconclusive", f"too little data: {named}; each slice needs {guard.min_samples}")
    # Relative increase of p99 (lower is better) or decrease (higher is better); a zero p99 on
    # the reference side compares in absolute microseconds instead of dividing by zero.
    base = p99_p if p99_p > 0 else 1.0
    worse = (p99_c - p99_p) / base if guard.better == "lower" else (p99_p - p99_c) / base
    test = _scipy_stats().mannwhitneyu(
        canary, production, alternative="greater" if guard.better == "lower" else "less", method="asymptotic"
    )
    p_value = float(test.pvalue)
    effect = float(test.statistic) / (p_n * c_n)  # P(canary sample > production sample)
    extra = {"degradation": worse, "test": "mann-whitney-u", "p_value": p_value, "effect_size": effect}
    if worse <= guard.threshold:
        return result("pass", f"p99 {p99_c:.0f} µs vs {p99_p:.0f} µs: within +{guard.threshold:.0%}", **extra)
    if p_value < guard.alpha:
        return result(
            "fail",
            f"p99 {p99_c:.0f} µs vs {p99_p:.0f} µs: +{worse:.0%} (threshold +{guard.threshold:.0%}, "
            f"Mann-Whitney p={p_value:.3g}, effect {effect:.2f})",
            **extra,
        )
    return result("inconclusive", f"p99 +{worse:.0%} but not significant (p={p_value:.3g}); waiting for data", **extra)


def _p99(samples: Sequence[float]) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    # Nearest-rank percentile: a value that was observed, never an interpolation.
    rank = max(1, math.ceil(0.99 * len(ordered)))
    return float(ordered[rank - 1])


def _fmt(value: float) -> str:
    return f"{value:.4f}"
