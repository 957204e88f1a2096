"""uvicorn (httptools, uvloop) against granian for the credits service, one worker each, back to back.

    python bench/credits/servers.py [--seconds 8]

Same database, Redis, accounts and load generator; for each server: single transfers at 64 in
flight, balance reads at 64 in flight and /health, with the server's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (this folder, added above)
import run  # noqa: E402

from feint.platform import migrations  # noqa: E402


@contextlib.contextmanager
def server(kind: str, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    port = run.free_port()
    if kind == "uvicorn":
        command = [sys.executable, "-m", "feint", "serve", "credits", "--port", str(port), "--workers", "1"]
    else:
        granian = str(Path(sys.executable).parent / "granian")
        command = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        command += ["--loop", "uvloop", "--http", "1", "--no-ws", "--factory", "granian_app:create"]
        env = {**env, "PYTHONPATH": str(HERE)}
    log = tempfile.NamedTemporaryFile(prefix=f"feint-bench-{kind}-", suffix=".log", delete=False)  # noqa: SIM115 - kept for the error message
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + run.SERVICE_START_SECONDS_MAX
        while True:
            if proc.poll() is not None:
                raise RuntimeError(Path(log.name).read_text()[-2000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        # granian runs the app in a child of its supervisor: measure every process of the tree
        pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        yield base, pids
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def phases(base: str, pids: list[int], *, writer: str, reader: str, ids: list[str], seconds: float) -> str:
    rng = random.Random(2)
    write, read = {"authorization": f"Bearer {writer}"}, {"authorization": f"Bearer {reader}"}

    def transfer(_: int) -> loadgen.Request:
        debit, credit = rng.sample(ids, 2)
        body = orjson.dumps({"debit_account_id": debit, "credit_account_id": credit, "amount": 1})
        return ("POST", "/v1/transfers", body, write)

    def balance(_: int) -> loadgen.Request:
        return ("GET", f"/v1/accounts/{rng.choice(ids)}", b"", read)

    def health(_: int) -> loadgen.Request:
        return ("GET", "/health", b"", {})

    parts = []
    for name, make in (("transfers", transfer), ("reads", balance), ("health", health)):
        cpu = run.cpu_seconds(pids)
        result = await loadgen.run([base], make, concurrency=64, seconds=seconds, warmup=0.0)
        per = (run.cpu_seconds(pids) - cpu) / max(result.count, 1) * 1e6
        parts.append(
            f"{name} {result.rate:,.0f}/s p99 {result.percentile(99) * 1000:.1f} ms, {per:,.0f} µs CPU/request"
        )
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--accounts", type=int, default=1_000)
    args = parser.parse_args()
    with run.postgres() as admin, run.redis_server() as redis_url, run.scratch_database(admin, "feint_srv") as url:
        migrations.migrate(url)
        tenant = f"bench-{secrets.token_hex(3)}"
        writer, reader = run.api_key(url, tenant=tenant, scope="write"), run.api_key(url, tenant=tenant, scope="read")
        operator = run.api_key(url, tenant=None, scope="operator")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
        env.update(
            FEINT_ENV="test",
            FEINT_DATABASE_URL=url,
            FEINT_MASTER_KEY=run.MASTER_KEY,
            FEINT_HOME=tempfile.mkdtemp(prefix="feint-bench-home-"),
            FEINT_LOG_LEVEL="warning",
            FEINT_LOG_FORMAT="json",
            FEINT_REDIS_URL=redis_url,
            FEINT_REDIS_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:6]}:",
            FEINT_RATE_LIMIT_PER_SECOND="10000000",
            FEINT_RATE_LIMIT_BURST="10000000",
            FEINT_DB_POOL_SIZE_MAX="8",
        )
        ids: list[str] = []
        lines: list[tuple[str, str]] = []
        for kind in ("uvicorn", "granian", "uvicorn", "granian"):
            with server(kind, env) as (base, pids):
                if not ids:
                    ids = asyncio.run(
                        run.setup([base], operator=operator, writer=writer, tenant=tenant, accounts=args.accounts)
                    )
                load = run.load_average()
                figures = asyncio.run(phases(base, pids, writer=writer, reader=reader, ids=ids, seconds=args.seconds))
                lines.append((kind, f"(load {load}) {figures}"))
                print(f"{kind}: {lines[-1][1]}", flush=True)


if __name__ == "__main__":
    main()
