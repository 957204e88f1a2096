"""The canary's pure core: the consistent split, the guards with their tests, the plan's transitions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import fisher_exact, mannwhitneyu
from statsmodels.stats.proportion import proportions_ztest

from feint.errors import ValidationFailed
from feint.shadow.canary import guards, plan, split
from feint.shadow.canary.guards import Guard, SliceStats

pytestmark = pytest.mark.unit


# --- split ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.floats(0, 100), st.floats(0, 100))
def test_split_is_monotone_in_the_weight(key: str, a: float, b: float) -> None:
    """A client in the canary at some weight stays in it at every higher weight (same salt)."""
    low, high = sorted((a, b))
    if split.judged_by_candidate(key, weight_percent=low, salt="r1"):
        assert split.judged_by_candidate(key, weight_percent=high, salt="r1")


def test_split_share_matches_the_weight_and_salt_changes_the_slice() -> None:
    """About weight% of many clients land in the canary; another salt picks other clients."""
    keys = [f"10.0.{i // 256}.{i % 256}|agent-{i}" for i in range(20_000)]
    in_a = {k for k in keys if split.judged_by_candidate(k, weight_percent=5, salt="a")}
    in_b = {k for k in keys if split.judged_by_candidate(k, weight_percent=5, salt="b")}
    assert 0.04 < len(in_a) / len(keys) < 0.06
    assert len(in_a & in_b) < 0.2 * len(in_a)
    assert not any(split.judged_by_candidate(k, weight_percent=0, salt="a") for k in keys[:100])
    assert all(split.judged_by_candidate(k, weight_percent=100, salt="a") for k in keys[:100])


def test_split_rejects_weights_outside_0_to_100() -> None:
    """A weight of 101% or below 0 is an error, not a silent clamp."""
    with pytest.raises(ValueError, match="between 0 and 100"):
        split.judged_by_candidate("k", weight_percent=101, salt="s")
    with pytest.raises(ValueError, match="between 0 and 100"):
        split.buckets_for(-1)


# --- guards ---------------------------------------------------------------------------------


def _fp(benign: int, diverted: int) -> SliceStats:
    return SliceStats(requests=benign, benign=benign, benign_diverted=diverted)


def test_false_positive_far_above_production_fails_with_a_z_test() -> None:
    """500 benign requests with 60 diverted against 2,000 with 2: a significant, critical failure."""
    g = Guard(metric="false_positive_rate", threshold=0.005, critical=True)
    result = guards.evaluate(g, production=_fp(2000, 2), canary=_fp(500, 60))
    assert result.outcome == "fail"
    assert result.test == "two-proportion-z"
    expected = proportions_ztest([60, 2], [500, 2000], alternative="larger")[1]
    assert result.p_value == pytest.approx(expected, rel=1e-6)
    assert result.degradation == pytest.approx(60 / 500 - 2 / 2000)


def test_small_counts_use_fisher_exact() -> None:
    """Expected cells under 5 switch to Fisher's exact test, one-sided in the worse direction."""
    g = Guard(metric="false_positive_rate", threshold=0.0, min_samples=50)
    result = guards.evaluate(g, production=_fp(300, 0), canary=_fp(60, 3))
    assert result.test == "fisher-exact"
    expected = fisher_exact([[3, 57], [0, 300]], alternative="greater")[1]
    assert result.p_value == pytest.approx(expected)
    assert result.outcome == "fail"


def test_too_little_data_is_inconclusive_never_a_pass() -> None:
    """A slice under min_samples is inconclusive and the reason names the slice and its count."""
    g = Guard(metric="false_positive_rate", threshold=0.01, min_samples=100)
    result = guards.evaluate(g, production=_fp(5000, 5), canary=_fp(40, 0))
    assert result.outcome == "inconclusive"
    assert "canary has 40" in result.reason
    empty = guards.evaluate(g, production=SliceStats(), canary=SliceStats())
    assert empty.outcome == "inconclusive"
    assert empty.production is None
    assert empty.canary is None


def test_zero_against_nonzero_errors_fail_whatever_the_canary_sample() -> None:
    """Errors only in the canary fail at once, even with 10 canary requests (Kayenta's blind spot)."""
    g = Guard(metric="error_rate", threshold=0.01)
    production = SliceStats(requests=1000, errors=0)
    canary = SliceStats(requests=10, errors=1)
    result = guards.evaluate(g, production=production, canary=canary)
    assert result.outcome == "fail"
    assert result.test == "zero-vs-nonzero"
    # Without the rule the same data would only be inconclusive (too few canary requests).
    lax = Guard(metric="error_rate", threshold=0.01, zero_tolerance=False)
    assert guards.evaluate(lax, production=production, canary=canary).outcome == "inconclusive"


def test_worse_beyond_threshold_but_not_significant_waits() -> None:
    """A degradation the data cannot yet confirm is inconclusive, not a fail and not a pass."""
    g = Guard(metric="false_positive_rate", threshold=0.001, min_samples=100)
    result = guards.evaluate(g, production=_fp(200, 1), canary=_fp(150, 2))
    assert result.outcome == "inconclusive"
    assert "not significant" in result.reason


def test_detection_rate_is_higher_is_better() -> None:
    """A canary that catches fewer bots fails; one that catches more passes."""
    g = Guard(metric="detection_rate", threshold=0.02)
    prod = SliceStats(bots=1000, bots_diverted=950)
    worse = SliceStats(bots=1000, bots_diverted=700)
    better = SliceStats(bots=1000, bots_diverted=990)
    assert guards.evaluate(g, production=prod, canary=worse).outcome == "fail"
    assert guards.evaluate(g, production=prod, canary=better).outcome == "pass"


