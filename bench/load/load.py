"""`make load`: the platform under a realistic mix, with locust, on this machine.

Starts credits and shadow (``--workers`` processes each, default one: on 2 cores shared with
locust, PostgreSQL and Redis a second worker added no capacity; above one needs
``FEINT_REDIS_URL``), camouflage with its gateway (one process: its decoy sessions live there)
and the demo shop the gateway protects, as processes of their own on a
fresh database (``FEINT_DATABASE_URL`` as a superuser URL, else the embedded PostgreSQL), makes a
tenant with funded accounts, then:

0. **baseline**: locust against a static endpoint (`baseline.py`) at ``--rate``: the harness's own
   achieved rate, latency and CPU, the floor under every figure that follows;
1. **search**: offered rates from ``--start`` up by ``--step`` for ``--probe-seconds`` each, until a
   step is not sustained (a failure, a p95 above ``--p95-ms`` on an endpoint but the bots', or
   less than 95% of the offered rate achieved), then ``--refine`` halvings of the gap; the highest
   sustained rate is printed;
2. **soak**: ``--rate`` (default 1,000 requests/s) for ``--seconds`` (default 300).

Every figure comes from the requests that complete inside a measured window that opens once
every user runs (locustfile.py's ``Window``): the achieved rate is their count divided by the
window's length. Each step also prints the cores each process used during the window (services,
locust, the machine's PostgreSQL and Redis) and how busy the whole machine was. Writes locust's
CSV and HTML report under ``--out``. The load generator shares the machine's cores with the
services; the figures say so.

    .venv/bin/python bench/load/load.py [--rate 1000] [--seconds 300] [--out load-report]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
MASTER_KEY = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="  # base64 of 32 × "B": a bench-only key
START_SECONDS_MAX = 60
ACCOUNTS = 50
GRANT = 10**12
SETTLE_SECONDS = 2  # after every user runs, before the window opens: each user's first task is past


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def locust_binary() -> Path:
    """Locust lives in its own virtualenv (`make load` builds it): its pins are not the platform's."""
    found = REPO / ".venv-load" / "bin" / "locust"
    if not found.exists():
        sys.exit(f"{found} is missing: run `make load`, which installs bench/load/requirements.txt there")
    return found


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh database on the configured server (dropped after), or on an embedded PostgreSQL."""
    configured = os.environ.get("FEINT_DATABASE_URL")
    home: Path | None = None
    server = None
    if configured:
        admin = configured
    else:
        sys.path.insert(0, str(REPO / "src"))
        from feint.platform import embedded

        home = Path(tempfile.mkdtemp(prefix="feint-load-pg-"))
        server = embedded.start(home)
        admin = server.url
    name = f"feint_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = (
        str(httpx.URL(admin).copy_with(path=f"/{name}"))
        if "?host=" not in admin
        else admin.replace("/postgres?", f"/{name}?", 1)
    )
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.stop()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def services(url: str, home: Path, *, workers: int) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """The services and the demo shop as processes of their own; the environment locust needs and
    each process's pid (credits and shadow with ``workers`` processes each, camouflage one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    env.update(
        FEINT_DATABASE_URL=url,
        FEINT_MASTER_KEY=MASTER_KEY,
        FEINT_HOME=str(home),
        FEINT_LOG_LEVEL="warning",
        FEINT_LOG_FORMAT="json",
        # The load generator is one address: lift the per-address and per-key limits for it.
        FEINT_RATE_LIMIT_PER_SECOND="100000",
        FEINT_RATE_LIMIT_BURST="200000",
        # locust is the load balancer in front of the gateway: each user names its address
        # in X-Forwarded-For (see GatewayVisitor in locustfile.py).
        FEINT_GATEWAY_TRUSTED_PROXIES="127.0.0.1/32",
    )
    if os.environ.get("FEINT_REDIS_URL"):
        env["FEINT_REDIS_URL"] = os.environ["FEINT_REDIS_URL"]
    feint = [sys.executable, "-m", "feint"]
    subprocess.run([*feint, "migrate"], env=env, check=True, capture_output=True)
    ports = {
        "shop": free_port(), "credits": free_port(), "shadow": free_port(), "camouflage": free_port(),
        "gateway": free_port(),
    }  # fmt: skip
    # `feint serve camouflage` runs the gateway only in front of an upstream: the demo shop that
    # `feint up` uses, as a process of its own.
    env["FEINT_UPSTREAM_URL"] = f"http://127.0.0.1:{ports['shop']}"
    commands = {
        "shop": [
            sys.executable, "-m", "uvicorn", "feint.camouflage.demo:create", "--factory", "--host", "127.0.0.1",
            "--port", str(ports["shop"]), "--log-level", "warning", "--no-access-log",
        ],
        "credits": [*feint, "serve", "credits", "--port", str(ports["credits"]), "--workers", str(workers)],
        "shadow": [*feint, "serve", "shadow", "--port", str(ports["shadow"]), "--workers", str(workers)],
        "camouflage": [
            *feint, "serve", "camouflage", "--port", str(ports["camouflage"]), "--gateway-port", str(ports["gateway"])
        ],
    }  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for name, command in commands.items():
            with (logs / f"{name}.log").open("wb") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        deadline = time.monotonic() + START_SECONDS_MAX
        for name in ("shop", "credits", "shadow", "camouflage", "gateway"):
            probe = "/" if name in ("shop", "gateway") else "/health"
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(urls[name] + probe, timeout=2).status_code < 500:
                        break
                if time.monotonic() > deadline:
                    # The logs live in a temporary folder that is removed on exit: show them now.
                    tails = "\n".join(
                        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs.iterdir()
                    )
                    sys.exit(f"{name} did not start within {START_SECONDS_MAX} s; the services' logs:\n{tails}")
                time.sleep(0.2)
        env_out = dict(env)
        key = subprocess.run(
            [*feint, "keys", "create", "--tenant", "load", "--scope", "write"],
            env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        operator = subprocess.run(
            [*feint, "keys", "create", "--operator"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        env_out.update(
            LOAD_GATEWAY=urls["gateway"], LOAD_CREDITS=urls["credits"], LOAD_SHADOW=urls["shadow"], LOAD_KEY=key
        )
        env_out["LOAD_ACCOUNTS"] = ",".join(fund(urls["credits"], key=key, operator=operator))
        yield env_out, {name: proc.pid for name, proc in zip(commands, procs, strict=True)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def fund(credits: str, *, key: str, operator: str) -> list[str]:
    """ACCOUNTS accounts of the tenant, each granted plenty of credits."""
    ids = []
    with httpx.Client(base_url=credits, timeout=30) as client:
        for _ in range(ACCOUNTS):
            made = client.post("/v1/accounts", json={"code": "api-calls"}, headers={"authorization": f"Bearer {key}"})
            made.raise_for_status()
            account = made.json()["id"]
            granted = client.post(
                "/v1/grants",
                json={"account_id": account, "amount": GRANT},
                headers={"authorization": f"Bearer {operator}", "feint-tenant": "load"},
            )
            granted.raise_for_status()
            ids.append(account)
    return ids


@dataclass(frozen=True)
class Endpoint:
    """One endpoint's requests that completed inside the measured window (every locust process)."""

    requests: int
    failures: int
    ms: tuple[float, ...]  # response times, sorted

    def percentile(self, share: float) -> float:
        """Nearest-rank percentile of the response times (0 without requests)."""
        if not self.ms:
            return 0.0
        return self.ms[min(len(self.ms) - 1, max(0, math.ceil(share * len(self.ms)) - 1))]


@dataclass(frozen=True)
class Measured:
    """What the locustfile's ``Window`` recorded: requests completed in a window of ``seconds``."""

    seconds: float
    users: dict[str, int]
    endpoints: dict[str, Endpoint]
    covered: bool  # every locust process ran past the window's end

    def rate(self, name: str) -> float:
        """Requests of the endpoint counted in the window / the window's own length."""
        return self.endpoints[name].requests / self.seconds

    @property
    def offered(self) -> float:
        """Requests/s the users but the bots offer: one task each per PERIOD (locustfile.py)."""
        return sum(count for name, count in self.users.items() if name != BOT_CLASS) / PERIOD


def merge(documents: list[dict[str, Any]]) -> Measured:
    """The windows of every locust process (one file each) as one: the counts add up over
    windows of the same length, which run at the same time."""
    if not documents:
        raise ValueError("no locust process wrote its window")
    lengths = {round(doc["closes"] - doc["opens"], 6) for doc in documents}
    if len(lengths) != 1:
        raise ValueError(f"the processes' windows differ in length: {sorted(lengths)}")
    users: dict[str, int] = {}
    raw: dict[str, tuple[int, int, list[float]]] = {}
    for doc in documents:
        for name, count in doc["users"].items():
            users[name] = users.get(name, 0) + count
        for name, seen in doc["endpoints"].items():
            requests, failures, ms = raw.get(name, (0, 0, []))
            raw[name] = (requests + seen["requests"], failures + seen["failures"], ms + list(seen["ms"]))
    endpoints = {name: Endpoint(r, f, tuple(sorted(ms))) for name, (r, f, ms) in raw.items()}
    covered = all(doc["stopped"] >= doc["closes"] for doc in documents)
    return Measured(seconds=lengths.pop(), users=users, endpoints=endpoints, covered=covered)


BOT_NAME = "gateway bot"  # locustfile.GatewayBot's requests: decoys hold bots on purpose
BOT_CLASS = "GatewayBot"
PERIOD = 1.0  # locustfile.PERIOD: each user runs one task per second
MIX = ("GatewayVisitor", "GatewayBot", "Meter", "RuleWatcher")  # locustfile.py's users of the mix


def served(measured: Measured) -> tuple[float, float, int]:
    """What the platform's users got: requests/s and the worst p95 (ms) over every endpoint but
    the bots' (a decoy's slowness is the product working), and the failures of all endpoints."""
    users = [name for name in measured.endpoints if name != BOT_NAME]
    failures = sum(e.failures for e in measured.endpoints.values())
    achieved = sum(measured.rate(name) for name in users)
    return achieved, max((measured.endpoints[name].percentile(0.95) for name in users), default=0.0), failures


def sustainable(measured: Measured, *, p95_ms: float) -> bool:
    """No failure, every users' endpoint's p95 within ``p95_ms``, at least 95% of the offered rate
    achieved, and a window that the run covered to its end."""
    achieved, p95, failures = served(measured)
    return (
        measured.covered and failures == 0 and p95 <= p95_ms and measured.offered > 0
        and achieved >= 0.95 * measured.offered
    )  # fmt: skip


@dataclass(frozen=True)
class Run:
    measured: Measured
    cpu: dict[str, float]  # cores used on average during the run, per process group
    busy: float  # share of the machine's cores busy (every process, other users' too)
    load: float  # load average (1 min) at the end


SAMPLE_SECONDS = 0.5  # how often the CPU of every process is read during a run


def processes(pids: dict[str, int]) -> dict[str, list[psutil.Process]]:
    """Each service's process and its workers, locust's processes, and the machine's PostgreSQL
    and Redis (shared with whatever else runs here)."""
    groups: dict[str, list[psutil.Process]] = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(pid)
            groups[name] = [top, *top.children(recursive=True)]
    for proc in psutil.process_iter(["name"]):
        for group, binary in (("postgres*", "postgres"), ("redis*", "redis-server")):
            if proc.info["name"] == binary:
                groups.setdefault(group, []).append(proc)
    return groups


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    cpu: dict[tuple[str, int], float]  # (group, pid) -> CPU seconds so far
    machine: tuple[float, float]  # the machine's (idle, total) CPU seconds so far


def sample(pids: dict[str, int]) -> Sample:
    cpu = {}
    for name, procs in processes(pids).items():
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu[name, proc.pid] = times.user + times.system
    machine = psutil.cpu_times()
    return Sample(time.time(), cpu, (machine.idle + machine.iowait, sum(machine)))


def window_cpu(samples: list[Sample], opens: float, closes: float) -> tuple[dict[str, float], float]:
    """Cores used per group, and the share of the machine busy, from the last sample before the
    window opens to the first after it closes."""
    first = max((s for s in samples if s.at <= opens), key=lambda s: s.at, default=samples[0])
    last = min((s for s in samples if s.at >= closes), key=lambda s: s.at, default=samples[-1])
    elapsed = last.at - first.at
    if elapsed <= 0:
        return {}, 0.0
    cores: dict[str, float] = {}
    for (group, pid), seconds in last.cpu.items():
        cores[group] = cores.get(group, 0.0) + (seconds - first.cpu.get((group, pid), 0.0)) / elapsed
    idle, total = last.machine[0] - first.machine[0], last.machine[1] - first.machine[1]
    return cores, 1 - idle / total if total else 0.0


def locust(
    env: dict[str, str], *, users: tuple[str, ...], rate: int, seconds: int, prefix: Path, html: bool, workers: int,
    pids: dict[str, int],
) -> Run:  # fmt: skip
    """One headless locust run of ``rate`` users (= requests/s) of the classes ``users``, measured
    over ``seconds`` once every user runs."""
    for old in prefix.parent.glob(f"{prefix.name}.window.*.json"):
        old.unlink()
    spawn_rate = max(1, rate // 4)
    ramp = math.ceil(rate / spawn_rate) + 3  # locust spawns a batch a second, plus its start-up
    command = [
        str(locust_binary()), "-f", str(LOCUSTFILE), *users, "--headless", "--only-summary",
        "-u", str(rate), "-r", str(spawn_rate), "-t", f"{ramp + SETTLE_SECONDS + seconds + 2}s",
        "--csv", str(prefix), "--stop-timeout", "10", "--exit-code-on-error", "0", "--reset-stats",
    ]  # fmt: skip
    if workers > 1:
        command += ["--processes", str(workers)]
    if html:
        command += ["--html", f"{prefix}.html"]
    run_env = {
        **env, "LOAD_WINDOW_FILE": f"{prefix}.window", "LOAD_WINDOW_SECONDS": str(seconds),
        "LOAD_SETTLE_SECONDS": str(SETTLE_SECONDS),
    }  # fmt: skip
    log = Path(f"{prefix}.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=run_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            watched = {**pids, "locust": proc.pid}
            samples = [sample(watched)]
            deadline = time.monotonic() + ramp + SETTLE_SECONDS + seconds + 300
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    sys.exit(f"locust did not finish; its log: {log}")
                time.sleep(SAMPLE_SECONDS)
                samples.append(sample(watched))
        finally:
            if proc.poll() is None:  # stopped early (SIGTERM, Ctrl-C): locust and its processes too
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    documents = [json.loads(path.read_text()) for path in prefix.parent.glob(f"{prefix.name}.window.*.json")]
    if not documents:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"locust wrote no measurement (exit {proc.returncode}):\n{tail}")
    measured = merge(documents)
    cpu, busy = window_cpu(samples, min(doc["opens"] for doc in documents), max(doc["closes"] for doc in documents))
    return Run(measured, cpu, busy, os.getloadavg()[0])


def _print(measured: Measured, title: str) -> None:
    print(f"\n{title} (requests completed in a {measured.seconds:g} s window)")
    print(
        f"{'endpoint':<26} {'requests':>9} {'fail':>6} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>8}"
    )
    for name, e in sorted(measured.endpoints.items()):
        print(
            f"{name:<26} {e.requests:>9} {e.failures:>6} {measured.rate(name):>8.1f} {e.percentile(0.5):>7.1f} "
            f"{e.percentile(0.95):>7.1f} {e.percentile(0.99):>7.1f} {max(e.ms, default=0):>8.0f}"
        )


def _cpu(run: Run) -> str:
    spent = ", ".join(f"{name} {cores:.2f}" for name, cores in sorted(run.cpu.items(), key=lambda item: -item[1]))
    return f"cores used: {spent}; machine {100 * run.busy:.0f}% busy, load average {run.load:.2f}"


def _line(rate: int, run: Run, *, p95_ms: float) -> str:
    achieved, p95, failures = served(run.measured)
    ok = sustainable(run.measured, p95_ms=p95_ms)
    window = f"{run.measured.seconds:g} s window{'' if run.measured.covered else ', NOT covered'}"
    worst = max(
        (name for name in run.measured.endpoints if name != BOT_NAME),
        key=lambda name: run.measured.endpoints[name].percentile(0.95),
        default="-",
    )
    return (
        f"{rate:>5}/s: achieved {achieved:7.1f}/s of {run.measured.offered:.0f}/s offered by visitors and services "
        f"({window}), worst p95 {p95:.1f} ms ({worst}), "
        f"failures {failures} -> {'sustained' if ok else 'NOT sustained'}\n        {_cpu(run)}"
    )


def baseline(args: argparse.Namespace, env: dict[str, str]) -> None:
    """locust against a static endpoint at the soak's rate: the harness's own overhead."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "baseline.py"), str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit("the baseline's static endpoint did not start")
            time.sleep(0.1)
        run = locust(
            {**env, "LOAD_BASELINE": f"http://127.0.0.1:{port}"}, users=("Baseline",), rate=args.rate,
            seconds=args.baseline_seconds, prefix=args.out / "baseline", html=False, workers=args.locust_processes,
            pids={"static": server.pid},
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    e = run.measured.endpoints.get("baseline static", Endpoint(0, 0, ()))
    print(
        f"harness baseline (locust, {args.locust_processes} process(es), against a static endpoint): "
        f"{e.requests / run.measured.seconds:.1f}/s achieved of {run.measured.offered:.0f}/s offered, "
        f"p50 {e.percentile(0.5):.2f} ms, p95 {e.percentile(0.95):.2f} ms, p99 {e.percentile(0.99):.2f} ms, "
        f"failures {e.failures}; locust {1000 * run.cpu['locust'] / max(1.0, run.measured.offered):.3f} ms of CPU "
        f"per request\n        {_cpu(run)}"
    )


def search(args: argparse.Namespace, env: dict[str, str], pids: dict[str, int]) -> int:
    """Step up from --start by --step until a rate is not sustained, then halve the gap between
    the best and the first failed rate --refine times; the highest sustained rate."""
    best, failed = 0, None
    rate = args.start

    def probe(rate: int) -> bool:
        run = locust(
            env, users=MIX, rate=rate, seconds=args.probe_seconds, prefix=args.out / f"search_{rate}", html=False,
            workers=args.locust_processes, pids=pids,
        )  # fmt: skip
        print("search " + _line(rate, run, p95_ms=args.p95_ms), flush=True)
        return sustainable(run.measured, p95_ms=args.p95_ms)

    while rate <= args.max_rate:
        if not probe(rate):
            failed = rate
            break
        best = rate
        rate += args.step
    else:
        print(f"search stopped at --max-rate {args.max_rate}/s")
    for _ in range(args.refine if failed is not None else 0):
        middle = (best + failed) // 2 if failed is not None else best
        if middle in (best, failed):
            break
        if probe(middle):
            best = middle
        else:
            failed = middle
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1_000, help="requests/s of the soak (and of the baseline)")
    parser.add_argument("--seconds", type=int, default=300, help="measured length of the soak")
    parser.add_argument("--start", type=int, default=100, help="first rate of the search")
    parser.add_argument("--step", type=int, default=100, help="rate increment of the search")
    parser.add_argument("--refine", type=int, default=2, help="halvings between the best and the first failed rate")
    parser.add_argument("--probe-seconds", type=int, default=30, help="measured length of each search step")
    parser.add_argument("--max-rate", type=int, default=5_000, help="highest rate the search tries")
    parser.add_argument("--p95-ms", type=float, default=50.0, help="largest p95 a sustainable rate may have")
    parser.add_argument("--baseline-seconds", type=int, default=20, help="measured length of the harness baseline")
    parser.add_argument("--no-search", action="store_true", help="the baseline and the soak only")
    parser.add_argument("--locust-processes", type=int, default=1, help="locust processes generating the load")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="processes of credits and of shadow (above 1 needs FEINT_REDIS_URL; camouflage is always one); "
        "one each sustained 500/s on 2 shared cores, two each 400/s (bench/load/RESULTS.md)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "load-report", help="CSV and HTML reports")
    args = parser.parse_args()
    # SIGTERM (a `timeout`, a CI cancel) unwinds like Ctrl-C: locust and the services are stopped
    # and the run's database is dropped, rather than left running.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    if args.workers > 1 and not os.environ.get("FEINT_REDIS_URL"):
        parser.error("--workers above 1 needs FEINT_REDIS_URL (the workers share rate limits and cache there)")
    args.out.mkdir(parents=True, exist_ok=True)
    locust_binary()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before start")
    baseline(args, dict(os.environ))
    with (
        database() as url,
        tempfile.TemporaryDirectory(prefix="feint-load-") as home,
        services(url, Path(home), workers=args.workers) as (env, pids),
    ):
        print(f"services: credits and shadow {args.workers} process(es) each, camouflage (and its gateway) one")
        if not args.no_search:
            best = search(args, env, pids)
            print(f"highest sustainable rate: {best} requests/s (p95 <= {args.p95_ms:g} ms, no failures)", flush=True)
        run = locust(
            env, users=MIX, rate=args.rate, seconds=args.seconds, prefix=args.out / "soak", html=True,
            workers=args.locust_processes, pids=pids,
        )  # fmt: skip
        _print(run.measured, f"soak: {args.rate} requests/s offered for {args.seconds} s")
        print("soak " + _line(args.rate, run, p95_ms=args.p95_ms))
        verdict = "met" if sustainable(run.measured, p95_ms=args.p95_ms) else "MISSED"
        print(
            f"target {args.rate}/s for {args.seconds} s, no failures, p95 <= {args.p95_ms:g} ms on every endpoint "
            f"but the bots' (decoys hold them on purpose): {verdict}"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.2f}; reports in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
