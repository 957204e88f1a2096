"""The management API reads back what real traffic through the real gateway did: sessions, arms,
events, honeytokens and decision explanations, paged and filtered, on PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from feint.camouflage.engine.bands import band_of
from feint.camouflage.engine.honeytokens import digest
from feint.camouflage.listener import decoy_personas
from feint.platform.runtime import Platform
from tests.integration.camouflage.live import Live, live_gateway

pytestmark = pytest.mark.integration

BROWSER = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


@pytest.fixture
async def live(platform: Platform, tmp_path: Path, api_key: Callable[..., str]) -> AsyncIterator[Live]:
    async with live_gateway(platform, tmp_path, api_key) as running:
        yield running


async def test_session_arms_events_and_honeytokens(live: Live) -> None:
    """A diverted client's session, events and tokens read back; its arm's statistics change when it ends."""
    for path in (b"/", b"/admin/", b"/login/", b"/backup/db-backup.sql"):
        await live.send(path, agent=b"curl/8.5.0")
    sessions = (await live.get("/v1/sessions"))["items"]
    assert len(sessions) == 1
    session = sessions[0]
    assert session["ended_at"] is None and session["reward"] is None
    band, arm = session["band"], session["arm"]
    assert arm == f"{session['persona']}/{session['profile']}"
    tokens = live.book.sticky(session["client_key"])
    assert tokens is not None and tokens.tokens is not None
    values = list(tokens.tokens.values.values())

    before = {a["arm"]: a for a in (await live.get("/v1/arms", band=band))["items"]}
    assert before[arm]["pulls"] == 0 and before[arm]["active"] and before[arm]["ucb"] is None

    await live.end_sessions()
    await live.events(6, session_id=session["id"])  # start, 4 decoy requests, end
    ended = await live.get(f"/v1/sessions/{session['id']}")
    assert ended["ended_at"] is not None and ended["requests"] == 4 and 0 < ended["reward"] <= 1
    assert set(ended["paths"]) == {"/", "/admin/", "/login/", "/backup/db-backup.sql"}

    after = {a["arm"]: a for a in (await live.get("/v1/arms", band=band))["items"]}
    assert after[arm]["pulls"] == 1
    assert after[arm]["effectiveness"] == pytest.approx(ended["reward"])
    assert after[arm]["ucb"] == pytest.approx(ended["reward"])  # one pull in the band: ln 1 = 0
    assert all(a["band"] == band for a in after.values())
    metrics = (await live.api.get("/metrics")).text
    tenant = live.book.tenant_id
    gauge = f'feint_camouflage_arm_effectiveness{{arm="{arm}",band="{band}",tenant="{tenant}"}}'
    line = next(line for line in metrics.splitlines() if line.startswith(gauge))
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(ended["reward"])

    names = [e["eventid"] for e in ended["events"]]
    assert names.count("feint.decoy.request") == 4
    assert names[0] == "feint.session.end" and names[-1] == "feint.session.start"
    assert {e["session_id"] for e in ended["events"]} == {session["id"]}
    assert not ended["events_more"]
    kinds = {t["kind"] for t in ended["honeytokens"]}
    assert kinds == {"api_key", "aws_access_key_id", "aws_secret_access_key", "database_url", "database_password"}
    assert not any(t["used"] for t in ended["honeytokens"])
    listed = await live.api.get("/v1/honeytokens", params={"session_id": session["id"]}, headers=live.headers)
    for text in (json.dumps(ended), listed.text):
        leaked = [v for v in values if v in text] + [digest(v) for v in values if digest(v) in text]
        assert not leaked, "a honeytoken value or its whole digest is in an API answer"


async def test_used_honeytoken_shows_in_the_api(live: Live) -> None:
    """A session's API-key honeytoken presented to the management API is 401, marked used, and alerted."""
    await live.send(b"/.env", agent=b"curl/8.5.0")
    session = (await live.get("/v1/sessions"))["items"][0]
    found = live.book.sticky(session["client_key"])
    assert found is not None and found.tokens is not None
    planted = found.tokens.values
    stolen = next(v for k, v in planted.items() if k.value == "api_key")
    r = await live.api.get("/v1/sessions", headers={"authorization": f"Bearer {stolen}"})
    assert r.status_code == 401
    await live.events(1, event="feint.honeytoken.used")
    used = (await live.get("/v1/honeytokens", used="true"))["items"]
    assert [(t["kind"], t["session_id"], t["uses"]) for t in used] == [("api_key", session["id"], 1)]
    assert used[0]["prefix"] == stolen[:10] and len(used[0]["digest_prefix"]) == 12
    unused = (await live.get("/v1/honeytokens", used="false", session_id=session["id"]))["items"]
    assert len(unused) == 4
    alerts = (await live.get("/v1/events", event="feint.honeytoken.used"))["items"]
    assert [a["session_id"] for a in alerts] == [session["id"]]
    assert alerts == (await live.get("/v1/events", event="8005"))["items"]


