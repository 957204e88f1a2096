"""Gateway benchmark: nginx direct, nginx proxy_pass, and the Feint gateway, under wrk.

    .venv/bin/python bench/camouflage/gateway.py            # 5 s per scenario (run.py runs it too)
    .venv/bin/python bench/camouflage/gateway.py --seconds 10 --connections 32
    BENCH_PROFILE=1 .venv/bin/python bench/camouflage/gateway.py   # + the gateway's cProfile (CPU time)

In one run, on loopback:

1. the upstream: Debian's nginx serving a 612-byte page (what every scenario fetches);
2. the same page through a second nginx with ``proxy_pass`` (kept-alive upstream connections);
3. the same page through the Feint gateway (decoy server + gateway responder, the full shared
   rule set: the starter rules and all 142 SigmaHQ rules), benign browser requests;
4. decoy sessions: every request with a new scanner user agent (a new client key, so a new
   decoy session answered by the nginx-debian persona).

Prints requests/s, p50 and p99 of each, the gateway's added latency (p50 over nginx direct) and
its throughput as a ratio to nginx ``proxy_pass``. Before that, the upstream client choice: the
same 4,000 requests to nginx through httpx, aiohttp's client (when installed) and the gateway's raw
stream proxy, requests/s and CPU time per request. The gateway runs in a child process (its
own core when there are two), wrk in another; figures on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.nginx import cpu_seconds, free_port, nginx_binary, running_nginx  # noqa: E402

# ../shared/data as the tests find it; from a worktree (/work/wt/<branch>) it is one level further up.
SHARED = Path(
    os.environ.get(
        "FEINT_SHARED_DATA",
        next(
            (p for p in (REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data") if p.is_dir()),
            REPO.parent / "shared" / "data",
        ),
    )
)
CLIENT_REQUESTS = 4_000
CLIENT_CONCURRENCY = 16
STOP_SECONDS_MAX = 10.0
PROFILE_LINES = 25  # functions printed from the gateway's profile (BENCH_PROFILE=1)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SCANNER_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", {["User-Agent"] = "sqlmap/1." .. counter .. "#" .. math.random(1e9)})
end
"""


def nginx(tmp: Path, name: str, body: str, *, http: str = "") -> tuple[AbstractContextManager[object], int]:
    """A loopback nginx (tests/nginx.py) whose one server block holds ``body``: (context, port)."""
    port = free_port()
    server = f"{http}\nserver {{\n    listen 127.0.0.1:{port};\n    {body}\n}}"
    return running_nginx(tmp / name, http=server, port=port), port


