"""The CRS regression attacks and generated shoppers through the real gateway: who gets a decoy.

Every request goes over a real socket into the decoy server with the gateway responder, in
front of a shop upstream (200 for the shop's pages, 404 otherwise), judged by the starter rules
plus the shared Sigma rules for web servers. Clients are told apart by their source address (each a
different 127.x.y.z). Two plays of the same attacks:

* **per request**: each attack from its own fresh address, so only what the request itself
  shows counts (rules on its views, framing problems, user agent);
* **as recorded**: the attacks from one address, as the CRS harness sends them, so the
  client's behaviour and its decoy session count too (the gateway's real situation).

The shoppers (sessions of 5-20 page views from their own addresses) are played once,
interleaved with the attacks. Printed: threat-level distributions, detection and false-positive
rates at the divert threshold. Targets (asserted): >= 90% of attacks diverted as recorded,
<= 0.5% of benign requests diverted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from feint.camouflage.decoy import server
from feint.camouflage.engine import threat
from feint.camouflage.engine.clients import MemoryClients
from feint.camouflage.engine.decisions import Decision, DecisionLog
from feint.camouflage.engine.rulesource import RuleReloader, compile_rules
from feint.camouflage.engine.upstream import Upstream
from feint.camouflage.gateway import Gateway, OnePersona
from feint.shadow import synth
from feint.shadow.rules import Rule, load_rules, rule_set, starter_rules
from tests.conftest import shared_data
from tests.corpus.camouflage.crs_wire import WireRequest, load
from tests.integration.camouflage.conftest import FakeNginx

pytestmark = pytest.mark.corpus

THRESHOLD = 5
SHOPPERS = 500
API_CLIENTS = 0.10
CRAWLERS = 0.05
STALE_LINKS = 0.15
IN_FLIGHT_MAX = 24
ANSWER_SECONDS_MAX = 3.0
DETECTION_MIN = 0.90
FALSE_POSITIVE_MAX = 0.005
_SHOP = re.compile(
    rb"^/(|products|products/\d+|products/\d+/reviews|cart|checkout|account/orders|search|blog/[a-z-]+|"
    rb"static/js/app\.[0-9a-f]+\.js|static/css/site\.[0-9a-f]+\.css|images/p/\d+\.webp|api/v1/cart/items|"
    rb"api/v1/products/\d+|favicon\.ico|robots\.txt|about|contact)$"
)
_BROWSER_HEADS = (
    (b"Host", b"User-Agent", b"Accept", b"Accept-Language", b"Accept-Encoding", b"Referer", b"Connection", b"Cookie"),
    (b"Host", b"Connection", b"User-Agent", b"Accept", b"Sec-Fetch-Site", b"Sec-Fetch-Mode", b"Referer",
     b"Accept-Encoding", b"Accept-Language", b"Cookie"),
)  # fmt: skip


_LIBRARY_HEAD = (b"Host", b"User-Agent", b"Accept-Encoding", b"Accept", b"Connection")
_LIBRARY_AGENTS = (b"curl/8.5.0", b"python-requests/2.31.0", b"Go-http-client/1.1", b"okhttp/4.12.0")
_CRAWLER_AGENTS = (
    b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    b"Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
)


async def _shop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The protected application: the generated shop's pages exist, nothing else does."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            method, target = head.split(b" ", 2)[:2]
            found = _SHOP.match(target.split(b"?", 1)[0])
            status, body = (b"200 OK", b"<p>shop</p>\n") if found else (b"404 Not Found", b"not found\n")
            head = b"HTTP/1.1 %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % (status, len(body))
            writer.write(head if method == b"HEAD" else head + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


class Collected(DecisionLog):
    """A decision log that keeps decisions in memory, by client address."""

    def __init__(self) -> None:
        super().__init__(db=None, path=None, queue_max=1)
        self.by_ip: dict[str, list[Decision]] = collections.defaultdict(list)

    def submit(self, decision: Decision) -> None:
        self.by_ip[decision.record.c_ip or ""].append(decision)


@dataclass(frozen=True)
class Shopper:
    ip: str
    requests: tuple[bytes, ...]


def shoppers(rng: random.Random) -> Iterator[Shopper]:
    """Sessions of benign clients, each from its own address: mostly browsers, some API clients
    (curl, Python, Go: a library's head, no cookies) and some search-engine crawlers, which also
    follow stale links (404)."""
    for n in range(SHOPPERS):
        kind = rng.random()
        if kind < API_CLIENTS:
            agent, order, pages = rng.choice(_LIBRARY_AGENTS), _LIBRARY_HEAD, rng.randrange(3, 12)
        elif kind < API_CLIENTS + CRAWLERS:
            agent, order, pages = rng.choice(_CRAWLER_AGENTS), _LIBRARY_HEAD, rng.randrange(15, 40)
        else:
            agent, order, pages = (
                rng.choice(synth.USER_AGENTS).encode(),
                rng.choice(_BROWSER_HEADS),
                rng.randrange(5, 21),
            )
        cookie = b"session=%08x; cart=%d" % (rng.getrandbits(32), rng.randrange(100))
        requests = []
        for index in range(pages):
            page = synth.benign(rng, f"b{n}-{index}")
            if kind >= API_CLIENTS and kind < API_CLIENTS + CRAWLERS and rng.random() < STALE_LINKS:
                page = dataclasses.replace(page, cs_uri_stem=f"/old/page-{rng.randrange(1000)}.html", cs_method="GET")
            method = b"POST" if page.cs_method == "POST" else b"HEAD" if page.cs_method == "HEAD" else b"GET"
            target = (page.cs_uri_stem or "/") + (f"?{page.cs_uri_query}" if page.cs_uri_query else "")
            body = b"sku=%d&qty=%d" % (rng.randrange(1, 50_000), rng.randrange(1, 4)) if method == b"POST" else b""
            values = {
                b"Host": (page.cs_host or "shop.example.com").encode(),
                b"User-Agent": agent,
                b"Accept": b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                b"Accept-Language": b"en-GB,en;q=0.7",
                b"Accept-Encoding": b"gzip, deflate, br",
                b"Referer": (page.cs_referer or "").encode(),
                b"Connection": b"keep-alive",
                b"Cookie": cookie,
                b"Sec-Fetch-Site": b"same-origin",
                b"Sec-Fetch-Mode": b"navigate",
            }
            lines = [method + b" " + target.encode() + b" HTTP/1.1"]
            lines += [name + b": " + values[name] for name in order if values[name]]
            if body:
                lines += [b"Content-Type: application/x-www-form-urlencoded", b"Content-Length: %d" % len(body)]
            requests.append(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        yield Shopper(f"127.3.{n // 250}.{n % 250 + 1}", tuple(requests))


def _kind(agent: str | None) -> str:
    return threat.user_agent_class(agent)


async def _send(port: int, ip: str, raw: bytes) -> bool:
    """One request on its own connection from ``ip``; True when an answer arrived in time."""
    try:
        async with asyncio.timeout(ANSWER_SECONDS_MAX):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
            try:
                writer.write(raw)
                await writer.drain()
                return bool(await reader.read(65536))
            finally:
                writer.close()
    except (TimeoutError, ConnectionError):
        return False


async def _browse(port: int, shopper: Shopper) -> None:
    """A shopper's session on one kept-alive connection, one request after the other."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(shopper.ip, 0))
    try:
        for raw in shopper.requests:
            writer.write(raw)
            await writer.drain()
            async with asyncio.timeout(ANSWER_SECONDS_MAX):
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length and not raw.startswith(b"HEAD "):
                    await reader.readexactly(int(length.group(1)))
    finally:
        writer.close()


def webserver_rules(folder: Path) -> list[Rule]:
    """The shared Sigma rules for web server logs. The ``proxy`` ones describe an organisation's
    outbound traffic (C2 beacons; one lists Googlebot's user agent "only for proxy logs"), not
    requests arriving at a web application, so a tenant would not put them in front of one."""
    files = sorted(folder.rglob("*.yml"))
    return [rule for path in files if "category: webserver" in path.read_text() for rule in load_rules(path)]


@contextlib.asynccontextmanager
async def gateway_for_corpus(data: Path) -> AsyncIterator[tuple[int, Collected]]:
    shop = await asyncio.start_server(_shop, "127.0.0.1", 0)
    rules = starter_rules() + webserver_rules(data / "sigma")
    loaded = compile_rules(rule_set(rules, name="starter+sigma"), label="starter + Sigma webserver", tag="corpus")

    async def fixed(_: str | None) -> None:
        return None

    reloader = RuleReloader(fixed, poll_seconds=60)
    reloader.current = loaded
    decisions = Collected()
    gateway = Gateway(
        upstream=Upstream(f"http://127.0.0.1:{shop.sockets[0].getsockname()[1]}"),
        rules=reloader,
        clients=MemoryClients(),
        diverter=OnePersona(FakeNginx(), persona="nginx"),
        decisions=decisions,
        tenant_id=uuid.uuid4(),
        divert_threshold=THRESHOLD,
    )
    listening = await server.serve(gateway, host="127.0.0.1", port=0)
    try:
        yield listening.port, decisions
    finally:
        await listening.stop(grace_seconds=1)
        await gateway.upstream.close()
        shop.close()


def _distribution(decisions: list[Decision]) -> str:
    counts = collections.Counter(d.threat for d in decisions)
    total = max(1, len(decisions))
    return " ".join(f"{level}:{counts[level] / total:.1%}" for level in range(11) if counts[level])


def _report(name: str, decisions: list[Decision], sent: int) -> float:
    diverted = sum(1 for d in decisions if d.action == "divert")
    rate = diverted / max(1, sent)
    print(f"{name}: {sent} sent, {len(decisions)} judged, {diverted} diverted ({rate:.2%})")
    print(f"  threat levels: {_distribution(decisions)}")
    return rate


async def _gather_bounded(coroutines: list[object]) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT_MAX)

    async def one(coroutine: object) -> None:
        async with gate:
            await coroutine  # type: ignore[misc]

    await asyncio.gather(*(one(c) for c in coroutines))


