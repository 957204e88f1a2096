"""Run the test tiers one after another under coverage, print the time of each, enforce the floor.

    python tests/run_tiers.py                  # every tier, then the coverage report (floor 90%)
    python tests/run_tiers.py integration      # some tiers only (coverage still measured)
    python tests/run_tiers.py --no-coverage-floor integration

A tier whose prerequisites are missing skips its tests with the reason (``-ra`` lists them);
under ``FEINT_REQUIRE_EXTERNAL=1`` / ``FEINT_REQUIRE_CORPUS=1`` (CI) such a skip fails instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIERS = ("unit", "integration", "e2e", "external", "corpus")
NO_TESTS_COLLECTED = 5


def main(argv: list[str]) -> int:
    floor = "--no-coverage-floor" not in argv
    chosen = [a for a in argv if not a.startswith("--")] or list(TIERS)
    unknown = sorted(set(chosen) - set(TIERS))
    if unknown:
        print(f"unknown tier(s): {', '.join(unknown)}; tiers are {', '.join(TIERS)}", file=sys.stderr)
        return 2
    python = sys.executable
    env = dict(os.environ)
    for stale in REPO.glob(".coverage*"):
        stale.unlink()
    results: list[tuple[str, int, float]] = []
    for tier in chosen:
        started = time.perf_counter()
        print(f"\n=== tier {tier} ===", flush=True)
        code = subprocess.call(
            [python, "-m", "coverage", "run", "-m", "pytest", "-m", tier, "-p", "no:cacheprovider"],
            cwd=REPO,
            env=env,
        )
        results.append((tier, code, time.perf_counter() - started))
    subprocess.call([python, "-m", "coverage", "combine", "-q"], cwd=REPO)
    print("\n=== coverage of src/ ===", flush=True)
    report = [python, "-m", "coverage", "report"]
    if not floor:
        report.append("--fail-under=0")
    coverage_code = subprocess.call(report, cwd=REPO)
    print("\n=== time per tier ===")
    failed = False
    for tier, code, seconds in results:
        state = "ok" if code in (0, NO_TESTS_COLLECTED) else f"FAILED (exit {code})"
        failed |= code not in (0, NO_TESTS_COLLECTED)
        print(f"{tier:<12} {seconds:8.1f} s  {state}")
    if coverage_code != 0:
        print("coverage is below the floor" if floor else "coverage report failed")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
