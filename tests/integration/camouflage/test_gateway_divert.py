"""Threatening requests get the decoy, the upstream never sees them, and the session sticks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from feint.camouflage.engine.rulesource import RuleReloader
from feint.platform.runtime import Platform
from feint.shadow.traffic import ingest
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
