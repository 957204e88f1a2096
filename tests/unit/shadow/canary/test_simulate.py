"""The simulator's loop: split, judge, windows and the controller's decision on simulated time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from feint.shadow.canary import plan as plans
from feint.shadow.canary.guards import Guard
from feint.shadow.canary.simulate import Verdict, run
from feint.shadow.canary.split import judged_by_candidate
from feint.shadow.record import RequestRecord

pytestmark = pytest.mark.unit

FP_ONLY = (Guard(metric="false_positive_rate", threshold=0.01, critical=True, min_samples=50),)


def _traffic(n: int, *, clients: int = 2_000) -> Iterator[RequestRecord]:
    """n requests from many clients; every tenth is an attack (`union select` in the query)."""
    for i in range(n):
        attack = i % 10 == 0
        yield RequestRecord(
            id=f"log:{i}",
            c_ip=f"10.{i % clients // 256}.{i % 256}.1",
            cs_method="GET",
            cs_uri_stem="/search",
            cs_uri_query="q=1 union select password" if attack else f"q=coffee{i}",
            cs_user_agent="Mozilla/5.0",
        )


def _labels(n: int) -> dict[str, int]:
    return {f"log:{i}": int(i % 10 == 0) for i in range(n)}


def _split(record: RequestRecord, weight: float) -> bool:
    return judged_by_candidate(f"{record.c_ip}|{record.cs_user_agent}", weight_percent=weight, salt="test")


def _judge_with(candidate_flags_everything: bool):  # type: ignore[no-untyped-def]
    async def judge(record: RequestRecord, weight: float) -> Verdict:
        candidate = _split(record, weight)
        attack = "union select" in (record.cs_uri_query or "")
        flagged = attack or (candidate and candidate_flags_everything)
        return Verdict(diverted=flagged, level=9 if flagged else 0, canary=candidate)

    return judge


async def test_a_candidate_that_flags_benign_traffic_is_rolled_back_at_the_first_step() -> None:
    """Flagging every request: rolled back at the first check, exposure under the first step's weight."""
    n = 60_000
    plan = plans.Plan(steps=(5.0, 25.0, 50.0, 100.0), interval_seconds=60, guards=FP_ONLY)
    result = await run(_traffic(n), labels=_labels(n), plan=plan, judge=_judge_with(True), rate=100)
    assert result["outcome"] == "rolled_back"
    assert result["steps"][0]["event"] == "rolled-back"
    assert result["steps"][0]["weight_before"] == 5.0
    assert 0 < result["exposed_fraction"] <= 0.05
    assert any("false_positive_rate" in reason for reason in result["reasons"])


async def test_an_equal_or_better_candidate_is_promoted_through_every_step() -> None:
    """A candidate as good as production passes each check and is promoted."""
    n = 60_000
    plan = plans.Plan(steps=(5.0, 25.0, 50.0, 100.0), interval_seconds=60, guards=FP_ONLY)
    result = await run(_traffic(n), labels=_labels(n), plan=plan, judge=_judge_with(False), rate=100)
    assert result["outcome"] == "promoted"
    assert [s["event"] for s in result["steps"]] == ["advanced", "advanced", "promoted"]
    assert 0.1 < result["exposed_fraction"] < 1.0


async def test_a_candidate_with_too_little_data_pauses() -> None:
    """Without labels every check is inconclusive; at the limit the simulation reports paused."""
    n = 20_000
    plan = plans.Plan(steps=(5.0, 50.0), interval_seconds=30, inconclusive_limit=3, guards=FP_ONLY)
    result = await run(_traffic(n), labels={}, plan=plan, judge=_judge_with(False), rate=100)
    assert result["outcome"] == "paused"
    assert [s["event"] for s in result["steps"]] == ["held", "held", "paused"]
    assert any("too little data" in reason for reason in result["reasons"])


async def test_a_failing_evaluation_counts_as_a_gateway_error() -> None:
    """Errors in the canary slice only (none in production): zero-vs-nonzero fails the rollout."""
    n = 20_000

    async def judge(record: RequestRecord, weight: float) -> Verdict:
        candidate = _split(record, weight)
        broken = candidate and record.id.endswith("7")
        return Verdict(diverted=False, level=0, canary=candidate, error=broken)

    plan = plans.Plan(
        steps=(10.0, 50.0), interval_seconds=60, guards=(Guard(metric="error_rate", threshold=0.0, critical=True),)
    )
    result = await run(_traffic(n), labels=_labels(n), plan=plan, judge=judge, rate=100)
    assert result["outcome"] == "rolled_back"
    [step] = result["steps"]
    assert step["results"][0]["test"] == "zero-vs-nonzero"
