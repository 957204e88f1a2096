"""Canary rollouts over HTTP on a real database: start, operator actions, checks, rollback, promotion, audit."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from feint.platform.runtime import Platform
from feint.shadow import repository
from feint.shadow.canary import service
from feint.shadow.canary.windows import Decision, MemorySource
from tests.integration.shadow import sigma
from tests.integration.shadow.conftest import new_version

pytestmark = pytest.mark.integration

Keys = Callable[..., dict[str, str]]


async def _shadow_version(client: httpx.AsyncClient, headers: dict[str, str], *docs: str) -> int:
    """Version N of the starter rule set, moved to shadow (production is the starter, version 1)."""
    await client.get("/v1/rulesets", headers=headers)  # installs the starter set
    version = await new_version(
        client, headers, "starter", *[{"name": f"d{i}.yml", "yaml": d} for i, d in enumerate(docs)]
    )
    number = int(version["version"])
    moved = await client.post(
        f"/v1/rulesets/starter/versions/{number}/transition",
        json={"to": "shadow", "reason": "shadow it"},
        headers=headers,
    )
    assert moved.status_code == 200, moved.text
    return number


def _start_body(candidate: int, **extra: Any) -> dict[str, Any]:
    return {"ruleset": "starter", "candidate": candidate, "reason": "try the new SQLi rule", **extra}


async def _make_due(url: str, rollout_id: str) -> None:
    """Bring a rollout's next check to now (the controller's clock runs in the database)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE shadow_rollouts SET next_check_at = now() - interval '1 second' WHERE id = %s", (rollout_id,)
        )


def _record(source: MemorySource, rollout_id: str, *, canary_fp: int, production_fp: int, n: int = 400) -> None:
    """n benign requests per slice (the canary diverting canary_fp of them) and n bots, all caught."""
    at = datetime.now(UTC)
    rid = uuid.UUID(rollout_id)
    for i in range(n):
        for canary, fp in ((True, canary_fp), (False, production_fp)):
            source.record(
                rid, Decision(at=at, canary=canary, diverted=i < fp, latency_us=50.0, error=False, label="benign")
            )
            source.record(rid, Decision(at=at, canary=canary, diverted=True, latency_us=50.0, error=False, label="bot"))


async def test_start_needs_an_approving_evaluation_unless_forced(
    shadow: httpx.AsyncClient, keys: Keys, clean_db: str
) -> None:
    """Without an approving evaluation: 409; with an approving one it starts; force is recorded as such."""
    admin = keys("acme", "admin")
    number = await _shadow_version(shadow, admin, sigma.SQLI)
    refused = await shadow.post("/v1/rollouts", json=_start_body(number), headers=admin)
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/candidate-not-evaluated")
    version = (await shadow.get(f"/v1/rulesets/starter/versions/{number}", headers=admin)).json()
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        tenant = await (await conn.execute("SELECT id FROM tenants WHERE name = 'acme'")).fetchone()
        assert tenant is not None
        await conn.execute(
            """INSERT INTO shadow_evaluations (tenant_id, id, status, progress, request, inputs, report, runner,
                                               created_by, started_at, finished_at)
               VALUES (%s, %s, 'succeeded', 1, '{}', %s, '{"decision": "APPROVE_CANARY"}', 'test', 'test', now(), now())""",
            (
                tenant[0],
                uuid.uuid4(),
                psycopg.types.json.Jsonb({"candidate": {"content_hash": version["content_hash"]}}),
            ),
        )
    started = await shadow.post("/v1/rollouts", json=_start_body(number), headers=admin)
    assert started.status_code == 201, started.text
    body = started.json()
    assert (body["phase"], body["weight_percent"], body["forced"]) == ("running", 5.0, False)
    assert body["evaluation_id"] is not None
    again = await shadow.post("/v1/rollouts", json=_start_body(number, force=True), headers=admin)
    assert again.status_code == 409  # the version is in canary now, and one live rollout per rule set


