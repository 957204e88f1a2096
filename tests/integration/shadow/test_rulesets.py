"""The rule repository over HTTP on a real database: rule sets, versions, states, rollback, diff."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from feint.platform.runtime import Platform
from feint.shadow import repository, store, views
from feint.shadow.rules.model import rule_set
from feint.shadow.rules.parse import parse_rules
from tests.integration.shadow import sigma
from tests.integration.shadow.conftest import new_version, walk_to

pytestmark = pytest.mark.integration

Keys = Callable[..., dict[str, str]]


async def test_first_request_installs_starter_as_production(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """A tenant's first request installs the starter set as version 1 in production, once."""
    acme = keys("acme", "read")
    listed = await shadow.get("/v1/rulesets", headers=acme)
    assert listed.status_code == 200
    [starter] = listed.json()["items"]
    assert starter["name"] == "starter" and starter["production"] == 1 and starter["versions"] == 1
    again = await shadow.get("/v1/rulesets", headers=keys("acme", "read"))
    assert [r["id"] for r in again.json()["items"]] == [starter["id"]]
    history = (await shadow.get("/v1/rulesets/starter/history", headers=acme)).json()["items"]
    assert [(h["event"], h["to_state"], h["actor"]) for h in history] == [("installed", "production", "feint")]
    other = (await shadow.get("/v1/rulesets", headers=keys("globex", "read"))).json()["items"]
    assert [r["name"] for r in other] == ["starter"] and other[0]["id"] != starter["id"]


async def test_starter_installed_once_even_after_replacement(platform: Platform, keys: Keys) -> None:
    """ensure_starter installs for a tenant only once, and not when no starter rules are packaged."""
    keys("acme", "read")
    async with platform.db.connection() as conn:
        cur = await conn.execute("SELECT id FROM tenants WHERE name = 'acme'")
        tenant_id = (await cur.fetchone())["id"]  # type: ignore[index]
    assert await repository.ensure_starter(platform.db, tenant_id=tenant_id, documents=()) is None
    installed = await repository.ensure_starter(platform.db, tenant_id=tenant_id)
    assert installed is not None and installed.production == 1
    assert await repository.ensure_starter(platform.db, tenant_id=tenant_id) is None