async def test_decision_explanation_matches_the_log(live: Live) -> None:
    """GET /v1/decisions/{id} is the logged decision: threat, reasons, rules, persona, arm and session."""
    await live.send(b"/", agent=BROWSER)
    await live.send(b"/products?id=1%27%20union%20select%20password%20from%20users--", agent=b"curl/8.5.0")
    await live.decisions_written(2)
    logged = [json.loads(line) for line in live.log_path.read_text().splitlines()]
    allowed, diverted = logged
    assert allowed["action"] == "allow" and diverted["action"] == "divert"

    body = await live.get(f"/v1/decisions/{diverted['id']}")
    assert body["threat"] == diverted["threat"] and body["explanation"] == diverted["explanation"]
    assert body["rules"] == diverted["rules"] and body["rules"]
    assert [r["signal"] for r in body["rule_hits"]] == ["rule"] * len(body["rules"])
    assert {r["signal"] for r in body["request_signals"]} <= {"problem", "user-agent"}
    assert len(body["rule_hits"]) + len(body["request_signals"]) + len(body["behaviour"]) == len(body["explanation"])
    assert (body["session_id"], body["persona"], body["arm"]) == (
        diverted["session"],
        diverted["persona"],
        diverted["arm"],
    )
    assert body["request"]["cs_uri_stem"] == "/products" and body["request"]["sc_status"] == diverted["sc-status"]
    assert body["band"] == band_of(body["threat"]).value

    listed = (await live.get("/v1/decisions"))["items"]
    assert [d["id"] for d in listed] == [diverted["id"], allowed["id"]]
    assert [d["id"] for d in (await live.get("/v1/decisions", session_id=diverted["session"]))["items"]] == [
        diverted["id"]
    ]
    assert [d["action"] for d in (await live.get("/v1/decisions", action="allow"))["items"]] == ["allow"]
    above = (await live.get("/v1/decisions", threat_min=diverted["threat"]))["items"]
    assert diverted["id"] in [d["id"] for d in above] and all(d["threat"] >= diverted["threat"] for d in above)

    benign = await live.get(f"/v1/decisions/{allowed['id']}")
    assert benign["action"] == "allow" and benign["session_id"] is None and benign["threat"] == allowed["threat"]

    first = await live.api.get(f"/v1/decisions/{diverted['id']}", headers=live.headers)
    again = await live.api.get(
        f"/v1/decisions/{diverted['id']}", headers={**live.headers, "if-none-match": first.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    missing = await live.api.get(f"/v1/decisions/{uuid.uuid4()}", headers=live.headers)
    assert missing.status_code == 404 and missing.json()["type"] == "/problems/decision-not-found"


async def _pages(live: Live, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        body = await live.get(path, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


async def test_pagination_and_filters(live: Live) -> None:
    """Pages of sessions and events cover every row once, newest first; filters narrow; bad ones are 422."""
    for n in range(5):
        await live.send(b"/", agent=b"curl/8.%d.0" % n)
    everything = (await live.get("/v1/sessions"))["items"]
    assert len(everything) == 5
    pages = await _pages(live, "/v1/sessions", limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [s["id"] for p in pages for s in p] == [s["id"] for s in everything]
    starts = [s["started_at"] for s in everything]
    assert starts == sorted(starts, reverse=True)

    persona = everything[0]["persona"]
    by_persona = (await live.get("/v1/sessions", persona=persona))["items"]
    assert {s["id"] for s in by_persona} == {s["id"] for s in everything if s["persona"] == persona}
    by_arm = (await live.get("/v1/sessions", arm=everything[0]["arm"]))["items"]
    assert {s["arm"] for s in by_arm} == {everything[0]["arm"]}
    assert len((await live.get("/v1/sessions", band="light", ended="false"))["items"]) == 5
    assert (await live.get("/v1/sessions", band="maximum"))["items"] == []
    assert (await live.get("/v1/sessions", since="2999-01-01T00:00:00Z"))["items"] == []
    oldest = everything[-1]["started_at"]
    assert len((await live.get("/v1/sessions", until=oldest))["items"]) == 0
    assert len((await live.get("/v1/sessions", since=oldest))["items"]) == 5

    events = await live.events(10)  # a start and a decoy request per session
    event_pages = await _pages(live, "/v1/events", limit=3)
    assert [e["id"] for p in event_pages for e in p] == [e["id"] for e in events]
    starts_only = (await live.get("/v1/events", event="feint.session.start"))["items"]
    assert len(starts_only) == 5 and {e["logtype"] for e in starts_only} == {8001}
    one = (await live.get("/v1/events", session_id=everything[0]["id"]))["items"]
    assert {e["session_id"] for e in one} == {everything[0]["id"]}
    await live.decisions_written(5)
    decision_pages = await _pages(live, "/v1/decisions", limit=2)
    assert [len(p) for p in decision_pages] == [2, 2, 1]
    assert len({d["id"] for p in decision_pages for d in p}) == 5
    tokens = await _pages(live, "/v1/honeytokens", limit=4)
    assert sum(len(p) for p in tokens) == 25 and len({(t["session_id"], t["kind"]) for p in tokens for t in p}) == 25

    bad = {
        "/v1/sessions?band=purple": "query.band",
        "/v1/sessions?persona=Not%20A%20Name": "query.persona",
        "/v1/sessions?arm=nginx": "query.arm",
        "/v1/sessions?ended=perhaps": "query.ended",
        "/v1/sessions?since=1700000000": "query.since",
        "/v1/sessions?since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z": "query.until",
        "/v1/sessions?limit=0": "query.limit",
        "/v1/sessions?cursor=bm90LWEtY3Vyc29y": "query.cursor",
        "/v1/events?event=9999": "query.event",
        "/v1/events?event=feint.nothing": "query.event",
        "/v1/events?session_id=nope": "query.session_id",
        "/v1/honeytokens?used=sometimes": "query.used",
        "/v1/arms?band=huge": "query.band",
        "/v1/decisions?action=maybe": "query.action",
        "/v1/decisions?threat_min=11": "query.threat_min",
        "/v1/decisions?until=yesterday": "query.until",
    }
    for url, field in bad.items():
        r = await live.api.get(url, headers=live.headers)
        assert r.status_code == 422, f"{url}: {r.status_code} {r.text}"
        assert r.headers["content-type"] == "application/problem+json"
        assert field in [e["field"] for e in r.json()["errors"]], f"{url}: {r.text}"


async def test_personas_catalogue(live: Live) -> None:
    """The persona library with provenance and covered statuses; an ETag and 304; an unknown name is 404."""
    body = await live.get("/v1/personas")
    names = [p["name"] for p in body["items"]]
    assert names == sorted(decoy_personas())
    nginx = await live.get("/v1/personas/nginx-debian")
    assert nginx["server"].startswith("nginx/") and nginx["recorded_from"]["recorded_with"]
    assert {200, 404}.issubset(nginx["statuses"]) and "nginx-debian/tarpit" in nginx["arms"]
    first = await live.api.get("/v1/personas", headers=live.headers)
    again = await live.api.get("/v1/personas", headers={**live.headers, "if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    missing = await live.api.get("/v1/personas/iis-nothing", headers=live.headers)
    assert missing.status_code == 404 and missing.json()["known"] == names


async def test_allowlist_round_trip(live: Live) -> None:
    """PUT creates (201) then replaces the note (200) keeping created_at; addresses are normalised; DELETE once."""
    key = uuid.uuid4().hex
    put = await live.api.put(f"/v1/allowlist/{key}", json={"note": "uptime monitor"}, headers=live.headers)
    assert put.status_code == 201, put.text
    again = await live.api.put(f"/v1/allowlist/{key}", json={"note": "uptime monitor (eu)"}, headers=live.headers)
    assert again.status_code == 200 and again.json()["note"] == "uptime monitor (eu)"
    assert again.json()["created_at"] == put.json()["created_at"]
    v6 = await live.api.put("/v1/allowlist/2001:DB8:0::0001", json={}, headers=live.headers)
    assert v6.status_code == 201 and v6.json()["client"] == "2001:db8::1"
    listed = (await live.get("/v1/allowlist"))["items"]
    assert [e["client"] for e in listed] == sorted([key, "2001:db8::1"])
    assert (await live.get(f"/v1/allowlist/{key}"))["note"] == "uptime monitor (eu)"
    bad = await live.api.put("/v1/allowlist/not-a-client", json={}, headers=live.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "path.client"
    nul = await live.api.put(f"/v1/allowlist/{key}", json={"note": "a\x00b"}, headers=live.headers)
    assert nul.status_code == 422 and nul.json()["errors"][0]["field"] == "body.note"
    assert (await live.api.delete(f"/v1/allowlist/{key}", headers=live.headers)).status_code == 204
    gone = await live.api.delete(f"/v1/allowlist/{key}", headers=live.headers)
    assert gone.status_code == 404 and gone.json()["type"] == "/problems/client-not-allowed"


async def test_operator_key_names_the_tenant(live: Live, api_key: Callable[..., str]) -> None:
    """An operator key reads the tenant its Feint-Tenant header names, and is 400 without one (but for
    the persona library, which is no tenant's)."""
    await live.send(b"/", agent=b"curl/8.5.0")
    operator = {"authorization": f"Bearer {api_key(scope='operator')}"}
    bare = await live.api.get("/v1/sessions", headers=operator)
    assert bare.status_code == 400 and "Feint-Tenant" in bare.json()["detail"]
    named = await live.api.get("/v1/sessions", headers={**operator, "feint-tenant": "acme"})
    assert named.status_code == 200 and len(named.json()["items"]) == 1
    other = await live.api.get("/v1/sessions", headers={**operator, "feint-tenant": "nobody"})
    assert other.status_code == 404
    library = await live.api.get("/v1/personas", headers=operator)  # the same for every tenant
    assert library.status_code == 200 and library.json()["items"]