async def test_operator_actions_are_audited_and_scoped(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """pause/resume/abort need admin, change the phase, and each lands in the rule history with its reason."""
    admin = keys("acme", "admin")
    number = await _shadow_version(shadow, admin, sigma.SQLI)
    started = (await shadow.post("/v1/rollouts", json=_start_body(number, force=True), headers=admin)).json()
    assert started["forced"] is True
    rid = started["id"]
    reader = keys("acme", "read")
    assert (await shadow.post(f"/v1/rollouts/{rid}/pause", json={"reason": "x"}, headers=reader)).status_code == 403
    other = keys("globex", "admin")
    assert (await shadow.get(f"/v1/rollouts/{rid}", headers=other)).status_code == 404
    paused = await shadow.post(f"/v1/rollouts/{rid}/pause", json={"reason": "traffic spike"}, headers=admin)
    assert paused.json()["phase"] == "paused"
    again = await shadow.post(f"/v1/rollouts/{rid}/pause", json={"reason": "twice"}, headers=admin)
    assert again.status_code == 409
    resumed = await shadow.post(f"/v1/rollouts/{rid}/resume", json={"reason": "spike over"}, headers=admin)
    assert resumed.json()["phase"] == "running"
    aborted = await shadow.post(f"/v1/rollouts/{rid}/abort", json={"reason": "wrong file"}, headers=admin)
    assert (aborted.json()["phase"], aborted.json()["weight_percent"]) == ("aborted", 0.0)
    version = (await shadow.get(f"/v1/rulesets/starter/versions/{number}", headers=admin)).json()
    assert version["state"] == "retired"
    history = (await shadow.get("/v1/rulesets/starter/history", headers=admin)).json()["items"]
    canary = [h for h in reversed(history) if h["event"] == "canary"]
    assert [h["details"]["event"] for h in canary] == ["started", "paused", "resumed", "aborted"]
    assert all(h["actor"].startswith("key:") for h in canary)
    assert "wrong file" in canary[-1]["reason"]
    assert (await shadow.get("/v1/rulesets/starter/rollout", headers=admin)).status_code == 404


async def test_a_candidate_that_flags_benign_traffic_is_rolled_back_at_the_first_step(
    shadow: httpx.AsyncClient, keys: Keys, platform: Platform, clean_db: str
) -> None:
    """FP rate far above production: the first check rolls back to weight 0 and retires the candidate."""
    admin = keys("acme", "admin")
    number = await _shadow_version(shadow, admin, sigma.SQLI)
    rid = (await shadow.post("/v1/rollouts", json=_start_body(number, force=True), headers=admin)).json()["id"]
    live = await shadow.get("/v1/rulesets/starter/rollout", headers=admin)
    assert live.json()["weight_percent"] == 5.0
    etag = live.headers["etag"]
    assert (
        await shadow.get("/v1/rulesets/starter/rollout", headers={**admin, "if-none-match": etag})
    ).status_code == 304
    source = MemorySource()
    _record(source, rid, canary_fp=120, production_fp=1)
    await _make_due(clean_db, rid)
    [checked] = await service.check_due(platform.db, source=source, now=datetime.now(UTC) + timedelta(seconds=1))
    assert (checked.phase, checked.weight) == ("rolled_back", 0.0)
    assert any("false_positive_rate" in r for r in checked.reasons)
    detail = (await shadow.get(f"/v1/rulesets/starter/versions/{number}", headers=admin)).json()
    assert detail["state"] == "retired"
    assert (await shadow.get("/v1/rulesets/starter", headers=admin)).json()["production"] == 1
    history = (await shadow.get("/v1/rulesets/starter/history", headers=admin)).json()["items"]
    rolled = next(h for h in history if h["event"] == "canary" and h["details"]["event"] == "rolled-back")
    assert rolled["actor"] == "feint:canary-controller"
    fp = next(r for r in rolled["details"]["results"] if r["metric"] == "false_positive_rate")
    assert fp["outcome"] == "fail" and fp["test"] == "two-proportion-z" and fp["canary"] == pytest.approx(0.3)
    assert rolled["details"]["weight_before"] == 5.0 and rolled["details"]["weight_after"] == 0.0
    assert (await shadow.get("/v1/rulesets/starter/rollout", headers=admin)).status_code == 404


async def test_a_better_candidate_is_promoted_and_the_old_production_is_one_rollback_away(
    shadow: httpx.AsyncClient, keys: Keys, platform: Platform, clean_db: str
) -> None:
    """Passing checks walk 10 → 50 → production; the former production returns with one rollback."""
    admin = keys("acme", "admin")
    number = await _shadow_version(shadow, admin, sigma.SQLI)
    body = _start_body(
        number, force=True, steps=[10, 50, 100], guards=[{"metric": "false_positive_rate", "threshold": 0.01}]
    )
    rid = (await shadow.post("/v1/rollouts", json=body, headers=admin)).json()["id"]
    source = MemorySource()
    weights = []
    for _ in range(2):
        _record(source, rid, canary_fp=0, production_fp=2)
        await _make_due(clean_db, rid)
        [row] = await service.check_due(platform.db, source=source, now=datetime.now(UTC) + timedelta(seconds=1))
        weights.append((row.phase, row.weight))
    assert weights == [("running", 50.0), ("promoted", 100.0)]
    ruleset = (await shadow.get("/v1/rulesets/starter", headers=admin)).json()
    assert ruleset["production"] == number
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        tenant = await (await conn.execute("SELECT id FROM tenants WHERE name = 'acme'")).fetchone()
    assert tenant is not None
    restored = await repository.rollback(
        platform.db, tenant_id=tenant[0], ref="starter", number=1, reason="back", actor="test"
    )
    assert restored.state == "production"


async def test_a_candidate_without_data_pauses(
    shadow: httpx.AsyncClient, keys: Keys, platform: Platform, clean_db: str
) -> None:
    """With no labelled traffic every check is inconclusive; at the limit the rollout pauses for a human."""
    admin = keys("acme", "admin")
    number = await _shadow_version(shadow, admin, sigma.SQLI)
    rid = (
        await shadow.post("/v1/rollouts", json=_start_body(number, force=True, inconclusive_limit=2), headers=admin)
    ).json()["id"]
    source = MemorySource()
    phases = []
    for _ in range(2):
        await _make_due(clean_db, rid)
        [row] = await service.check_due(platform.db, source=source, now=datetime.now(UTC))
        phases.append(row.phase)
    assert phases == ["running", "paused"]
    assert row.weight == 5.0
    assert any("too little data" in r for r in row.reasons)
    assert await service.check_due(platform.db, source=source, now=datetime.now(UTC)) == []


async def test_bad_plans_get_422_naming_the_field(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """Decreasing steps, an unknown metric or an empty reason are refused with the field named."""
    admin = keys("acme", "admin")
    number = await _shadow_version(shadow, admin, sigma.SQLI)
    bad_steps = await shadow.post("/v1/rollouts", json=_start_body(number, steps=[50, 5]), headers=admin)
    assert bad_steps.status_code == 422
    assert "steps" in bad_steps.text
    bad_metric = await shadow.post(
        "/v1/rollouts", json=_start_body(number, guards=[{"metric": "vibes", "threshold": 1}]), headers=admin
    )
    assert bad_metric.status_code == 422
    no_reason = await shadow.post(
        "/v1/rollouts", json={"ruleset": "starter", "candidate": number, "reason": ""}, headers=admin
    )
    assert no_reason.status_code == 422


async def test_feedback_is_stored_per_client_and_source(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """A verdict replaces the previous one of the same source; other tenants do not see it; bad keys get 422."""
    writer = keys("acme", "write")
    key = "0123456789abcdef0123456789abcdef"
    first = await shadow.post("/v1/feedback", json={"client_key": key, "verdict": "bot"}, headers=writer)
    assert first.status_code == 201, first.text
    second = await shadow.post(
        "/v1/feedback", json={"client_key": key, "verdict": "benign", "note": "customer appeal upheld"}, headers=writer
    )
    assert second.json()["verdict"] == "benign"
    listed = (await shadow.get("/v1/feedback", headers=writer)).json()["items"]
    assert [(f["client_key"], f["source"], f["verdict"]) for f in listed] == [(key, "analyst", "benign")]
    assert (await shadow.get("/v1/feedback", headers=keys("globex", "read"))).json()["items"] == []
    bad = await shadow.post("/v1/feedback", json={"client_key": "10.0.0.1", "verdict": "bot"}, headers=writer)
    assert bad.status_code == 422
