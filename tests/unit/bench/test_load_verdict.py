"""`make load`'s verdict (bench/load/load.py): the achieved rate is the requests counted in the
measured window divided by the window's own length, over every locust process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "bench" / "load" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module
    spec.loader.exec_module(module)
    return module


load = _load()
MIX = {"GatewayVisitor": 27, "GatewayBot": 3, "Meter": 15, "RuleWatcher": 5}  # 50 users: 47 offer a request/s


def window(
    *, opens: float = 1000.0, seconds: float = 15.0, stopped: float | None = None, users: dict[str, int] | None = None,
    **endpoints: tuple[int, int, list[float]],
) -> dict[str, Any]:  # fmt: skip
    """One locust process's window file (locustfile.Window.save)."""
    return {
        "opens": opens, "closes": opens + seconds, "stopped": opens + seconds + 2 if stopped is None else stopped,
        "users": MIX if users is None else users,
        "endpoints": {
            name.replace("_", " "): {"requests": r, "failures": f, "ms": ms} for name, (r, f, ms) in endpoints.items()
        },
    }  # fmt: skip


def test_achieved_is_the_windows_count_over_the_windows_length() -> None:
    # 47 users for a 15 s window: 705 requests. Locust's own Requests/s after --reset-stats divides
    # by (last request - reset) instead, which the run's timing moves either way; here only the
    # count and the window's length count.
    measured = load.merge([window(gateway_benign=(405, 0, [3.0] * 405), credits_balance=(300, 0, [4.0] * 300))])
    assert measured.seconds == 15.0
    assert measured.rate("gateway benign") == 27.0
    achieved, p95, failures = load.served(measured)
    assert achieved == pytest.approx(47.0)
    assert (p95, failures) == (4.0, 0)
    assert measured.offered == 47.0  # the bots' users offer nothing the target counts
    assert load.sustainable(measured, p95_ms=50)


def test_a_shortfall_below_95_percent_of_the_offered_rate_is_not_sustained() -> None:
    # The first runs' case: 31.2/s of 47/s offered is a shortfall, whatever the latency.
    measured = load.merge([window(gateway_benign=(468, 0, [3.0] * 468))])
    assert load.served(measured)[0] == pytest.approx(31.2)
    assert not load.sustainable(measured, p95_ms=50)
    enough = load.merge([window(gateway_benign=(670, 0, [3.0] * 670))])  # 44.7/s >= 0.95 * 47
    assert load.sustainable(enough, p95_ms=50)


def test_the_processes_windows_add_up() -> None:
    half = {name: count // 2 for name, count in MIX.items()}
    first = window(users=half, gateway_benign=(150, 0, [1.0] * 150))
    second = window(opens=1000.4, users=half, gateway_benign=(150, 1, [9.0] * 150))
    measured = load.merge([first, second])
    assert measured.rate("gateway benign") == 20.0
    assert measured.endpoints["gateway benign"].failures == 1
    assert measured.endpoints["gateway benign"].percentile(0.5) == 1.0
    assert measured.endpoints["gateway benign"].percentile(0.95) == 9.0
    assert measured.offered == sum(half.values()) * 2 - half["GatewayBot"] * 2
    with pytest.raises(ValueError, match="differ in length"):
        load.merge([first, window(seconds=10.0)])
    with pytest.raises(ValueError, match="no locust process"):
        load.merge([])


def test_bots_count_in_failures_but_not_in_rate_or_latency() -> None:
    held = [30_000.0] * 30  # a decoy holds a bot on purpose
    measured = load.merge([window(gateway_benign=(705, 0, [3.0] * 705), gateway_bot=(30, 0, held))])
    assert load.served(measured) == (pytest.approx(47.0), 3.0, 0)
    assert load.sustainable(measured, p95_ms=50)
    failed_bot = load.merge([window(gateway_benign=(705, 0, [3.0] * 705), gateway_bot=(30, 1, held))])
    assert not load.sustainable(failed_bot, p95_ms=50)


def test_a_run_that_stopped_before_the_window_closed_is_not_sustained() -> None:
    measured = load.merge([window(stopped=1010.0, gateway_benign=(705, 0, [3.0] * 705))])
    assert not measured.covered
    assert not load.sustainable(measured, p95_ms=50)


def test_p95_over_the_limit_on_one_endpoint_is_not_sustained() -> None:
    ms = [3.0] * 90 + [80.0] * 10
    measured = load.merge([window(gateway_benign=(605, 0, [3.0] * 605), credits_transfer=(100, 0, ms))])
    assert load.served(measured)[1] == 80.0
    assert not load.sustainable(measured, p95_ms=50)


def test_percentile_is_nearest_rank() -> None:
    endpoint = load.Endpoint(requests=100, failures=0, ms=tuple(float(i) for i in range(1, 101)))
    assert endpoint.percentile(0.5) == 50.0
    assert endpoint.percentile(0.95) == 95.0
    assert endpoint.percentile(0.99) == 99.0
    assert load.Endpoint(0, 0, ()).percentile(0.95) == 0.0


def test_window_cpu_is_read_between_the_samples_around_the_window() -> None:
    samples = [
        load.Sample(at=999.5, cpu={("credits", 1): 10.0}, machine=(100.0, 200.0)),
        load.Sample(at=1000.5, cpu={("credits", 1): 10.5}, machine=(100.5, 202.0)),
        load.Sample(at=1015.5, cpu={("credits", 1): 18.5, ("credits", 2): 1.6}, machine=(104.5, 234.0)),
        load.Sample(at=1016.0, cpu={("credits", 1): 30.0}, machine=(200.0, 300.0)),
    ]
    cores, busy = load.window_cpu(samples, 1000.0, 1015.0)
    assert cores == {"credits": pytest.approx((8.5 + 1.6) / 16)}
    assert busy == pytest.approx(1 - 4.5 / 34)