async def test_crs_attacks_diverted_benign_passes() -> None:
    """>= 90% of CRS attacks get a decoy (as the harness sends them), <= 0.5% of shoppers' requests do."""
    data = shared_data()
    attacks: list[WireRequest] = [r for r in load(data / "crs-regression") if r.attack]
    rng = random.Random(8)
    benign = list(shoppers(rng))
    benign_sent = sum(len(s.requests) for s in benign)
    assert len(attacks) > 3_000 and benign_sent > 4_000

    async with gateway_for_corpus(data) as (port, decisions):
        # Per request: each attack from a fresh address.
        fresh = [f"127.2.{n // 250}.{n % 250 + 1}" for n in range(len(attacks))]
        await _gather_bounded([_send(port, ip, r.raw) for ip, r in zip(fresh, attacks, strict=True)])
        # As recorded: the harness's address, one connection per request, with the shoppers browsing alongside.
        harness = "127.0.0.2"
        sends = [_send(port, harness, r.raw) for r in attacks]
        browsing = [_browse(port, s) for s in benign]
        mixed: list[object] = []
        for index, send in enumerate(sends):
            mixed.append(send)
            if index % 8 == 0 and browsing:
                mixed.append(browsing.pop())
        mixed.extend(browsing)
        await _gather_bounded(mixed)

    per_request = [d for ip in fresh for d in decisions.by_ip.get(ip, [])]
    recorded = decisions.by_ip.get(harness, [])
    shopping = [d for s in benign for d in decisions.by_ip.get(s.ip, [])]
    print()
    intrinsic = _report("CRS attacks, per request (fresh client each)", per_request, len(attacks))
    detection = _report("CRS attacks, as recorded (one harness client)", recorded, len(attacks))
    false_positive = _report("benign clients", shopping, benign_sent)
    for kind in ("browser", "crawler"):
        chosen = [d for d in shopping if _kind(d.record.cs_user_agent) == kind]
        _report(f"  of which {kind}", chosen, len(chosen))
    print(f"at divert threshold {THRESHOLD}: detection {detection:.2%} (per request {intrinsic:.2%}), "
          f"benign false positives {false_positive:.3%}")  # fmt: skip
    assert len(shopping) == benign_sent
    assert detection >= DETECTION_MIN
    assert false_positive <= FALSE_POSITIVE_MAX
