"""`make load`: the platform under a realistic mix, with locust, on this machine.

Starts credits, shadow, camouflage and the demo shop the gateway protects as separate processes on
a fresh database (``FEINT_DATABASE_URL`` as a superuser URL, else the embedded PostgreSQL), makes a
tenant with funded accounts, then:

1. **search**: offered rates from ``--start`` up by ``--step`` for ``--probe-seconds`` each, until a
   step has failures or a p95 above ``--p95-ms``; the last good one is the highest sustainable
   rate, printed;
2. **soak**: ``--rate`` (default 1,000 requests/s) for ``--seconds`` (default 300).

Prints requests/s, failures and p50/p95/p99 per endpoint for the soak, writes locust's CSV and HTML
report under ``--out``. The load generator shares the machine's cores with the services, as a
single-machine deployment would with its clients elsewhere; the figures say so.

    .venv/bin/python bench/load/load.py [--rate 1000] [--seconds 300] [--out load-report]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
MASTER_KEY = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="  # base64 of 32 × "B": a bench-only key
START_SECONDS_MAX = 60
ACCOUNTS = 50
GRANT = 10**12


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
def services(url: str, home: Path) -> Iterator[dict[str, str]]:
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
        "credits": [*feint, "serve", "credits", "--port", str(ports["credits"])],
        "shadow": [*feint, "serve", "shadow", "--port", str(ports["shadow"])],
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
        yield env_out
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


def locust(env: dict[str, str], *, rate: int, seconds: int, prefix: Path, html: bool) -> dict[str, dict[str, str]]:
    """One headless locust run at ``rate`` users (= requests/s); its stats per endpoint."""
    command = [
        str(locust_binary()), "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(rate), "-r", str(max(1, rate // 5)), "-t", f"{seconds}s", "--csv", str(prefix),
        "--stop-timeout", "10", "--exit-code-on-error", "0",
        # Measure from the moment every user runs: the ramp (5 s) would otherwise count as missed
        # rate, and a 30 s step could never reach 95 % of the offered rate.
        "--reset-stats",
    ]  # fmt: skip
    if html:
        command += ["--html", f"{prefix}.html"]
    subprocess.run(command, env=env, check=False, capture_output=True, timeout=seconds + 300)
    with open(f"{prefix}_stats.csv", newline="") as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}


def _print(rows: dict[str, dict[str, str]], title: str) -> None:
    print(f"\n{title}")
    print(f"{'endpoint':<26} {'requests':>9} {'fail':>6} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for name, row in sorted(rows.items(), key=lambda item: item[0] == "Aggregated"):
        print(
            f"{name:<26} {row['Request Count']:>9} {row['Failure Count']:>6} {float(row['Requests/s']):>8.1f} "
            f"{row['50%']:>7} {row['95%']:>7} {row['99%']:>7}"
        )


BOT_NAME = "gateway bot"  # locustfile.GatewayBot: decoys hold bots on purpose
BOT_USER_SHARE = 6 / 100  # its weight among the users (locustfile.py)


def served(rows: dict[str, dict[str, str]]) -> tuple[float, float, int]:
    """What the platform's users got: requests/s and the worst p95 (ms) over every endpoint but
    the bots' (a decoy's slowness is the product working), and the failures of all endpoints."""
    users = [row for name, row in rows.items() if name not in ("Aggregated", BOT_NAME)]
    failures = sum(int(row["Failure Count"]) for name, row in rows.items() if name != "Aggregated")
    return sum(float(row["Requests/s"]) for row in users), max(float(row["95%"]) for row in users), failures


def sustainable(rows: dict[str, dict[str, str]], *, rate: int, p95_ms: float) -> bool:
    achieved, p95, failures = served(rows)
    return failures == 0 and p95 <= p95_ms and achieved >= 0.95 * rate * (1 - BOT_USER_SHARE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1_000, help="requests/s of the soak")
    parser.add_argument("--seconds", type=int, default=300, help="length of the soak")
    parser.add_argument("--start", type=int, default=250, help="first rate of the search")
    parser.add_argument("--step", type=int, default=250, help="rate increment of the search")
    parser.add_argument("--probe-seconds", type=int, default=30, help="length of each search step")
    parser.add_argument("--max-rate", type=int, default=5_000, help="highest rate the search tries")
    parser.add_argument("--p95-ms", type=float, default=50.0, help="largest p95 a sustainable rate may have")
    parser.add_argument("--out", type=Path, default=REPO / "load-report", help="CSV and HTML reports")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    locust_binary()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before start")
    with database() as url, tempfile.TemporaryDirectory(prefix="feint-load-") as home, services(url, Path(home)) as env:
        best = 0
        rate = args.start
        while True:  # bounded by --max-rate
            rows = locust(env, rate=rate, seconds=args.probe_seconds, prefix=args.out / f"search_{rate}", html=False)
            achieved, p95, failures = served(rows)
            ok = sustainable(rows, rate=rate, p95_ms=args.p95_ms)
            print(
                f"search {rate:>5}/s: achieved {achieved:7.1f}/s of {rate * (1 - BOT_USER_SHARE):.0f}/s offered by "
                f"visitors and services, worst p95 {p95:g} ms, failures {failures} -> "
                f"{'sustained' if ok else 'NOT sustained'}"
            )
            if not ok:
                break
            best = rate
            if rate + args.step > args.max_rate:
                print(f"search stopped at --max-rate {args.max_rate}/s")
                break
            rate += args.step
        print(f"highest sustainable rate: {best} requests/s (p95 <= {args.p95_ms:g} ms, no failures)")
        rows = locust(env, rate=args.rate, seconds=args.seconds, prefix=args.out / "soak", html=True)
        _print(rows, f"soak: {args.rate} requests/s offered for {args.seconds} s")
        met = sustainable(rows, rate=args.rate, p95_ms=args.p95_ms)
        verdict = "met" if met else "MISSED"
        print(
            f"target {args.rate}/s for {args.seconds} s, no failures, p95 <= {args.p95_ms:g} ms on every endpoint "
            f"but the bots' (decoys hold them on purpose): {verdict}"
        )
        print(f"load average at the end: {os.getloadavg()[0]:.2f}; reports in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
