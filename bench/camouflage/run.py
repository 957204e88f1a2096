"""Camouflage benchmarks (issues #7 and #8), in one run: the decoy against nginx, the gateway
against nginx direct and nginx proxy_pass, and the bandit's select+update cost.

    .venv/bin/python bench/camouflage/run.py                       # all three parts (what `make bench` runs)
    .venv/bin/python bench/camouflage/run.py --parts decoy         # or gateway, bandit, or a comma list
    .venv/bin/python bench/camouflage/run.py --gateway-seconds 10 --gateway-connections 32

The gateway part is ``gateway.py`` (see its docstring; it also runs alone), the bandit part
``bandit.py`` (MABWiser from ``requirements.txt`` for the comparison). The decoy part:

Decoy vs real nginx: responses/s and latency of the same 404 on keep-alive connections (wrk).

    .venv/bin/python bench/camouflage/run.py --parts decoy         # 10 s per scenario, 32 connections
    .venv/bin/python bench/camouflage/run.py --parts decoy --seconds 5 --connections 64
    .venv/bin/python bench/camouflage/run.py --parts decoy --responder fixed   # a fixed 404 instead of the persona

Scenarios (one function each, so that the gateway's can be added beside them):
- ``decoy``: the decoy server (uvloop, one process) with the nginx-debian persona (or, with
  ``--responder fixed``, a responder that writes nginx's 404 bytes as captured at start);
- ``nginx``: Debian's nginx, one worker, access log off, serving the same 404 for a missing file.

Each scenario runs wrk (1 thread, keep-alive, ``--latency``) for ``--seconds`` after a one-second
warm-up, on loopback. Prints responses/s, p50, p99 and the server's CPU time per response (all
its processes, from /proc) per scenario, then decoy/nginx by throughput and by CPU per response
(the second is the figure a loaded machine disturbs least, and it is not capped by what one wrk
thread can send, which may limit nginx's throughput), against the
targets of issue #7: >= 10,000 responses/s, p99 <= 5 ms, >= 0.25x nginx. Before measuring, the
two 404s are fetched once and compared (Date aside) so that both serve the same bytes. A first
line prints the parser's own cost per request. ``BENCH_FREEZE=1`` freezes the decoy's heap after
loading (``gc.freeze()``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.nginx import cpu_seconds, free_port, nginx_binary, process_tree, running_nginx, wait_listening  # noqa: E402

from feint.camouflage.decoy.contract import Connection, Limits, Reply, Request, TimeoutPhase  # noqa: E402

PATH = "/missing-page"
TARGET_RPS = 10_000
TARGET_P99_MS = 5.0
TARGET_RATIO = 0.25
NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"


@dataclass(frozen=True)
class Figures:
    """What one wrk run measured."""

    name: str
    what: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str
    cpu_us: float  # the server's CPU time (all its processes) per response


# -- servers ----------------------------------------------------------------------------------


@contextmanager
def nginx(tmp: Path) -> Iterator[tuple[int, list[int]]]:
    """Debian's nginx with one worker, serving an empty root (so every path is its 404)."""
    if nginx_binary() is None:
        raise SystemExit(f"{NGINX} is missing: apt-get install nginx")
    port = free_port()
    root = tmp / "nginx-root"
    root.mkdir()
    # Debian's nginx.conf with what a benchmark must change: one worker, loopback port, files
    # under tmp, no access log (the decoy writes none either); tests/nginx.py writes the rest.
    http = f"""
        sendfile on;
        tcp_nopush on;
        types_hash_max_size 2048;
        include /etc/nginx/mime.types;
        default_type application/octet-stream;
        gzip on;
        server {{
            listen 127.0.0.1:{port};
            root {root};
            index index.html index.htm index.nginx-debian.html;
            server_name _;
            location / {{ try_files $uri $uri/ =404; }}
        }}
    """
    with running_nginx(tmp / "nginx", http=http, port=port, worker_connections=768) as proc:
        yield port, process_tree(proc.pid)


@contextmanager
def decoy(responder: str, fixed: bytes) -> Iterator[tuple[int, list[int]]]:
    """The decoy in its own process on uvloop."""
    port = free_port()
    env = {**os.environ, "BENCH_FIXED_404": fixed.hex()}
    proc = subprocess.Popen([sys.executable, __file__, "--serve-decoy", str(port), "--responder", responder], env=env)
    try:
        wait_listening(port, proc=proc)
        yield port, [proc.pid]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class FixedResponder:
    """Writes the same 404 bytes to every request (the floor of what a persona costs)."""

    def __init__(self, data: bytes) -> None:
        self._reply = Reply(data=data)
        self._limits = Limits(
            request_line_bytes_max=8192,
            header_line_bytes_max=8192,
            header_bytes_max=32_768,
            header_count_max=100,
            body_bytes_max=1024 * 1024,
            header_timeout_seconds=60.0,
            body_timeout_seconds=60.0,
            keepalive_timeout_seconds=75.0,
            keepalive_requests_max=10**9,
        )

    @property
    def limits(self) -> Limits:
        return self._limits

    def respond(self, request: Request, conn: Connection) -> Reply:
        return self._reply

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        return None