def wrk(
    url: str, *, seconds: int, connections: int, script: Path | None = None, server_pid: int | None = None
) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 (ms); with ``server_pid``, that process's CPU time per
    request (us), the figure a loaded machine disturbs least."""
    before = cpu_seconds(server_pid) if server_pid is not None else 0.0
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"User-Agent: {BROWSER}"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures = {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": float(errors.group(1)) if errors else 0.0}
    if server_pid is not None:
        count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        figures["cpu_us"] = (cpu_seconds(server_pid) - before) / max(count, 1) * 1e6
    return figures


async def clients(port: int) -> None:
    """The same requests through each upstream client: requests/s and CPU per request."""
    from feint.camouflage.decoy.contract import Request
    from feint.camouflage.engine.upstream import Upstream

    url = f"http://127.0.0.1:{port}/"

    async def run(name: str, one: object, close: object) -> None:
        gate = asyncio.Semaphore(CLIENT_CONCURRENCY)

        async def bounded() -> None:
            async with gate:
                await one()  # type: ignore[operator]

        await bounded()  # warm the pool
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(bounded() for _ in range(CLIENT_REQUESTS)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await close()  # type: ignore[operator]
        print(f"  {name:<22} {CLIENT_REQUESTS / wall:8.0f} req/s   {cpu / CLIENT_REQUESTS * 1e6:6.0f} us CPU/request")

    import httpx

    hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))

    async def via_httpx() -> None:
        response = await hx.get(url, headers={"user-agent": BROWSER})
        await response.aread()

    await run("httpx 0.28", via_httpx, hx.aclose)
    try:
        import aiohttp
    except ImportError:
        print("  aiohttp                (not installed: pip install aiohttp to compare)")
    else:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

        async def via_aiohttp() -> None:
            async with session.get(url, headers={"user-agent": BROWSER}) as response:
                await response.read()

        await run(f"aiohttp {aiohttp.__version__}", via_aiohttp, session.close)
    pool = Upstream(url)
    request = Request(
        request_line=b"GET / HTTP/1.1",
        method=b"GET",
        target=b"/",
        version=b"HTTP/1.1",
        headers=((b"Host", b"bench"), (b"User-Agent", BROWSER.encode())),
        body=b"",
        problems=frozenset(),
    )

    async def via_raw() -> None:
        answer = await pool.forward(request, client_ip="127.0.0.1")
        if answer.stream is not None:
            async for _ in answer.stream:
                pass

    await run("raw stream (gateway)", via_raw, pool.close)


def serve_gateway(upstream_port: int, port: int) -> None:
    """The child process: the gateway with the full shared rule set, until SIGTERM."""
    from feint.camouflage.decoy import persona, responder, server
    from feint.camouflage.engine.clients import MemoryClients
    from feint.camouflage.engine.decisions import DecisionLog
    from feint.camouflage.engine.rulesource import RuleReloader
    from feint.camouflage.engine.upstream import Upstream
    from feint.camouflage.gateway import Gateway, OnePersona
    from feint.shadow.rules import load_rules, rule_set, starter_rules

    async def main() -> None:
        from feint.camouflage.engine.rulesource import compile_rules

        rules = starter_rules() + load_rules(SHARED / "sigma")
        reloader = RuleReloader(lambda _: asyncio.sleep(0, None), poll_seconds=3600)
        reloader.current = compile_rules(rule_set(rules, name="all"), label="all", tag="bench")
        decisions = DecisionLog(db=None, path=None, queue_max=100_000)
        decoy = responder.PersonaResponder(persona.load("nginx-debian"))
        gateway = Gateway(
            upstream=Upstream(f"http://127.0.0.1:{upstream_port}"),
            rules=reloader,
            clients=MemoryClients(),
            diverter=OnePersona(decoy, persona="nginx-debian"),
            decisions=decisions,
            tenant_id=uuid.uuid4(),
            divert_threshold=5,
        )
        writer = asyncio.create_task(decisions.run())
        listening = await server.serve(gateway, host="127.0.0.1", port=port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"gateway ready, {len(rules)} rules", flush=True)
        # CPU time, not wall time: on a loaded machine a wall-clock profile charges the time this
        # process waits for a core to whatever it was doing (a socket write that woke wrk).
        profile = cProfile.Profile(time.process_time) if os.environ.get("BENCH_PROFILE") == "1" else None
        if profile is not None:
            profile.enable()
        await stop.wait()
        if profile is not None:
            profile.disable()
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).sort_stats("tottime")
            stats.print_stats(PROFILE_LINES)
            stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
            print(
                f"gateway profile (cProfile, CPU time, whole run, by own then cumulative time):\n{out.getvalue()}",
                file=sys.stderr,
            )
        await listening.stop(grace_seconds=1.0)
        writer.cancel()

    server.run(main())


def measure(*, seconds: int, connections: int, tmp: Path) -> dict[str, dict[str, float]]:
    """Every wrk run of the gateway benchmark, by name (nginx direct, proxy_pass, the gateway, …)."""
    direct, direct_port = nginx(tmp, "direct", "location / { root /usr/share/nginx/html; index index.html; }")
    proxy, proxy_port = nginx(
        tmp,
        "proxy",
        'location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }',
        http=f"upstream up {{ server 127.0.0.1:{direct_port}; keepalive 64; }}",
    )
    gateway_port = free_port()
    with ExitStack() as stack:
        stack.enter_context(direct)
        stack.enter_context(proxy)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve-gateway", str(direct_port), str(gateway_port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(_stop, child)
        if child.stdout is None:
            raise RuntimeError("the gateway child has no stdout")
        print(child.stdout.readline().strip())
        time.sleep(0.5)
        print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
        print(f"upstream clients (same {CLIENT_REQUESTS:,} requests to nginx, {CLIENT_CONCURRENCY} in flight):")
        asyncio.run(clients(direct_port))
        script = tmp / "scanners.lua"
        script.write_text(SCANNER_LUA)
        common = {"seconds": seconds, "connections": connections}
        gateway_url = f"http://127.0.0.1:{gateway_port}/"
        wrk(gateway_url, seconds=1, connections=connections)  # warm-up: pools, caches, rule views
        return {
            "nginx direct": wrk(f"http://127.0.0.1:{direct_port}/", **common),
            "nginx proxy_pass": wrk(f"http://127.0.0.1:{proxy_port}/", **common),
            "feint gateway": wrk(gateway_url, server_pid=child.pid, **common),
            "decoy sessions": wrk(gateway_url, script=script, server_pid=child.pid, **common),
            "nginx direct, 1 conn": wrk(f"http://127.0.0.1:{direct_port}/", seconds=seconds, connections=1),
            "gateway, 1 conn": wrk(gateway_url, seconds=seconds, connections=1, server_pid=child.pid),
        }


def _stop(child: subprocess.Popen[str]) -> None:
    """SIGTERM (the child writes its profile, when asked for one), then wait."""
    child.terminate()
    try:
        child.wait(timeout=STOP_SECONDS_MAX)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def report(runs: dict[str, dict[str, float]], *, seconds: int, connections: int) -> None:
    print(f"wrk -t1 -c{connections} -d{seconds}s (and -c1 where named):")
    for name, figures in runs.items():
        rps, p50, p99 = figures["rps"], figures["p50"], figures["p99"]
        cpu = f"   gateway CPU {figures['cpu_us']:5.0f} us/request" if "cpu_us" in figures else ""
        print(f"  {name:<20} {rps:9.0f} req/s   p50 {p50:7.3f} ms   p99 {p99:7.3f} ms{cpu}")
    gw, px = runs["feint gateway"], runs["nginx proxy_pass"]
    one, direct_one = runs["gateway, 1 conn"], runs["nginx direct, 1 conn"]
    added = one["p50"] - direct_one["p50"]
    ratio = gw["rps"] / px["rps"]
    print(f"gateway added latency p50 (1 connection): {added:.3f} ms (target <= 1 ms: {_met(added <= 1.0)})")
    print(f"gateway added latency p50 (-c{connections}): {gw['p50'] - runs['nginx direct']['p50']:.3f} ms")
    print(f"gateway throughput / nginx proxy_pass: {ratio:.2f}x (target >= 0.25x: {_met(ratio >= 0.25)})")
    print(f"decoy sessions/s through the gateway: {runs['decoy sessions']['rps']:.0f}")
    cpu = gw["cpu_us"]
    print(
        f"gateway CPU per benign request: {cpu:.0f} us: a core of its own would serve at most ~{1e6 / cpu:,.0f}/s "
        f"({1e6 / cpu / px['rps']:.2f}x this run's proxy_pass)"
    )
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve-gateway", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_gateway:
        serve_gateway(*args.serve_gateway)
        return 0
    if shutil.which("wrk") is None or nginx_binary() is None:
        print("needs wrk and nginx (apt-get install wrk nginx)")
        return 1
    with tempfile.TemporaryDirectory(prefix="feint-bench-gateway-") as folder:
        runs = measure(seconds=args.seconds, connections=args.connections, tmp=Path(folder))
    report(runs, seconds=args.seconds, connections=args.connections)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