def test_latency_uses_mann_whitney_with_effect_size() -> None:
    """A canary twice as slow fails with the Mann-Whitney p-value and CLES of scipy."""
    rng = random.Random(7)
    prod = tuple(rng.gauss(100, 10) for _ in range(400))
    slow = tuple(rng.gauss(200, 20) for _ in range(300))
    g = Guard(metric="latency_p99", threshold=0.2)
    result = guards.evaluate(g, production=SliceStats(latencies_us=prod), canary=SliceStats(latencies_us=slow))
    expected = mannwhitneyu(slow, prod, alternative="greater", method="asymptotic")
    assert result.outcome == "fail"
    assert result.p_value == pytest.approx(float(expected.pvalue))
    assert result.effect_size == pytest.approx(float(expected.statistic) / (400 * 300))
    same = tuple(rng.gauss(100, 10) for _ in range(300))
    ok = guards.evaluate(g, production=SliceStats(latencies_us=prod), canary=SliceStats(latencies_us=same))
    assert ok.outcome == "pass"


def test_guard_validation_names_each_field() -> None:
    """Bad guard settings give one 422 listing every field."""
    with pytest.raises(ValidationFailed) as err:
        Guard(metric="latency_p99", threshold=-1, min_samples=0, alpha=2)
    fields = {e["field"] for e in err.value.errors}
    assert fields == {"threshold", "min_samples", "alpha"}


# --- plan -----------------------------------------------------------------------------------


def _result(metric: guards.Metric, outcome: guards.Outcome, *, critical: bool = False) -> guards.GuardResult:
    return guards.GuardResult(
        metric=metric,
        outcome=outcome,
        critical=critical,
        production=0.0,
        canary=0.0,
        degradation=0.0,
        threshold=0.0,
        test="none",
        p_value=None,
        effect_size=None,
        samples=(0, 0),
        reason=outcome,
    )


def test_a_plan_of_passing_checks_advances_then_promotes() -> None:
    """5 → 25 → 50 → 100: three passing checks advance twice and then promote at 100%."""
    p = plan.Plan()
    t = plan.start(p)
    assert t.after.weight == 5
    weights = []
    for _ in range(3):
        t = plan.check(p, t.after, [_result("error_rate", "pass")])
        weights.append((t.event, t.after.weight))
    assert weights == [("advanced", 25), ("advanced", 50), ("promoted", 100)]
    assert t.after.phase == "promoted"


def test_a_failed_critical_guard_rolls_back_at_once() -> None:
    """One critical failure sets the weight to 0 and names the guard."""
    p = plan.Plan()
    t = plan.check(p, plan.start(p).after, [_result("false_positive_rate", "fail", critical=True)])
    assert (t.event, t.after.phase, t.after.weight) == ("rolled-back", "rolled_back", 0.0)
    assert "false_positive_rate" in t.reasons[0]
    assert t.before is not None
    assert t.before.weight == 5


def test_non_critical_failures_roll_back_at_the_failure_limit() -> None:
    """With failure_limit 2 the first failed check holds, the second rolls back."""
    p = plan.Plan(failure_limit=2)
    first = plan.check(p, plan.start(p).after, [_result("latency_p99", "fail")])
    assert (first.event, first.after.failures, first.after.weight) == ("held", 1, 5)
    second = plan.check(p, first.after, [_result("latency_p99", "fail")])
    assert second.after.phase == "rolled_back"
    assert any("failure limit" in r for r in second.reasons)


def test_inconclusive_checks_pause_for_a_human() -> None:
    """inconclusive_limit inconclusive checks in a row pause the rollout at its weight."""
    p = plan.Plan(inconclusive_limit=3)
    t = plan.start(p)
    for _ in range(3):
        t = plan.check(p, t.after, [_result("false_positive_rate", "inconclusive")])
    assert (t.event, t.after.phase, t.after.weight) == ("paused", "paused", 5)
    resumed = plan.resume(t.after, reason="more traffic expected")
    assert resumed.after.phase == "running"
    assert resumed.after.inconclusive == 0


def test_operator_actions_respect_the_phase() -> None:
    """Abort ends a rollout with weight 0; nothing but a new rollout follows a final phase."""
    p = plan.Plan()
    aborted = plan.abort(plan.start(p).after, reason="wrong candidate")
    assert (aborted.after.phase, aborted.after.weight) == ("aborted", 0.0)
    with pytest.raises(plan.RolloutStateInvalid, match="aborted"):
        plan.resume(aborted.after, reason="x")
    with pytest.raises(plan.RolloutStateInvalid):
        plan.check(p, aborted.after, [])
    forced = plan.promote(plan.start(p).after, reason="incident fix, approved by on-call")
    assert forced.after.phase == "promoted"


def test_plan_validation() -> None:
    """Steps must increase within (0, 100] and include one below 100; guards one per metric."""
    with pytest.raises(ValidationFailed):
        plan.Plan(steps=(25.0, 5.0))
    with pytest.raises(ValidationFailed):
        plan.Plan(steps=(100.0,))
    with pytest.raises(ValidationFailed):
        plan.Plan(guards=(Guard(metric="error_rate", threshold=0), Guard(metric="error_rate", threshold=1)))
    assert plan.Plan(steps=(10.0, 50.0)).checked_steps == (10.0, 50.0)