async def test_concurrent_first_requests_install_once(
    platform: Platform, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When another process installs the starter set between the check and the insert, nothing is doubled."""
    keys("acme", "read")
    async with platform.db.connection() as conn:
        tenant_id = await store.tenant_id_by_name(conn, "acme")
    assert tenant_id is not None
    assert await repository.ensure_starter(platform.db, tenant_id=tenant_id) is not None

    async def not_yet(*args: Any) -> bool:
        return False  # the check ran before the other process committed

    monkeypatch.setattr(store, "starter_installed", not_yet)
    assert await repository.ensure_starter(platform.db, tenant_id=tenant_id) is None
    assert len(await repository.list_rulesets(platform.db, tenant_id=tenant_id, limit=10, offset=0)) == 1


async def test_starter_cache_is_bounded(
    shadow: httpx.AsyncClient, keys: Keys, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process set of tenants known to have the starter set is bounded; past the bound it starts over."""
    monkeypatch.setattr(views, "STARTER_CACHE_TENANTS_MAX", 1)
    for tenant in ("acme", "globex", "initech"):
        assert (await shadow.get("/v1/rulesets", headers=keys(tenant, "read"))).status_code == 200
    assert len(platform.extras[views.STARTER_DONE_KEY]) == 1


async def test_starter_name_taken_keeps_tenant_rules(platform: Platform, keys: Keys) -> None:
    """A tenant that already has a rule set named starter keeps it; nothing is installed over it."""
    keys("acme", "read")
    async with platform.db.connection() as conn:
        cur = await conn.execute("SELECT id FROM tenants WHERE name = 'acme'")
        tenant_id = (await cur.fetchone())["id"]  # type: ignore[index]
    mine = await repository.create_ruleset(
        platform.db, tenant_id=tenant_id, name="starter", description="mine", actor="test"
    )
    assert await repository.ensure_starter(platform.db, tenant_id=tenant_id) is None
    kept = await repository.get_ruleset(platform.db, tenant_id=tenant_id, ref="starter")
    assert kept.id == mine.id and kept.versions == 0


async def test_starter_that_does_not_compile_is_an_invariant(platform: Platform, keys: Keys) -> None:
    """Broken shipped starter rules are a packaging fault (500), never blamed on the client."""
    keys("acme", "read")
    async with platform.db.connection() as conn:
        cur = await conn.execute("SELECT id FROM tenants WHERE name = 'acme'")
        tenant_id = (await cur.fetchone())["id"]  # type: ignore[index]
    broken = [repository.Document(name="bad.yml", yaml="title: [")]
    with pytest.raises(repository.InvariantViolated, match="starter rules do not compile"):
        await repository.ensure_starter(platform.db, tenant_id=tenant_id, documents=broken)


async def test_create_and_read_rule_sets(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """Rule sets are created by name, found by name or id, and names are unique per tenant."""
    writer = keys("acme", "write")
    created = await shadow.post("/v1/rulesets", json={"name": "web", "description": "web rules"}, headers=writer)
    assert created.status_code == 201
    body = created.json()
    assert body["versions"] == 0 and body["production"] is None and body["created_by"].startswith("key:")
    by_id = await shadow.get(f"/v1/rulesets/{body['id']}", headers=writer)
    assert by_id.json()["name"] == "web"
    taken = await shadow.post("/v1/rulesets", json={"name": "web"}, headers=writer)
    assert taken.status_code == 409 and taken.json()["type"] == "/problems/ruleset-name-taken"
    uuid_name = await shadow.post("/v1/rulesets", json={"name": str(uuid.uuid4())}, headers=writer)
    assert uuid_name.status_code == 422 and uuid_name.json()["errors"][0]["field"] == "body.name"
    bad = await shadow.post("/v1/rulesets", json={"name": "Bad Name"}, headers=writer)
    assert bad.status_code == 422
    missing = await shadow.get("/v1/rulesets/nope", headers=writer)
    assert missing.status_code == 404 and missing.json()["type"] == "/problems/ruleset-not-found"
    page = await shadow.get("/v1/rulesets?limit=1&offset=1", headers=writer)
    assert [r["name"] for r in page.json()["items"]] == ["web"]
    reader = keys("acme", "read")
    assert (await shadow.post("/v1/rulesets", json={"name": "x"}, headers=reader)).status_code == 403


async def test_create_version_stores_texts_rules_weights(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """A version keeps its Sigma texts, rules, weights, threshold, hash, author and message, as a draft."""
    writer = keys("acme", "write")
    version = await new_version(
        shadow,
        writer,
        "web",
        sigma.SQLI,
        {"name": "traversal.yml", "yaml": sigma.TRAVERSAL},
        weights={sigma_key(sigma.SQLI): 2.5},
        threshold=2.0,
        message="first cut",
    )
    assert version["version"] == 1 and version["state"] == "draft" and version["rule_count"] == 2
    assert version["author"] == version["created_by"] and version["author"].startswith("key:")
    assert version["message"] == "first cut" and version["threshold"] == 2.0
    assert [d["name"] for d in version["documents"]] == ["document-1.yml", "traversal.yml"]
    assert version["documents"][0]["yaml"] == sigma.SQLI
    weights = {r["key"]: r["weight"] for r in version["rules"]}
    assert weights == {sigma_key(sigma.SQLI): 2.5, sigma_key(sigma.TRAVERSAL): 4.0}
    rules = parse_rules(sigma.SQLI) + parse_rules(sigma.TRAVERSAL)
    # The hash is of the content: neither the document's name nor the folder it came from counts.
    expected = rule_set(rules, weights={sigma_key(sigma.SQLI): 2.5}, threshold=2.0).content_hash
    assert version["content_hash"] == expected
    authored = await new_version(shadow, writer, "web", sigma.SCANNER, author="Ada Lovelace")
    assert authored["author"] == "Ada Lovelace" and authored["version"] == 2
    listed = (await shadow.get("/v1/rulesets/web/versions", headers=writer)).json()["items"]
    assert [v["version"] for v in listed] == [2, 1]
    older = (await shadow.get("/v1/rulesets/web/versions?before=2", headers=writer)).json()["items"]
    assert [v["version"] for v in older] == [1]
    one = await shadow.get("/v1/rulesets/web/versions/1", headers=writer)
    assert one.json()["rules"][1]["document"] == "traversal.yml" and one.json()["ruleset"] == "web"
    assert (await shadow.get("/v1/rulesets/web/versions/9", headers=writer)).status_code == 404
    assert (await shadow.get("/v1/rulesets/web", headers=writer)).json()["versions"] == 2


def sigma_key(text: str) -> str:
    return parse_rules(text)[0].key


BAD_INPUTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("yaml", {"documents": ["title: [unclosed\nid: x\n"]}, 422, "rule-invalid", "document-1.yml:"),
    (
        "sigma",
        {"documents": [sigma.SQLI.replace("    condition: selection\n", "")]},
        422,
        "rule-invalid",
        "condition",
    ),
    (
        "modifier",
        {"documents": [sigma.rule("Uses fieldref", field="cs-uri-query|fieldref", value="cs-host")]},
        422,
        "rule-unsupported",
        "fieldref",
    ),
    ("duplicate", {"documents": [sigma.SQLI, sigma.SQLI]}, 422, "validation-failed", "is in both"),
    (
        "names",
        {"documents": [{"name": "a.yml", "yaml": sigma.SQLI}, {"name": "a.yml", "yaml": sigma.SCANNER}]},
        422,
        "validation-failed",
        "used twice",
    ),
    ("weights", {"documents": [sigma.SQLI], "weights": {"nope": 1.0}}, 422, "validation-failed", "not in this version"),
    ("range", {"documents": [sigma.SQLI], "weights": {"x": -1}}, 422, "validation-failed", "body.weights"),
    ("threshold", {"documents": [sigma.SQLI], "threshold": 99.0}, 422, "validation-failed", "not reachable"),
    ("empty", {"documents": []}, 422, "validation-failed", "body.documents"),
]


@pytest.mark.parametrize(("case", "body", "status", "slug", "needle"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_versions_are_422_and_store_nothing(
    shadow: httpx.AsyncClient, keys: Keys, case: str, body: dict[str, Any], status: int, slug: str, needle: str
) -> None:
    """Invalid YAML, Sigma, modifiers, weights or thresholds: 422 saying where; no version, no history."""
    writer = keys("acme", "write")
    await shadow.post("/v1/rulesets", json={"name": "web"}, headers=writer)
    response = await shadow.post("/v1/rulesets/web/versions", json={"message": "bad", **body}, headers=writer)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["type"] == f"/problems/{slug}"
    assert needle in response.text
    if case == "modifier":
        assert problem["errors"][0]["rule"] == "Uses fieldref"
    if case == "yaml":
        assert problem["errors"][0]["line"] >= 1 and problem["errors"][0]["column"] is not None
        assert problem["errors"][0]["path"] == "document-1.yml"
    assert (await shadow.get("/v1/rulesets/web", headers=writer)).json()["versions"] == 0
    assert (await shadow.get("/v1/rulesets/web/versions", headers=writer)).json()["items"] == []
    assert (await shadow.get("/v1/rulesets/web/history", headers=writer)).json()["items"] == []


async def test_version_for_missing_rule_set_is_404(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """A version for a rule set that does not exist is refused (and nothing is stored)."""
    response = await shadow.post(
        "/v1/rulesets/ghost/versions", json={"message": "m", "documents": [sigma.SQLI]}, headers=keys()
    )
    assert response.status_code == 404


async def test_transitions_walk_the_table_and_promotion_retires(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """draft → shadow → canary → production; the new production retires the old; history says who and why."""
    admin = keys("acme", "admin")
    v1 = await new_version(shadow, admin, "web", sigma.SQLI)
    await walk_to(shadow, admin, "web", v1["version"], "production")
    v2 = await new_version(shadow, admin, "web", sigma.SQLI_V2)
    promoted = await walk_to(shadow, admin, "web", v2["version"], "production")
    assert promoted["state"] == "production"
    states = {
        v["version"]: v["state"] for v in (await shadow.get("/v1/rulesets/web/versions", headers=admin)).json()["items"]
    }
    assert states == {1: "retired", 2: "production"}
    assert (await shadow.get("/v1/rulesets/web", headers=admin)).json()["production"] == 2
    events = (await shadow.get("/v1/rulesets/web/history", headers=admin)).json()["items"]
    newest = events[:2]
    assert [(e["event"], e["version"], e["from_state"], e["to_state"]) for e in newest] == [
        ("transition", 2, "canary", "production"),
        ("retired", 1, "production", "retired"),
    ]
    assert all(e["actor"].startswith("key:") and e["reason"] == "to production" for e in newest)
    assert len(events) == 2 + 3 + 1 + 3  # two created, three steps each, one retirement


@pytest.mark.parametrize(
    ("path", "to", "current"),
    [
        ((), "production", "draft"),
        (("shadow",), "draft", "shadow"),
        (("shadow", "canary", "production"), "retired", "production"),
        (("retired",), "shadow", "retired"),
        (("shadow",), "shadow", "shadow"),
    ],
)
async def test_invalid_transition_is_409_naming_both_states(
    shadow: httpx.AsyncClient, keys: Keys, path: tuple[str, ...], to: str, current: str
) -> None:
    """A move the table does not allow is 409 naming where the version is and where it was sent."""
    admin = keys("acme", "admin")
    await new_version(shadow, admin, "web", sigma.SQLI)
    for step in path:
        ok = await shadow.post("/v1/rulesets/web/versions/1/transition", json={"to": step}, headers=admin)
        assert ok.status_code == 200, ok.text
    refused = await shadow.post("/v1/rulesets/web/versions/1/transition", json={"to": to}, headers=admin)
    assert refused.status_code == 409
    problem = refused.json()
    assert problem["type"] == "/problems/transition-invalid"
    assert (problem["from_state"], problem["to_state"]) == (current, to)
    assert f"from {current} to {to}" in problem["detail"]


async def test_transition_needs_admin_and_known_state(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """Promotions need the admin scope; an unknown state is 422; an unknown version 404."""
    writer = keys("acme", "write")
    await new_version(shadow, writer, "web", sigma.SQLI)
    denied = await shadow.post("/v1/rulesets/web/versions/1/transition", json={"to": "shadow"}, headers=writer)
    assert denied.status_code == 403
    admin = keys("acme", "admin")
    bad = await shadow.post("/v1/rulesets/web/versions/1/transition", json={"to": "live"}, headers=admin)
    assert bad.status_code == 422
    missing = await shadow.post("/v1/rulesets/web/versions/7/transition", json={"to": "shadow"}, headers=admin)
    assert missing.status_code == 404 and missing.json()["type"] == "/problems/version-not-found"


async def test_rollback_is_instant_and_audited(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """Rollback returns production to a former production version and records who, when and why."""
    admin = keys("acme", "admin")
    for text in (sigma.SQLI, sigma.SQLI_V2):
        version = await new_version(shadow, admin, "web", text)
        await walk_to(shadow, admin, "web", version["version"], "production")
    draft = await new_version(shadow, admin, "web", sigma.SCANNER)
    whoami = (await shadow.get("/v1/whoami", headers=admin)).json()
    rolled = await shadow.post(
        "/v1/rulesets/web/rollback", json={"version": 1, "reason": "v2 blocks customers"}, headers=admin
    )
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["state"] == "production" and rolled.json()["version"] == 1
    event = (await shadow.get("/v1/rulesets/web/history?limit=2", headers=admin)).json()["items"]
    assert event[0]["event"] == "rollback" and event[0]["version"] == 1 and event[0]["replaced"] == 2
    assert event[0]["actor"] == f"key:{whoami['key_id']}" and event[0]["reason"] == "v2 blocks customers"
    assert event[0]["at"] and event[1]["event"] == "retired" and event[1]["version"] == 2
    forward = await shadow.post("/v1/rulesets/web/rollback", json={"version": 2, "reason": "fixed"}, headers=admin)
    assert forward.status_code == 200 and forward.json()["version"] == 2
    same = await shadow.post("/v1/rulesets/web/rollback", json={"version": 2, "reason": "again"}, headers=admin)
    assert same.status_code == 409 and "already in production" in same.json()["detail"]
    never = await shadow.post(
        "/v1/rulesets/web/rollback", json={"version": draft["version"], "reason": "x"}, headers=admin
    )
    assert never.status_code == 409 and "never in production" in never.json()["detail"]
    missing = await shadow.post("/v1/rulesets/web/rollback", json={"version": 99, "reason": "x"}, headers=admin)
    assert missing.status_code == 404
    no_reason = await shadow.post("/v1/rulesets/web/rollback", json={"version": 1}, headers=admin)
    assert no_reason.status_code == 422
    writer = keys("acme", "write")
    assert (
        await shadow.post("/v1/rulesets/web/rollback", json={"version": 1, "reason": "x"}, headers=writer)
    ).status_code == 403


async def test_rollback_without_production_is_409(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """A rule set that never went live has nothing to roll back."""
    admin = keys("acme", "admin")
    await new_version(shadow, admin, "web", sigma.SQLI)
    response = await shadow.post("/v1/rulesets/web/rollback", json={"version": 1, "reason": "x"}, headers=admin)
    assert response.status_code == 409 and response.json()["type"] == "/problems/rollback-invalid"


async def test_diff_names_added_removed_changed(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """The diff lists rules added, removed and changed (text or weight) with a unified diff of the YAML."""
    writer = keys("acme", "write")
    await new_version(shadow, writer, "web", sigma.SQLI, sigma.TRAVERSAL)
    await new_version(
        shadow,
        writer,
        "web",
        sigma.SQLI_V2,
        sigma.SCANNER,
        sigma.TRAVERSAL,
        weights={sigma_key(sigma.TRAVERSAL): 9.0},
        threshold=4.0,
    )
    response = await shadow.get("/v1/rulesets/web/diff?from=1&to=2", headers=writer)
    assert response.status_code == 200
    d = response.json()
    assert d["from"] == "web@1" and d["to"] == "web@2" and d["from_hash"] != d["to_hash"]
    assert [r["title"] for r in d["added"]] == ["Scanner user agent"] and d["removed"] == []
    changed = {c["title"]: c for c in d["changed"]}
    sqli = changed["SQL injection in the query"]
    assert sqli["content_changed"] and sqli["weight"] is None
    assert "-        cs-uri-query|contains: 'union select'" in sqli["diff"]
    assert "+        cs-uri-query|contains: 'union all select'" in sqli["diff"]
    assert sqli["diff"].startswith("--- web@1/document-1.yml\n+++ web@2/document-1.yml\n")
    traversal = changed["Path traversal"]
    assert not traversal["content_changed"] and traversal["weight"] == {"from": 4.0, "to": 9.0}
    assert traversal["diff"] == ""
    assert d["unchanged"] == 0 and d["threshold"] == {"from": None, "to": 4.0}
    back = (await shadow.get("/v1/rulesets/web/diff?from=2&to=1", headers=writer)).json()
    assert [r["title"] for r in back["removed"]] == ["Scanner user agent"]
    same = (await shadow.get("/v1/rulesets/web/diff?from=1&to=1", headers=writer)).json()
    assert same["changed"] == [] and same["unchanged"] == 2 and same["threshold"] is None
    assert (await shadow.get("/v1/rulesets/web/diff?from=1&to=5", headers=writer)).status_code == 404
    assert (await shadow.get("/v1/rulesets/web/diff?from=1", headers=writer)).status_code == 422


async def test_production_etag_and_304(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """Pollers get the production set with an ETag; If-None-Match answers 304 until production changes."""
    admin = keys("acme", "admin")
    first = await shadow.get("/v1/rulesets/starter/production", headers=admin)
    assert first.status_code == 200
    etag = first.headers["etag"]
    body = first.json()
    assert body["etag"] == etag and body["version"] == 1 and body["state"] == "production"
    assert body["rules"][0]["title"] == "Starter: admin probe" and body["documents"][0]["yaml"] == sigma.STARTER[0]
    assert etag == f'"1.{body["content_hash"]}"'
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = await shadow.get("/v1/rulesets/starter/production", headers={**admin, "if-none-match": header})
        assert cached.status_code == 304 and cached.headers["etag"] == etag and cached.content == b""
    stale = await shadow.get("/v1/rulesets/starter/production", headers={**admin, "if-none-match": '"0.x"'})
    assert stale.status_code == 200
    version = await new_version(shadow, admin, "starter", sigma.SQLI)
    await walk_to(shadow, admin, "starter", version["version"], "production")
    changed = await shadow.get("/v1/rulesets/starter/production", headers={**admin, "if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag and changed.json()["version"] == 2
    await shadow.post("/v1/rulesets", json={"name": "empty"}, headers=admin)
    none = await shadow.get("/v1/rulesets/empty/production", headers=admin)
    assert none.status_code == 404 and none.json()["type"] == "/problems/no-production-version"
    polled = await shadow.get("/v1/rulesets/empty/production", headers={**admin, "if-none-match": etag})
    assert polled.status_code == 404 and polled.json()["type"] == "/problems/no-production-version"


async def test_history_pages_newest_first(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """History is newest first and pages with before=<seq>."""
    admin = keys("acme", "admin")
    await new_version(shadow, admin, "web", sigma.SQLI)
    await walk_to(shadow, admin, "web", 1, "canary")
    events = (await shadow.get("/v1/rulesets/web/history", headers=admin)).json()["items"]
    assert [e["to_state"] for e in events] == ["canary", "shadow", "draft"]
    older = await shadow.get(f"/v1/rulesets/web/history?before={events[0]['seq']}&limit=1", headers=admin)
    assert [e["to_state"] for e in older.json()["items"]] == ["shadow"]


async def test_tenants_are_isolated(shadow: httpx.AsyncClient, keys: Keys) -> None:
    """Another tenant's rule sets, versions and history are 404 by id and by name."""
    acme = keys("acme", "admin")
    version = await new_version(shadow, acme, "web", sigma.SQLI)
    ruleset_id = version["ruleset_id"]
    globex = keys("globex", "admin")
    for ref in (ruleset_id, "web"):
        for path in ("", "/versions", "/versions/1", "/history", "/production", "/diff?from=1&to=1"):
            response = await shadow.get(f"/v1/rulesets/{ref}{path}", headers=globex)
            assert response.status_code == 404, (ref, path)
        transition = await shadow.post(
            f"/v1/rulesets/{ref}/versions/1/transition", json={"to": "shadow"}, headers=globex
        )
        assert transition.status_code == 404
        rollback = await shadow.post(f"/v1/rulesets/{ref}/rollback", json={"version": 1, "reason": "x"}, headers=globex)
        assert rollback.status_code == 404
        added = await shadow.post(
            f"/v1/rulesets/{ref}/versions", json={"message": "m", "documents": [sigma.SQLI]}, headers=globex
        )
        assert added.status_code == 404
    assert (await shadow.get("/v1/rulesets/web/versions/1", headers=acme)).json()["state"] == "draft"
    assert [r["name"] for r in (await shadow.get("/v1/rulesets", headers=globex)).json()["items"]] == ["starter"]


async def test_operator_acts_for_the_tenant_it_names(
    shadow: httpx.AsyncClient, keys: Keys, api_key: Callable[..., str]
) -> None:
    """An operator key needs Feint-Tenant; with it, it sees that tenant's rule sets."""
    await new_version(shadow, keys("acme", "admin"), "web", sigma.SQLI)
    operator = {"authorization": f"Bearer {api_key(scope='operator')}"}
    without = await shadow.get("/v1/rulesets", headers=operator)
    assert without.status_code == 400 and "Feint-Tenant" in without.json()["detail"]
    named = await shadow.get("/v1/rulesets", headers={**operator, "feint-tenant": "acme"})
    assert sorted(r["name"] for r in named.json()["items"]) == ["starter", "web"]
