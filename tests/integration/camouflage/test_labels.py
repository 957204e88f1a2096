"""Labels from what the real gateway saw: bots by engagement and honeytokens, known-good clients
from the allow-list; the file is the one `feint shadow evaluate --labels` reads."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from feint.camouflage import app as camouflage_app
from feint.camouflage import store
from feint.platform.runtime import Platform
from tests.conftest import serve_app
from tests.integration.camouflage.conftest import Running, running_gateway

pytestmark = pytest.mark.integration

BROWSER = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
FRIEND = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15"
SCANNER = b"sqlmap/1.7.2#stable (https://sqlmap.org)"
THIEF = b"python-requests/2.31.0"
STARTER_RULES = Path(__file__).parents[3] / "src" / "feint" / "shadow" / "starter_rules"


def _get(path: bytes, agent: bytes) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: " + agent + b"\r\nConnection: close\r\n\r\n"
    )


HEAD_SECONDS_MAX = 30.0  # the slowest engagement profile trickles its body; the head comes first


async def exchange(port: int, raw: bytes) -> bytes:
    """Send one request and read the head of the answer (a decoy may trickle the body for long)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(HEAD_SECONDS_MAX):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


@dataclass
class Seen:
    gw: Running
    keys: dict[bytes, str]  # user agent -> client key, from the decision log
    ids: dict[bytes, list[str]]  # user agent -> decision ids


async def _decisions(platform: Platform, tenant_id: uuid.UUID, count: int) -> list[dict[str, object]]:
    for _ in range(200):
        async with platform.db.connection() as conn:
            cur = await conn.execute(
                "SELECT id::text AS id, client_key, cs_user_agent, diverted FROM camouflage_decisions "
                "WHERE tenant_id = %s ORDER BY decided_at",
                (tenant_id,),
            )
            rows = await cur.fetchall()
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(rows)} decisions written, expected {count}")


async def _events(platform: Platform, tenant_id: uuid.UUID, logtype: int) -> list[dict[str, object]]:
    for _ in range(200):
        async with platform.db.connection() as conn:
            cur = await conn.execute(
                "SELECT client_key FROM camouflage_events WHERE tenant_id = %s AND logtype = %s", (tenant_id, logtype)
            )
            rows = await cur.fetchall()
        if rows:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"no event {logtype} written")


@pytest.fixture
async def seen(platform: Platform, tmp_path: Path) -> AsyncIterator[Seen]:
    """Through the real gateway and decoy engine: a scanner probing 6 times, a client reading the
    decoy's /.env (a honeytoken), two shoppers; the decisions and events are in PostgreSQL."""
    async with running_gateway(platform, tmp_path, engine=True) as gw:
        for n in range(6):
            await exchange(gw.port, _get(b"/admin/?page=%d" % n, SCANNER))
        await exchange(gw.port, _get(b"/.env?x=1%27%20union%20select%201--", THIEF))
        for agent in (BROWSER, FRIEND):
            await exchange(gw.port, _get(b"/", agent))
            await exchange(gw.port, _get(b"/products/1", agent))
        rows = await _decisions(platform, gw.tenant_id, 11)
        await _events(platform, gw.tenant_id, store.TOKEN_EVENTS[0])
        keys = {str(r["cs_user_agent"]).encode(): str(r["client_key"]) for r in rows}
        ids: dict[bytes, list[str]] = {}
        for r in rows:
            ids.setdefault(str(r["cs_user_agent"]).encode(), []).append(str(r["id"]))
        assert all(r["diverted"] for r in rows if r["cs_user_agent"] in (SCANNER.decode(), THIEF.decode()))
        async with platform.db.connection() as conn:
            await store.allow(conn, tenant_id=gw.tenant_id, client=keys[FRIEND], note="our monitoring")
        yield Seen(gw, keys, ids)


def _parse(text: str) -> dict[str, int]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["id", "label"]
    return {request_id: int(label) for request_id, label in rows[1:]}


