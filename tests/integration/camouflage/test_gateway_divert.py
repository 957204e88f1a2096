"""Threatening requests get the decoy, the upstream never sees them, and the session sticks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from feint.camouflage.engine.rulesource import RuleReloader
from feint.platform.runtime import Platform
from feint.shadow.ingest import ingest
from tests.integration.camouflage.conftest import DECOY_BODY, Running, exchange, running_gateway

pytestmark = pytest.mark.integration

BROWSER = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


def _get(path: bytes, agent: bytes = BROWSER) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: " + agent + b"\r\nConnection: close\r\n\r\n"
    )


async def test_attack_diverted_and_sticky(gw: Running) -> None:
    """A SQL injection is answered by the decoy; the same client's next harmless request too."""
    before = len(gw.upstream.requests)
    attack = await exchange(gw.port, _get(b"/products?id=1%27%20union%20select%20password%20from%20users--"))
    assert attack.endswith(DECOY_BODY)
    harmless = await exchange(gw.port, _get(b"/"))
    assert harmless.endswith(DECOY_BODY)
    assert len(gw.upstream.requests) == before
    other_client = await exchange(gw.port, _get(b"/", agent=b"Mozilla/5.0 (Macintosh) AppleWebKit/605 Safari"))
    assert b"X-Echo: 1" in other_client  # another client (different key) still reaches the upstream


async def test_scanner_user_agent_diverted(gw: Running) -> None:
    """sqlmap's user agent alone reaches the divert threshold."""
    answer = await exchange(gw.port, _get(b"/", agent=b"sqlmap/1.7.2#stable (https://sqlmap.org)"))
    assert answer.endswith(DECOY_BODY)
    assert gw.upstream.requests == []


async def test_malformed_request_line_never_forwarded(gw: Running) -> None:
    """A request line the parser cannot read goes to the decoy, not upstream."""
    await exchange(gw.port, b"GARBAGE\r\n\r\n")
    assert gw.upstream.requests == []


async def test_decision_log_in_postgres_and_jsonl(platform: Platform, tmp_path: Path, database_url: str) -> None:
    """Each decision has a unique id in PostgreSQL and in the JSON-lines file, which shadow ingest reads."""
    async with running_gateway(platform, tmp_path) as gw:
        await exchange(gw.port, _get(b"/ok"))
        await exchange(gw.port, _get(b"/etc/passwd?file=../../../../etc/passwd", agent=b"curl/8.0"))
        for _ in range(50):
            if gw.decisions.written >= 2:
                break
            await asyncio.sleep(0.05)
        log_path = gw.log_path
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["action"] for line in lines] == ["allow", "divert"]
    assert lines[0]["sc-status"] == 200 and lines[1]["threat"] >= 5
    assert lines[1]["explanation"] and lines[1]["session"]
    async with platform.db.connection() as conn:
        cursor = await conn.execute(
            "SELECT id::text, action, threat, diverted, sc_status, cs_uri_stem, session_id FROM camouflage_decisions"
            " ORDER BY decided_at"
        )
        rows = await cursor.fetchall()
    assert [row["id"] for row in rows] == [line["id"] for line in lines]
    assert rows[1]["diverted"] and rows[1]["session_id"] is not None
    report = ingest([log_path], tmp_path / "decisions.parquet")
    assert report.rows == 2 and report.malformed == 0 and report.formats


async def test_rules_reload_without_restart(platform: Platform, tmp_path: Path) -> None:
    """A rule added to the rules file diverts within the poll bound, without a restart."""
    folder = tmp_path / "rules"
    folder.mkdir()
    rule = (
        "title: Canary path\nid: 4b1d6f0e-6a0c-4c35-9d0a-3b6c2f7d9e01\nstatus: test\nlogsource:\n"
        "    category: webserver\ndetection:\n    selection:\n        cs-uri-stem: '/canary-{n}'\n"
        "    condition: selection\nlevel: critical\n"
    )
    (folder / "a.yml").write_text(rule.format(n=1))
    reloader = RuleReloader.for_settings(db=None, tenant="acme", ruleset="x", path=folder, poll_seconds=0.1)
    async with running_gateway(platform, tmp_path, rules=reloader) as gw:
        task = asyncio.create_task(reloader.run())
        try:
            assert b"X-Echo" in await exchange(gw.port, _get(b"/canary-2"))
            (folder / "b.yml").write_text(rule.format(n=2).replace("4b1d6f0e", "5c2e7a1f"))
            for _ in range(40):
                await asyncio.sleep(0.1)
                if reloader.current is not None and reloader.current.count == 2:
                    break
            answer = await exchange(gw.port, _get(b"/canary-2", agent=BROWSER + b" reload"))
            assert answer.endswith(DECOY_BODY)
        finally:
            task.cancel()