def serve_decoy(port: int, responder_name: str) -> None:
    """The child process: serve until terminated."""
    import signal

    from feint.camouflage.decoy.server import run, serve

    if responder_name == "fixed":
        responder: object = FixedResponder(bytes.fromhex(os.environ["BENCH_FIXED_404"]))
    else:
        from feint.camouflage.decoy.persona import load
        from feint.camouflage.decoy.responder import PersonaResponder

        # As nginx does (keepalive_requests 1000), the persona closes a connection after 1000
        # requests and wrk reconnects: the same for both.
        responder = PersonaResponder(load(responder_name))

    async def main() -> None:
        server = await serve(responder, host="127.0.0.1", port=port)  # type: ignore[arg-type]
        if os.environ.get("BENCH_FREEZE") == "1":
            gc.collect()
            gc.freeze()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(grace_seconds=1.0)
        print(f"decoy stats: {server.stats}", file=sys.stderr)

    run(main())


# -- measuring ---------------------------------------------------------------------------------


def fetch(port: int) -> bytes:
    """One raw keep-alive GET of the 404, as wrk sends it; the response framed by its Content-Length."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        out = b""
        while b"\r\n\r\n" not in out and (piece := sock.recv(65536)):
            out += piece
        head, _, body = out.partition(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)", head, re.IGNORECASE)
        while length and len(body) < int(length.group(1)) and (piece := sock.recv(65536)):
            body += piece
    return head + b"\r\n\r\n" + body


def masked(response: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: *", response)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(port: int, *, seconds: int, connections: int, pids: list[int]) -> tuple[float, float, float, str, float]:
    """(responses/s, p50 ms, p99 ms, error lines, the server's CPU us per response) of one wrk run."""
    url = f"http://127.0.0.1:{port}{PATH}"
    subprocess.run([WRK, "-t1", "-c", str(connections), "-d1s", url], capture_output=True, check=True)
    before = cpu_seconds(*pids)
    out = subprocess.run(
        [WRK, "-t1", "-c", str(connections), f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(*pids) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    latency = {
        m.group(1): float(m.group(2)) * _UNITS[m.group(3)]
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    }
    errors = " ".join(line.strip() for line in out.splitlines() if "Socket errors" in line or "Non-2xx" in line)
    return rps, latency["50"], latency["99"], errors, cpu / max(count, 1) * 1e6


def parser_micro(rounds: int = 100_000) -> dict[str, float]:
    """Microseconds per request of ``RequestParser`` alone (feed + next_request), in this process."""
    from feint.camouflage.decoy.http import RequestParser

    limits = FixedResponder(b"").limits
    kinds = {
        "wrk": f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".encode(),
        "browser": (
            b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n"
            b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
            b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
            b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
            b"Connection: keep-alive\r\nCookie: a=b; c=d\r\nUpgrade-Insecure-Requests: 1\r\n\r\n"
        ),
    }
    out: dict[str, float] = {}
    for kind, data in kinds.items():
        parser = RequestParser(limits)
        started = time.perf_counter()
        for _ in range(rounds):
            parser.feed(data)
            parser.next_request()
        out[kind] = (time.perf_counter() - started) / rounds * 1e6
    return out


def scenario_nginx(args: argparse.Namespace, tmp: Path) -> Figures:
    """Debian nginx, one worker."""
    with nginx(tmp) as (port, pids):
        rps, p50, p99, errors, cpu = wrk(port, seconds=args.seconds, connections=args.connections, pids=pids)
    return Figures("nginx", "Debian nginx 1 worker", rps, p50, p99, errors, cpu)


def scenario_decoy(args: argparse.Namespace, tmp: Path) -> Figures:
    """The decoy with the persona (or the fixed 404)."""
    with decoy(args.responder, args.fixed_404) as (port, pids):
        rps, p50, p99, errors, cpu = wrk(port, seconds=args.seconds, connections=args.connections, pids=pids)
    return Figures("decoy", f"decoy, responder {args.responder}", rps, p50, p99, errors, cpu)


SCENARIOS: dict[str, Callable[[argparse.Namespace, Path], Figures]] = {
    "decoy": scenario_decoy,
    "nginx": scenario_nginx,
}


def same_404(args: argparse.Namespace, tmp: Path) -> bytes:
    """nginx's 404 bytes; prints whether the decoy's are the same (Date aside)."""
    check = tmp / "check"
    check.mkdir()
    with nginx(check) as (port, _):
        real = fetch(port)
    with decoy(args.responder, real) as (port, _):
        fake = fetch(port)
    print(f"404 from nginx: {len(real)} bytes; from the decoy: {len(fake)} bytes; ", end="")
    print("identical (Date aside)" if masked(real) == masked(fake) else "DIFFERENT:")
    if masked(real) != masked(fake):
        print("  nginx:", masked(real)[:300])
        print("  decoy:", masked(fake)[:300])
    return real


def _sibling(name: str) -> ModuleType:
    """bench/camouflage/<name>.py as a module (this folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_camouflage_{name}", HERE / f"{name}.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {HERE / name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def run_decoy(args: argparse.Namespace) -> None:
    """Issue #7: the decoy's 404 against nginx's, same run."""
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min), {os.cpu_count()} cpus")
    micro = parser_micro()
    print("parser alone: " + ", ".join(f"{kind} request {us:.1f} us" for kind, us in micro.items()))
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="feint-bench-camouflage-") as name:
        tmp = Path(name)
        args.fixed_404 = same_404(args, tmp)
        for scenario in args.scenarios.split(","):
            (tmp / scenario).mkdir()
            results[scenario] = SCENARIOS[scenario](args, tmp / scenario)
    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s --latency GET {PATH} (keep-alive)")
    print(f"{'scenario':<10} {'responses/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/resp':>12}  what")
    for fig in results.values():
        print(
            f"{fig.name:<10} {fig.rps:>12,.0f} {fig.p50_ms:>8.2f} {fig.p99_ms:>8.2f} {fig.cpu_us:>12.1f}"
            f"  {fig.what} {fig.errors}"
        )
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min)")
    if "decoy" in results and "nginx" in results:
        d, n = results["decoy"], results["nginx"]
        ratio = d.rps / n.rps
        print(f"decoy/nginx: {ratio:.2f}x")
        # The CPU each server spent per response is what a loaded machine disturbs least: its
        # inverse ratio is the throughput ratio the two would reach on a core each.
        print(
            f"decoy/nginx by CPU per response: {n.cpu_us / d.cpu_us:.2f}x ({d.cpu_us:.1f} us against {n.cpu_us:.1f} us)"
        )
        print(
            f"targets: >= {TARGET_RPS:,} responses/s {'met' if d.rps >= TARGET_RPS else 'MISSED'}; "
            f"p99 <= {TARGET_P99_MS} ms {'met' if d.p99_ms <= TARGET_P99_MS else 'MISSED'}; "
            f">= {TARGET_RATIO}x nginx {'met' if ratio >= TARGET_RATIO else 'MISSED'}"
        )


