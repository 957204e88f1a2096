"""The decision log carries the status the decoy actually sent, also when the session's engagement
profile delays the answer (nothing is sent at once: the status line is in the delayed part)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from feint.platform.runtime import Platform
from tests.integration.camouflage.live import Live, live_gateway

pytestmark = pytest.mark.integration

SQLMAP = b"sqlmap/1.7.2#stable (https://sqlmap.org)"
CLIENTS = 3  # new sessions of the maximum band: UCB1 tries untried arms first, the labyrinth among them


@pytest.fixture
async def live(platform: Platform, tmp_path: Path, api_key: Callable[..., str]) -> AsyncIterator[Live]:
    async with live_gateway(platform, tmp_path, api_key) as running:
        yield running


async def test_diverted_labyrinth_decisions_carry_the_status_sent(live: Live, platform: Platform) -> None:
    """sqlmap on ``/``: each diverted decision has the status of the decoy's answer, in PostgreSQL
    and in the JSON-lines log, the labyrinth profile (delayed first byte) included."""
    sent: dict[bytes, int] = {}
    for n in range(CLIENTS):
        agent = SQLMAP + b" client-" + str(n).encode()
        answer = await live.send(b"/", agent=agent)
        assert answer.startswith(b"HTTP/1.1 "), answer[:40]
        sent[agent] = int(answer[9:12])
    await live.decisions_written(CLIENTS)
    async with platform.db.connection() as conn:
        cur = await conn.execute(
            "SELECT cs_user_agent, sc_status, arm, diverted FROM camouflage_decisions ORDER BY decided_at"
        )
        rows = await cur.fetchall()
    assert len(rows) == CLIENTS and all(r["diverted"] for r in rows)
    assert any(r["arm"].endswith("/labyrinth") for r in rows), "no session played the delayed labyrinth profile"
    assert {r["cs_user_agent"].encode(): r["sc_status"] for r in rows} == sent
    logged = [orjson.loads(line) for line in live.log_path.read_text().splitlines()]
    assert [line["sc-status"] for line in logged] == [r["sc_status"] for r in rows]