async def test_repository_promotion_reloads(platform: Platform, tmp_path: Path, database_url: str) -> None:
    """The tenant's production version in the rule repository is what judges; a new one is picked up."""
    from feint.shadow import repository

    async with running_gateway(platform, tmp_path) as gw:
        reloader = gw.gateway.rules
        assert reloader.current is not None and reloader.current.tag == "starter"
        await repository.ensure_starter(platform.db, tenant_id=gw.tenant_id)
        assert await reloader.refresh()
        assert reloader.current.version == 1
        assert not await reloader.refresh()  # unchanged: nothing reloaded


async def test_authz_endpoint_for_trusted_proxy(gw: Running) -> None:
    """A trusted proxy gets 200/403 decisions (or 200 + X-Feint-Route in route mode); others are judged as traffic."""
    import ipaddress

    gw.gateway.trusted_proxies = (ipaddress.ip_network("127.0.0.1/32"),)
    ask = b"GET /.feint/authz HTTP/1.1\r\nHost: gw\r\nX-Original-URI: %s\r\nX-Original-Method: GET\r\n"
    ask += b"X-Real-IP: 198.51.100.7\r\nUser-Agent: %s\r\n%sConnection: close\r\n\r\n"
    allow = await exchange(gw.port, ask % (b"/shop", BROWSER, b""))
    assert allow.startswith(b"HTTP/1.1 200 OK\r\nX-Feint-Decision: allow\r\nX-Feint-Threat: 0\r\n")
    deny = await exchange(gw.port, ask % (b"/?q=1+union+select+2", BROWSER, b""))
    assert deny.startswith(b"HTTP/1.1 403 Forbidden\r\nX-Feint-Decision: divert\r\n")
    route = await exchange(gw.port, ask % (b"/", b"sqlmap/1.7", b"X-Feint-Mode: route\r\n"))
    assert route.startswith(b"HTTP/1.1 200 OK\r\nX-Feint-Decision: divert\r\nX-Feint-Route: decoy\r\n")
    assert gw.upstream.requests == []
    gw.gateway.trusted_proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    untrusted = await exchange(gw.port, ask % (b"/shop", BROWSER, b""))
    assert b"X-Echo: 1" in untrusted  # not a proxy we trust: an ordinary request, forwarded


async def test_bait_path_diverts(gw: Running) -> None:
    """A path only decoys serve (a honeytoken file) is enough to divert a browser."""
    from feint.camouflage.listener import bait_paths

    gw.gateway.decoy_paths = bait_paths()
    assert "/.env" in gw.gateway.decoy_paths
    answer = await exchange(gw.port, _get(b"/.env"))
    assert answer.endswith(DECOY_BODY) and gw.upstream.requests == []


async def test_high_threat_alerted_once_per_session(gw: Running) -> None:
    """A client diverted at threat >= 9 raises one alert when its session starts, not one per request."""
    alerts: list[dict[str, object]] = []

    class Recorder:
        def emit_threat(self, **fields: object) -> None:
            alerts.append(fields)

    gw.gateway.alerts = Recorder()
    for _ in range(3):
        await exchange(gw.port, _get(b"/?id=1+union+select+2", agent=b"sqlmap/1.7"))
    assert len(alerts) == 1 and alerts[0]["threat"] == 10


async def test_response_rule_counts_for_next_requests(gw: Running) -> None:
    """A 500 answering a quote in the query fires the post-response rule; its weight carries to the
    client's next request (seen in that decision's explanation)."""
    agent = b"curl/8.5.0"
    first = await exchange(gw.port, _get(b"/fail?name=o'brien", agent=agent))
    assert first.startswith(b"HTTP/1.1 500 ")  # forwarded: a quote alone is no threat
    await exchange(gw.port, _get(b"/ok", agent=agent))
    for _ in range(50):
        if gw.decisions.written >= 2:
            break
        await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in gw.log_path.read_text().splitlines()]
    carried = [r for r in lines[-1]["explanation"] if r["signal"] == "response-rule"]
    assert carried and carried[0]["points"] == 4.0