def run_gateway(args: argparse.Namespace) -> None:
    """Issue #8: nginx direct, nginx proxy_pass and the Feint gateway, same run."""
    gateway = _sibling("gateway")
    seconds, connections = args.gateway_seconds, args.gateway_connections
    with tempfile.TemporaryDirectory(prefix="feint-bench-gateway-") as name:
        runs = gateway.measure(seconds=seconds, connections=connections, tmp=Path(name))
    gateway.report(runs, seconds=seconds, connections=connections)


def run_bandit(args: argparse.Namespace) -> None:
    """Issue #8: UCB1 select+update, ours against MABWiser's."""
    bandit = _sibling("bandit")
    bandit.report(bandit.measure(rounds=args.bandit_rounds, arms=bandit.ARMS_DEFAULT))


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "decoy": run_decoy,
    "gateway": run_gateway,
    "bandit": run_bandit,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help="decoy, gateway, bandit (comma separated)")
    parser.add_argument("--seconds", type=int, default=10, help="decoy: seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="decoy: wrk connections")
    parser.add_argument("--responder", default="nginx-debian", help="decoy: a persona name, or 'fixed'")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="decoy: scenarios")
    parser.add_argument("--gateway-seconds", type=int, default=5)
    parser.add_argument("--gateway-connections", type=int, default=16)
    parser.add_argument("--bandit-rounds", type=int, default=5_000)
    parser.add_argument("--serve-decoy", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_decoy:
        serve_decoy(args.serve_decoy, args.responder)
        return 0
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    if {"decoy", "gateway"} & set(parts):
        for tool in (WRK, NGINX):
            if not shutil.which(tool) and not Path(tool).exists():
                raise SystemExit(f"{tool} is missing (apt-get install wrk nginx)")
    for part in parts:
        print(f"\n== {part}")
        PARTS[part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