async def test_labels_route_csv_and_json(
    seen: Seen, platform: Platform, api_key: Callable[..., str], tmp_path: Path
) -> None:
    """Scanner and honeytoken thief are 1, the allow-listed shopper 0, the unknown shopper absent;
    CSV and JSON agree, and the CSV is accepted by `feint shadow evaluate --labels`."""
    key = api_key(tenant="acme", scope="read")
    async with serve_app(camouflage_app.create(platform)) as client:
        answer = await client.get("/v1/labels", params={"since": "1h"}, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/csv")
        labels = _parse(answer.text)
        as_json = await client.get(
            "/v1/labels", params={"since": "1h", "format": "json"}, headers={"Authorization": f"Bearer {key}"}
        )
    expected = dict.fromkeys(seen.ids[SCANNER] + seen.ids[THIEF], 1) | dict.fromkeys(seen.ids[FRIEND], 0)
    assert labels == expected
    body = as_json.json()
    assert {item["id"]: item["label"] for item in body["items"]} == expected
    assert (body["bots"], body["benign"]) == (7, 2)

    labels_file = tmp_path / "labels.csv"
    labels_file.write_text(answer.text)
    report = tmp_path / "report.json"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "feint", "shadow", "evaluate", "--production", str(STARTER_RULES),
         "--candidate", str(STARTER_RULES), "--traffic", str(seen.gw.log_path), "--labels", str(labels_file),
         "--out", str(report)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    evaluated = json.loads(report.read_text())
    assert (evaluated["dataset"]["labeled"], evaluated["dataset"]["unknown_label_ids"]) == (9, 0)
    assert (evaluated["dataset"]["attacks"], evaluated["dataset"]["benign"]) == (7, 2)
    assert evaluated["dataset"]["malformed_labels"] == 0


async def test_labels_allow_list_setting_wins_over_engagement(
    seen: Seen, clean_db: str, make_settings: Callable[..., object], api_key: Callable[..., str]
) -> None:
    """A client in FEINT_CAMOUFLAGE_ALLOW_CLIENTS is benign even though it probed the decoys."""
    from feint.platform.runtime import build

    settings = make_settings(database_url=clean_db, camouflage_allow_clients=f" {seen.keys[SCANNER]} ,")
    other = build(settings, database_url=clean_db)  # type: ignore[arg-type]
    await other.open()
    try:
        key = api_key(tenant="acme", scope="read")
        async with serve_app(camouflage_app.create(other)) as client:
            answer = await client.get("/v1/labels", params={"since": "1h"}, headers={"Authorization": f"Bearer {key}"})
    finally:
        await other.close()
    labels = _parse(answer.text)
    assert {labels[i] for i in seen.ids[SCANNER]} == {0}
    assert {labels[i] for i in seen.ids[THIEF]} == {1}


async def test_labels_tenant_isolated_and_window(seen: Seen, platform: Platform, api_key: Callable[..., str]) -> None:
    """Another tenant's key sees none of acme's labels; a window before the traffic holds none."""
    other = api_key(tenant="globex", scope="read")
    async with serve_app(camouflage_app.create(platform)) as client:
        theirs = await client.get("/v1/labels", params={"since": "1h"}, headers={"Authorization": f"Bearer {other}"})
        mine = api_key(tenant="acme", scope="read")
        earlier = await client.get(
            "/v1/labels",
            params={"since": "2020-01-01T00:00:00Z", "until": "2020-01-02T00:00:00"},
            headers={"Authorization": f"Bearer {mine}"},
        )
    assert theirs.status_code == 200
    assert theirs.text == "id,label\n"
    assert earlier.text == "id,label\n"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "query.since"),
        ({"since": "1h", "until": "2h"}, "query.until"),
        ({"since": "2000-01-01T00:00:00Z", "until": "2002-01-01T00:00:00Z"}, "query.since"),
        ({"since": "1h", "format": "xml"}, "format"),
    ],
)
async def test_labels_bad_window_is_422_naming_the_field(
    platform: Platform, api_key: Callable[..., str], params: dict[str, str], field: str
) -> None:
    """A window that is not one is refused with problem+json naming the field."""
    key = api_key(tenant="acme", scope="read")
    async with serve_app(camouflage_app.create(platform)) as client:
        answer = await client.get("/v1/labels", params=params, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert field in answer.text


async def test_labels_need_a_key_and_a_tenant(platform: Platform, api_key: Callable[..., str]) -> None:
    """No key: 401; an operator key without Feint-Tenant: 400; with it, the tenant's labels."""
    async with serve_app(camouflage_app.create(platform)) as client:
        anonymous = await client.get("/v1/labels", params={"since": "1h"})
        operator = api_key(scope="operator")
        bare = await client.get("/v1/labels", params={"since": "1h"}, headers={"Authorization": f"Bearer {operator}"})
    assert anonymous.status_code == 401
    assert bare.status_code == 400


async def test_labels_cli_writes_the_file(
    seen: Seen, clean_db: str, tmp_path: Path, make_settings: Callable[..., object]
) -> None:
    """`feint camouflage labels --since 1h --out labels.csv` writes what the route answers."""
    from tests.conftest import service_env

    out = tmp_path / "cli-labels.csv"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "feint", "camouflage", "labels", "--since", "1h", "--tenant", "acme", "--out", str(out)],
        env=service_env(clean_db, tmp_path / "home"), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    labels = _parse(out.read_text())
    assert sorted(labels.values()) == [0, 0] + [1] * 7
    assert "9 labels (7 bots, 2 benign)" in " ".join(done.stderr.split())
    bad = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "feint", "camouflage", "labels", "--since", "soon", "--tenant", "acme", "--out", str(out)],
        env=service_env(clean_db, tmp_path / "home"), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--since" in bad.stderr
