"""The live canary path on a real database: gateway replicas split by the rollout, log both slices,
the controller reads the decision log, and a rollback reaches every replica at its next poll."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from feint.camouflage.engine.decisions import Decision, DecisionLog
from feint.camouflage.engine.rulesource import RuleReloader
from feint.platform.runtime import Platform
from feint.shadow.canary import service
from feint.shadow.canary.live import DecisionLogSource
from feint.shadow.record import RequestRecord
from tests.integration.shadow import sigma
from tests.integration.shadow.conftest import new_version

pytestmark = pytest.mark.integration

Keys = Callable[..., dict[str, str]]
CLIENTS = 4_000


async def _start(shadow: httpx.AsyncClient, admin: dict[str, str]) -> tuple[int, str]:
    await shadow.get("/v1/rulesets", headers=admin)
    version = await new_version(shadow, admin, "starter", {"name": "sqli.yml", "yaml": sigma.SQLI})
    number = int(version["version"])
    moved = await shadow.post(
        f"/v1/rulesets/starter/versions/{number}/transition", json={"to": "shadow", "reason": "r"}, headers=admin
    )
    assert moved.status_code == 200, moved.text
    body = {"ruleset": "starter", "candidate": number, "reason": "live test", "force": True, "steps": [10, 50, 100]}
    started = await shadow.post("/v1/rollouts", json=body, headers=admin)
    assert started.status_code == 201, started.text
    return number, str(started.json()["id"])


def _reloader(platform: Platform) -> RuleReloader:
    return RuleReloader.for_settings(db=platform.db, tenant="acme", ruleset="starter", path=None, poll_seconds=1.0)


async def _tenant(url: str) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT id FROM tenants WHERE name = 'acme'")).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def _decision(
    tenant_id: uuid.UUID,
    client_key: str,
    at: datetime,
    *,
    diverted: bool,
    tag: str,
    version: int | None,
    rollout_id: uuid.UUID | None,
    canary: bool,
    c_ip: str,
) -> Decision:
    """A decision of the gateway for ``client_key`` at ``at``: diverted (threat 9) or allowed."""
    return Decision(
        record=RequestRecord(id=str(uuid.uuid4()), c_ip=c_ip, cs_method="GET", cs_uri_stem="/"),
        decided_at=at,
        tenant_id=tenant_id,
        client_key=client_key,
        fingerprint="fh1_test",
        threat=9 if diverted else 0,
        action="divert" if diverted else "allow",
        explanation=[],
        rules=(),
        rules_tag=tag,
        ruleset_version=version,
        rollout_id=rollout_id,
        canary=canary,
        eval_latency_us=40.0,
    )


async def test_replicas_split_log_both_slices_and_obey_a_rollback(
    shadow: httpx.AsyncClient, keys: Keys, platform: Platform, clean_db: str
) -> None:
    """Two replicas pick the same clients for the candidate; the guards read their decisions; a rollback empties it."""
    admin = keys("acme", "admin")
    number, rollout_id = await _start(shadow, admin)
    replicas = [_reloader(platform), _reloader(platform)]
    for replica in replicas:
        await replica.refresh()
    first, second = replicas
    assert first.canary is not None
    assert second.canary is not None
    assert second.canary.rollout_id == first.canary.rollout_id
    assert (first.canary.weight_percent, first.canary.rules.version) == (10.0, number)
    client_keys = [f"{i:032x}" for i in range(CLIENTS)]
    picks = [[bool(r.rules_for(k) and r.rules_for(k).canary) for k in client_keys] for r in replicas]  # type: ignore[union-attr]
    assert picks[0] == picks[1]
    assert 0.07 < sum(picks[0]) / CLIENTS < 0.13

    # Every client is a known-good customer; the candidate diverts a third of its share.
    tenant_id = await _tenant(clean_db)
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        for key in client_keys:
            await conn.execute(
                "INSERT INTO camouflage_allowlist (tenant_id, client, note) VALUES (%s, %s, 'customer')",
                (tenant_id, key),
            )
    log = DecisionLog(db=platform.db, path=None, queue_max=100_000)
    now = datetime.now(UTC)
    for i, key in enumerate(client_keys):
        rules = first.rules_for(key)
        assert rules is not None
        diverted = rules.canary and i % 3 == 0
        log.submit(
            _decision(
                tenant_id, key, now, diverted=diverted, tag=rules.tag, version=rules.version,
                rollout_id=rules.rollout_id, canary=rules.canary, c_ip="10.0.0.1",
            )
        )  # fmt: skip
    await log.flush()
    source = DecisionLogSource(platform.db)
    window = await source.window(
        tenant_id=tenant_id,
        rollout_id=uuid.UUID(rollout_id),
        since=now - timedelta(seconds=1),
        until=now + timedelta(seconds=1),
    )
    assert window.canary.benign == sum(picks[0])
    assert window.production.benign == CLIENTS - sum(picks[0])
    assert window.production.benign_diverted == 0
    assert window.canary.benign_diverted == sum(1 for i, p in enumerate(picks[0]) if p and i % 3 == 0)
    assert len(window.canary.latencies_us) == sum(picks[0])

    # The controller's check on those decisions rolls the candidate back (a critical guard failed) ...
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        await conn.execute(
            "UPDATE shadow_rollouts SET next_check_at = now() - interval '1 second', "
            "step_started_at = %s WHERE id = %s",
            (now - timedelta(seconds=1), rollout_id),
        )
    [checked] = await service.check_due(platform.db, source=source, now=now + timedelta(seconds=1))
    assert (checked.phase, checked.weight) == ("rolled_back", 0.0)
    # ... and at their next poll no replica judges anyone with the candidate.
    for replica in replicas:
        await replica.refresh()
        assert replica.canary is None
        assert all(not replica.rules_for(k).canary for k in client_keys[:500])  # type: ignore[union-attr]


async def test_guards_and_labels_share_one_definition_of_a_bot(platform: Platform, clean_db: str) -> None:
    """Clients whose decoy sessions are still running: the guards count the live evidence (probes,
    a honeytoken taken) as the labels do, with the same precedence verdict > allow-list > engagement,
    and the guards' counts equal the labels' of the same decisions."""
    from feint.camouflage import store
    from feint.camouflage.engine.events import Event, EventId
    from feint.camouflage.listener import ensure_tenant

    tenant_id = await ensure_tenant(platform, "acme")
    rollout = uuid.uuid4()
    prober, thief, customer, appealed, flagged, unknown = (f"{n:032x}" for n in range(1, 7))
    # (client, canary slice, diverted requests, allowed requests)
    traffic = [(prober, True, 5, 0), (thief, False, 1, 0), (customer, True, 5, 0), (appealed, False, 6, 0),
               (flagged, True, 0, 2), (unknown, False, 0, 3)]  # fmt: skip
    async with await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as conn:
        for client in (customer, flagged):
            await conn.execute(
                "INSERT INTO camouflage_allowlist (tenant_id, client, note) VALUES (%s, %s, 'customer')",
                (tenant_id, client),
            )
        for client, verdict in ((appealed, "benign"), (flagged, "bot")):
            await conn.execute(
                "INSERT INTO shadow_feedback (tenant_id, client_key, source, verdict, created_by) "
                "VALUES (%s, %s, 'analyst', %s, 'test')",
                (tenant_id, client, verdict),
            )
    await store.CamouflageStore(platform.db).insert_events(
        [Event(EventId.HONEYTOKEN_TAKEN, tenant_id, datetime.now(UTC).timestamp(), client_key=thief)]
    )
    log = DecisionLog(db=platform.db, path=None, queue_max=100)
    now = datetime.now(UTC)
    for client, canary, diverted, allowed in traffic:
        for n in range(diverted + allowed):
            log.submit(
                _decision(
                    tenant_id, client, now, diverted=n < diverted, tag="t", version=2,
                    rollout_id=rollout, canary=canary, c_ip="10.0.0.2",
                )
            )  # fmt: skip
    await log.flush()
    since, until = now - timedelta(seconds=1), now + timedelta(seconds=1)
    window = await DecisionLogSource(platform.db).window(
        tenant_id=tenant_id, rollout_id=rollout, since=since, until=until
    )
    # canary: prober 5 bot (diverted), customer 5 benign (allow-list beats engagement), flagged 2 bot
    # (verdict beats allow-list); production: thief 1 bot (honeytoken), appealed 6 benign, unknown unlabelled.
    assert (window.canary.bots, window.canary.bots_diverted, window.canary.benign) == (7, 5, 5)
    assert (window.canary.benign_diverted, window.canary.requests) == (5, 12)
    assert (window.production.bots, window.production.bots_diverted, window.production.benign) == (1, 1, 6)
    assert (window.production.benign_diverted, window.production.requests) == (6, 10)
    async with platform.db.connection() as conn:
        labels = await store.labels(conn, tenant_id=tenant_id, since=since, until=until, allowed=(), probes_min=5)
    bots = sum(label for _, label in labels)
    assert (bots, len(labels) - bots) == (
        window.canary.bots + window.production.bots,
        window.canary.benign + window.production.benign,
    )
