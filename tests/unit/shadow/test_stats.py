"""McNemar, chi-square and the bootstrap against statsmodels and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2_contingency
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from feint.errors import InvariantViolated
from feint.shadow import metrics, stats

pytestmark = pytest.mark.unit


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 200))
def test_mcnemar_matches_statsmodels(b: int, c: int) -> None:
    """Exact below 25 discordant pairs, chi-square with continuity correction from 25 on."""
    result = stats.mcnemar(b, c)
    exact = b + c < stats.MCNEMAR_EXACT_BELOW
    expected = sm_mcnemar([[0, b], [c, 0]], exact=exact, correction=True)
    assert result.method == ("exact-binomial" if exact else "chi2-continuity")
    assert result.p_value == pytest.approx(float(expected.pvalue), rel=1e-9, abs=1e-300)
    assert result.statistic == pytest.approx(float(expected.statistic))
    assert (result.reason is not None) == (b + c == 0)


def test_mcnemar_refuses_negative_counts() -> None:
    """Counts below zero are an invariant violation."""
    with pytest.raises(InvariantViolated):
        stats.mcnemar(-1, 3)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_chi2_matches_scipy(tp: int, fp: int, tn: int, fn: int) -> None:
    """Yates-corrected chi-square equals scipy's; an empty row or column gives None."""
    result = stats.chi2_predictions(metrics.Confusion(tp=tp, fp=fp, tn=tn, fn=fn))
    table = np.array([[tp, fn], [fp, tn]])
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        assert result.p_value is None and result.reason
        return
    statistic, p_value, _, _ = chi2_contingency(table, correction=True)
    assert result.p_value == pytest.approx(p_value, rel=1e-9, abs=1e-300)
    assert result.statistic == pytest.approx(statistic)


def _cells(seed: int, n: int, better: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    production = np.where(rng.random(n) < 0.75, labels == 1, labels == 0)
    candidate = np.where(rng.random(n) < 0.75 + better, labels == 1, labels == 0)
    return stats.paired_cells(labels, production, candidate)


def test_paired_cells_and_discordant_pairs() -> None:
    """Cells count label x verdicts; b and c are the requests only one version gets right."""
    labels = np.array([1, 1, 0, 0, 1])
    production = np.array([True, False, True, False, True])
    candidate = np.array([False, True, False, True, True])
    cells = stats.paired_cells(labels, production, candidate)
    assert cells.sum() == 5 and cells[1, 1, 1] == 1
    assert stats.discordant(cells) == (2, 2)
    assert stats.objective_of("f1", cells, 0) == pytest.approx(metrics.f1(metrics.confusion(labels, production)).value)
    assert stats.objective_of("recall", cells, 1) == pytest.approx(2 / 3)


@pytest.mark.parametrize("objective", stats.OBJECTIVES)
def test_objectives_agree_with_the_metrics(objective: stats.Objective) -> None:
    """The bootstrap's vectorised objectives equal the metrics module's on the same cells."""
    cells = _cells(3, 400, 0.1)
    labels = np.repeat([0, 0, 0, 0, 1, 1, 1, 1], cells.reshape(8))
    production = np.repeat([0, 0, 1, 1, 0, 0, 1, 1], cells.reshape(8)).astype(bool)
    expected = metrics.summary(metrics.confusion(labels, production))[objective].value
    assert stats.objective_of(objective, cells, 0) == pytest.approx(expected)


def test_bootstrap_is_reproducible_and_points_the_right_way() -> None:
    """Same seed, same answer; a better candidate gets confidence near 1, a worse near 0."""
    better = _cells(1, 4000, 0.15)
    first = stats.bootstrap(better, seed=5)
    assert first == stats.bootstrap(better, seed=5)
    assert first.confidence is not None and first.confidence > 0.99
    assert first.difference_ci is not None and 0 < first.difference_ci[0] < first.difference_ci[1]
    worse = stats.bootstrap(_cells(1, 4000, -0.15), seed=5)
    assert worse.confidence is not None and worse.confidence < 0.01


def test_bootstrap_of_identical_versions() -> None:
    """Identical verdicts tie in every resample: confidence 0.5 and a zero-width interval."""
    labels = np.array([0, 1] * 50)
    verdicts = labels == 1
    result = stats.bootstrap(stats.paired_cells(labels, verdicts, verdicts), resamples=200)
    assert result.confidence == 0.5
    assert result.difference_ci == (0.0, 0.0)


def test_bootstrap_matches_resampling_rows() -> None:
    """The multinomial shortcut gives the same distribution as resampling requests."""
    rng = np.random.default_rng(11)
    n = 300
    labels = rng.integers(0, 2, n)
    production = rng.random(n) < 0.5
    candidate = np.where(rng.random(n) < 0.8, labels == 1, production)
    cells = stats.paired_cells(labels, production, candidate)
    fast = stats.bootstrap(cells, resamples=4000, seed=2)
    differences = []
    for _ in range(4000):
        pick = rng.integers(0, n, n)
        p = metrics.f1(metrics.confusion(labels[pick], production[pick])).value
        c = metrics.f1(metrics.confusion(labels[pick], candidate[pick])).value
        differences.append((c or 0) - (p or 0))
    assert fast.difference_ci is not None
    assert fast.difference_ci[0] == pytest.approx(np.quantile(differences, 0.025), abs=0.02)
    assert fast.difference_ci[1] == pytest.approx(np.quantile(differences, 0.975), abs=0.02)


def test_bootstrap_without_data_or_with_undefined_objective() -> None:
    """No labeled request: no confidence; an objective undefined everywhere: no interval."""
    empty = stats.bootstrap(np.zeros((2, 2, 2), dtype=np.int64))
    assert empty.confidence is None and empty.reason == "no labeled request"
    benign_only = stats.paired_cells(np.zeros(50, dtype=int), np.zeros(50, dtype=bool), np.zeros(50, dtype=bool))
    undefined = stats.bootstrap(benign_only, objective="precision", resamples=100)
    assert undefined.confidence == 0.5 and undefined.difference_ci is None and undefined.reason
    with pytest.raises(InvariantViolated):
        stats.bootstrap(benign_only, resamples=0)
