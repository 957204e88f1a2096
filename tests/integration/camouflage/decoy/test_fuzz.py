"""Fuzz: 100,000+ random and mutated requests against running decoys; nothing escapes, hangs or grows.

A seeded mutation generator over a seed corpus (the probe corpus of the fidelity harness: nmap,
WhatWeb, scanners and malformed requests, plus framing edge cases written here) rather than
hypothesis. Measured here (2 shared cores): hypothesis drew about 1,000 examples per second
through ``@given`` (binary or spliced seeds, database off), 100 s for 100,000 before sending
anything; this generator makes about 120,000 per second. The point is volume over a running
server, not shrinking. Each connection pipelines a burst in which every request is mutated with
a chance drawn per connection (2% to 100%), the others being seeds that keep the connection
alive, so that bursts go deep before a mutation breaks framing; most connections half-close
after their burst and the others are left to the server's timeouts, so that every close path runs.

Four decoys run on uvloop (the production loop): one with a responder that uses every reply
shape (immediate, awaited, trickled, streamed, closing), and the nginx, Apache and Express personas.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from feint.camouflage.decoy import probes
from feint.camouflage.decoy.contract import Connection, Limits, Reply, Request, TimeoutPhase
from feint.camouflage.decoy.http import RequestParser
from feint.camouflage.decoy.persona import load
from feint.camouflage.decoy.responder import PersonaResponder
from feint.camouflage.decoy.server import DecoyServer, run, serve

pytestmark = pytest.mark.integration

MUTATED_MIN = 100_000  # mutated or random requests sent
SEED = 20_261_201
WORKERS = 128  # concurrent client connections
BURST_MAX = 60  # requests pipelined on one connection
MUTATED_SHARES = (0.02, 0.1, 0.3, 1.0)  # chance that a request of a connection is mutated (drawn per connection)
HALF_CLOSE_SHARE = 0.8  # the other connections are left to the server's timeouts
CLOSE_SECONDS_MAX = 10.0  # a connection the server has not closed by then is a hang
RSS_GROWTH_BYTES_MAX = 64 * 1024 * 1024  # generous: the server must not grow with traffic
TIMEOUT_SECONDS = 0.15  # every read timeout of the decoys, so that connections left open end soon
LIMITS = Limits(
    request_line_bytes_max=1024,
    header_line_bytes_max=1024,
    header_bytes_max=4096,
    header_count_max=30,
    body_bytes_max=8192,
    header_timeout_seconds=TIMEOUT_SECONDS,
    body_timeout_seconds=TIMEOUT_SECONDS,
    keepalive_timeout_seconds=TIMEOUT_SECONDS,
    keepalive_requests_max=1000,
    answer_bad_method_byte_at_once=True,
)
EXTRA_SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\nX: a\r\n b\r\n\r\n",
    b"\r\n\n\r\nget /x HTTP/1.0\nConnection: keep-alive\n\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"TRACE / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n",
    b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /trickle HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\r\n",
]
ALPHABET = b"\r\n :;,\t\x00\x7f\xff0123456789aAfFzZ/%?#-GETPOSTHTTP/1.0chunked"


class ShapesResponder:
    """Every reply shape, chosen by the target: immediate, awaited, trickled, streamed, closing."""

    def __init__(self) -> None:
        self.timeouts = 0

    @property
    def limits(self) -> Limits:
        return LIMITS

    def respond(self, request: Request, conn: Connection) -> Reply | Awaitable[Reply]:
        text = b"%d %s %d" % (len(request.problems), request.method[:20], len(request.body))
        data = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
        target = request.target
        if target.startswith(b"/slow"):
            return self._later(data)
        if target.startswith(b"/trickle"):
            return Reply(data=data[:10], trickle=((0.0, data[10:20]), (0.001, data[20:])))
        if target.startswith(b"/stream"):
            return Reply(data=b"", stream=self._pieces(data))
        return Reply(data=data, close=target.startswith(b"/close") or not request.framing_intact)

    async def _later(self, data: bytes) -> Reply:
        await asyncio.sleep(0)
        return Reply(data=data)

    async def _pieces(self, data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 16):
            yield data[start : start + 16]

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        self.timeouts += 1
        return Reply(data=b"HTTP/1.1 408 Request Timeout\r\n\r\n") if phase == "head" else None


def keeps_alive(seed: bytes, personas: list[PersonaResponder]) -> bool:
    """Whether ``seed`` frames into clean HTTP/1.1 requests after which every persona keeps the connection."""
    parser = RequestParser(LIMITS)
    parser.feed(seed)
    requests = []
    while (request := parser.next_request()) is not None:
        requests.append(request)
    return (
        bool(requests)
        and parser.buffered == 0
        and all(
            r.framing_intact
            and not r.problems
            and r.version == b"HTTP/1.1"
            and r.method in (b"GET", b"HEAD", b"POST")
            and b"close" not in (r.header(b"connection") or b"").lower()
            and not r.target.startswith(b"/close")
            and not any(persona.respond(r, CONNECTION).close for persona in personas)
            for r in requests
        )
    )


CONNECTION = Connection(peer_host="127.0.0.1", peer_port=1, local_host="127.0.0.1", local_port=2, requests_served=0)


class Mutator:
    """Seeded byte-level mutations of seed requests, and now and then pure noise."""

    def __init__(self, seeds: list[bytes], framed: list[bytes], rng: random.Random) -> None:
        self.seeds = seeds
        self.framed = framed
        self.rng = rng

    def burst(self, count: int) -> tuple[list[bytes], int]:
        """``count`` requests, each mutated with a chance drawn per connection (else a keep-alive seed), and how many were."""
        rng = self.rng
        share = rng.choice(MUTATED_SHARES)
        burst: list[bytes] = []
        mutated = 0
        for _ in range(count):
            if rng.random() < share:
                burst.append(self.request())
                mutated += 1
            else:
                burst.append(rng.choice(self.framed))
        return burst, mutated

    def request(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.03:
            return rng.randbytes(rng.randint(1, 200))
        data = bytearray(rng.choice(self.seeds))
        if roll < 0.2:
            return bytes(data)  # a seed as is (the corpus holds malformed requests too)
        for _ in range(rng.randint(1, 4)):
            self._mutate(data)
        return bytes(data)

    def _mutate(self, data: bytearray) -> None:
        rng = self.rng
        pos = rng.randint(0, len(data))
        op = rng.randrange(9)
        if op == 0:
            data[pos:pos] = bytes(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4)))
        elif op == 1:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 2 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 3:
            end = min(len(data), pos + rng.randint(1, 40))
            data[pos:pos] = data[pos:end] * rng.randint(2, 50)
        elif op == 4:
            data[:] = data.replace(b"\r\n", b"\n") if rng.random() < 0.5 else data.replace(b"\n", b"\r\n", 1)
        elif op == 5:
            del data[pos:]
        elif op == 6:
            data[pos:pos] = rng.choice(self.seeds)[: rng.randint(0, 60)]
        elif op == 7:
            data[pos:pos] = b"X-%d: %s\r\n" % (rng.randrange(100), b"v" * rng.choice([1, 10, 600, 1100]))
        else:
            data[:] = data.swapcase() if rng.random() < 0.2 else data.replace(b" ", b"  ", 1)


@dataclass
class Tally:
    """What the clients did and saw."""

    requests: int = 0
    mutated: int = 0  # mutated seeds and random bytes among the requests
    bytes_sent: int = 0
    connections: int = 0
    closed_by_server: int = 0
    reset: int = 0
    hung: int = 0
    half_closed: int = 0
    latest: list[float] = field(default_factory=list)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def one_connection(port: int, mutator: Mutator, tally: Tally) -> None:
    """One pipelined burst; then half-close or wait for the server to close; count what happened."""
    rng = mutator.rng
    burst, mutated = mutator.burst(rng.randint(1, BURST_MAX))
    data = b"".join(burst)
    tally.requests += len(burst)
    tally.mutated += mutated
    tally.bytes_sent += len(data)
    tally.connections += 1
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(CLOSE_SECONDS_MAX):
            try:
                cuts = sorted(rng.sample(range(len(data)), min(len(data), rng.randint(0, 3))))
                for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                    writer.write(data[start:end])
                    await writer.drain()
                if rng.random() < HALF_CLOSE_SHARE:
                    tally.half_closed += 1
                    writer.write_eof()
            except ConnectionError:
                pass  # the server closed first (lost framing): reading tells how
            try:
                while await reader.read(65536):
                    pass
                tally.closed_by_server += 1
            except ConnectionError:
                tally.reset += 1
    except TimeoutError:
        tally.hung += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def fuzz() -> tuple[Tally, list[DecoyServer], list[dict[str, Any]], int, int, float]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    seeds = [p.render(hostport="127.0.0.1:80") for p in probes.load()]
    seeds = [s for s in seeds if 0 < len(s) <= 20_000] + EXTRA_SEEDS
    responders: list[Any] = [ShapesResponder()]
    for name in ("nginx-debian", "apache-debian", "express-4"):
        persona = PersonaResponder(load(name))
        # The personas' own limits, with short timeouts so that connections left open end soon.
        persona.persona = replace(
            persona.persona,
            limits=replace(
                persona.persona.limits,
                header_timeout_seconds=TIMEOUT_SECONDS,
                body_timeout_seconds=TIMEOUT_SECONDS,
                keepalive_timeout_seconds=TIMEOUT_SECONDS,
            ),
        )
        responders.append(persona)
    framed = [seed for seed in seeds if keeps_alive(seed, responders[1:])]
    servers = [await serve(r, send_timeout_seconds=2.0, linger_seconds=TIMEOUT_SECONDS) for r in responders]
    tally = Tally()
    rng = random.Random(SEED)

    async def worker(index: int, until: int) -> None:
        mutator = Mutator(seeds, framed, random.Random(rng.random()))
        while tally.mutated < until:
            await one_connection(servers[index % len(servers)].port, mutator, tally)

    started = time.perf_counter()
    warm = MUTATED_MIN // 10
    await asyncio.gather(*(worker(i, warm) for i in range(WORKERS)))
    await asyncio.sleep(0.5)
    gc.collect()
    rss_before = rss_bytes()
    await asyncio.gather(*(worker(i, MUTATED_MIN + warm) for i in range(WORKERS)))
    for server in servers:
        await server.stop(grace_seconds=5.0)
    gc.collect()
    rss_after = rss_bytes()
    return tally, servers, errors, rss_before, rss_after, time.perf_counter() - started


def test_fuzz_hundred_thousand_requests() -> None:
    """100,000+ random and mutated requests: no exception escapes, every connection closes, memory stays flat."""
    tally, servers, errors, rss_before, rss_after, seconds = run(fuzz())
    framed = sum(s.stats.requests for s in servers)
    print(
        f"\nfuzz: {tally.requests:,} requests sent, {tally.mutated:,} of them mutated or random "
        f"({tally.bytes_sent / 1e6:.1f} MB) on {tally.connections:,} "
        f"connections in {seconds:.1f} s; {framed:,} framed and answered by the decoys; closes: "
        f"{tally.closed_by_server:,} FIN, {tally.reset:,} reset, {tally.hung} hung; "
        f"{tally.half_closed:,} half-closed by the client"
    )
    for server in servers:
        print(f"  {type(server.responder).__name__}: {server.stats}")
    growth = rss_after - rss_before
    print(f"  RSS {rss_before / 1e6:.1f} MB -> {rss_after / 1e6:.1f} MB (growth {growth / 1e6:+.1f} MB)")
    assert not errors, errors[:3]
    assert tally.mutated >= MUTATED_MIN
    assert tally.hung == 0
    assert tally.closed_by_server + tally.reset == tally.connections
    assert all(s.stats.connections_open == 0 for s in servers)
    assert all(s.stats.responder_errors == 0 for s in servers)
    assert framed >= MUTATED_MIN // 2  # requests reach the responders, not only the parser
    assert growth < RSS_GROWTH_BYTES_MAX
