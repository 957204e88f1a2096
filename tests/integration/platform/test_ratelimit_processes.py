"""Two real processes sharing one Redis bucket through leases stay within the documented bound."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feint.platform.ratelimit import lease_size

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
ATTEMPTS = 400
BURST = 200
# One process: say ready, wait for the start file, then ATTEMPTS acquires (8 at a time), print allowed and Redis calls.
WORKER = """
import asyncio, os, sys, time
from feint.platform.cache import RedisBackend
from feint.platform.ratelimit import LeasedRateLimiter

async def main(url, prefix, start, attempts, burst):
    redis = RedisBackend(url, prefix=prefix)
    limiter = LeasedRateLimiter(redis)
    await redis.ping()
    print("ready", flush=True)
    while not os.path.exists(start):
        time.sleep(0.005)
    allowed = 0
    for _ in range(attempts // 8):
        decisions = await asyncio.gather(*(limiter.acquire("key:shared", rate=0.001, burst=burst) for _ in range(8)))
        allowed += sum(d.allowed for d in decisions)
        await asyncio.sleep(0.002)  # let the other process interleave
    print(allowed, limiter.lease_calls)
    await limiter.close()
    await redis.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""


def test_two_processes_share_the_limit(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    """Admitted requests across both processes stay within burst + N·L, and Redis sees a fraction of them."""
    start = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, redis_prefix, str(start), str(ATTEMPTS), str(BURST)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    start.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        allowed, calls = (int(x) for x in out.split())
        results.append((allowed, calls))
    total = sum(allowed for allowed, _ in results)
    bound = lease_size(BURST) * len(procs)
    # rate 0.001/s adds no whole token during the test; both processes ask until refused.
    assert BURST - bound <= total <= BURST + bound
    assert all(allowed > 0 for allowed, _ in results), results  # both drew on the shared bucket
    assert sum(calls for _, calls in results) < total  # not one Redis call per request
