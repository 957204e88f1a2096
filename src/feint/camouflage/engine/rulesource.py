"""The rules the gateway judges with, and their reload without restart.

Source, in order: ``FEINT_GATEWAY_RULES_PATH`` (a Sigma file or folder, reloaded when a file's
modification time or the set of files changes); else the production version of
``FEINT_GATEWAY_RULESET`` of ``FEINT_GATEWAY_TENANT`` in the rule repository, read from the
database (the same rows the shadow service's ``/production`` endpoint serves, compared by their
content hash the way its ETag is); else, while that tenant has no production version, Feint's
starter rules. Every replica checks every ``FEINT_GATEWAY_RULES_POLL_SECONDS`` (one indexed
query), so a promotion or rollback is live on all replicas within that bound. A version that does
not compile or a database that does not answer leaves the current rules in place (logged).

Rules that name a response field (``sc-status``) form a second matcher, run once the upstream
has answered; their hits count for the client's next requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
import structlog
from prometheus_client import Counter, Gauge

from feint.errors import FeintError
from feint.platform.db import Database
from feint.shadow import store
from feint.shadow.rules import Matcher, Rule, RuleSet, compile_matcher, load_rules, rule_set, starter_rules
from feint.shadow.versions import Document, compile_version

RULE_FILES_SCANNED_MAX: Final = 10_000

RULES_LOADED = Gauge("feint_gateway_rules", "Rules the gateway judges with.", ["phase"])
RULE_RELOADS = Counter("feint_gateway_rule_reloads_total", "Rule set reloads by outcome.", ["outcome"])
log = structlog.get_logger(component="feint.camouflage.rules")

_PRODUCTION_SQL: Final = """
SELECT r.tenant_id, r.id AS ruleset_id, v.number, v.content_hash
FROM tenants t
JOIN shadow_rulesets r ON r.tenant_id = t.id
JOIN shadow_versions v ON v.tenant_id = r.tenant_id AND v.ruleset_id = r.id AND v.state = 'production'
WHERE t.name = %(tenant)s AND r.name = %(ruleset)s
"""


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """A rule set compiled for the gateway: ``before`` the upstream answers and ``after``."""

    label: str
    tag: str  # what identifies the version: content hash, or file times
    before: Matcher
    after: Matcher | None
    count: int
    version: int | None = None  # the repository version number (None: starter rules or a file)


def compile_rules(rules: RuleSet, *, label: str, tag: str, version: int | None = None) -> LoadedRules:
    before = [rule for rule in rules.rules if not rule.post_response]
    after = [rule for rule in rules.rules if rule.post_response]
    weights = {rule.key: rules.weight_of(rule) for rule in rules.rules}

    def matcher(chosen: list[Rule]) -> Matcher:
        return compile_matcher(rule_set(chosen, name=rules.name, weights={r.key: weights[r.key] for r in chosen}))

    return LoadedRules(
        label=label,
        tag=tag,
        before=matcher(before),
        after=matcher(after) if after else None,
        count=len(rules.rules),
        version=version,
    )


def _path_tag(path: Path) -> str:
    files = [path] if path.is_file() else sorted(path.rglob("*.y*ml"))[:RULE_FILES_SCANNED_MAX]
    return ";".join(f"{file}:{file.stat().st_mtime_ns}" for file in files)


async def _from_path(path: Path, known: str | None) -> LoadedRules | None:
    tag = await asyncio.to_thread(_path_tag, path)
    if tag == known:
        return None
    rules = await asyncio.to_thread(load_rules, path)
    return await asyncio.to_thread(compile_rules, rule_set(rules, name=path.name), label=str(path), tag=tag)


async def _from_repository(db: Database, *, tenant: str, ruleset: str, known: str | None) -> LoadedRules | None:
    async with db.connection() as conn:
        cursor = await conn.execute(_PRODUCTION_SQL, {"tenant": tenant, "ruleset": ruleset})
        row = await cursor.fetchone()
        if row is None:
            if known == "starter":
                return None
            rules = await asyncio.to_thread(starter_rules)
            built = rule_set(rules, name="starter")
            return await asyncio.to_thread(compile_rules, built, label="starter rules (shipped)", tag="starter")
        if row["content_hash"] == known:
            return None
        ids = {"tenant_id": row["tenant_id"], "ruleset_id": row["ruleset_id"], "number": row["number"]}
        documents = await store.version_documents(conn, **ids)
        rows = await store.version_rules(conn, **ids)
    compiled = await asyncio.to_thread(
        compile_version,
        [Document(name=d.name, yaml=d.yaml) for d in documents],
        weights={r.rule_key: r.weight for r in rows},
        name=ruleset,
    )
    label = f"{tenant}/{ruleset}@{row['number']}"
    return await asyncio.to_thread(
        compile_rules, compiled.rule_set, label=label, tag=str(row["content_hash"]), version=int(row["number"])
    )


Fetch = Callable[[str | None], Awaitable[LoadedRules | None]]


class RuleReloader:
    """Holds the current rules; ``run`` polls the source and swaps them in when they change."""

    def __init__(self, fetch: Fetch, *, poll_seconds: float) -> None:
        self.fetch = fetch
        self.poll_seconds = poll_seconds
        self.current: LoadedRules | None = None

    @classmethod
    def for_settings(
        cls, *, db: Database | None, tenant: str, ruleset: str, path: Path | None, poll_seconds: float
    ) -> RuleReloader:
        if path is not None:
            return cls(lambda known: _from_path(path, known), poll_seconds=poll_seconds)
        if db is None:
            return cls(_starter_only, poll_seconds=poll_seconds)
        return cls(
            lambda known: _from_repository(db, tenant=tenant, ruleset=ruleset, known=known), poll_seconds=poll_seconds
        )

    def rules_for(self, client_key: str) -> LoadedRules | None:
        """The rules that judge this client: the production version (the seam where a canary
        rollout will send a share of clients, by key, to its candidate)."""
        return self.current

    async def refresh(self) -> bool:
        """Check the source once; True when new rules were swapped in."""
        loaded = await self.fetch(None if self.current is None else self.current.tag)
        if loaded is None:
            RULE_RELOADS.labels("unchanged").inc()
            return False
        before = None if self.current is None else self.current.label
        self.current = loaded
        RULES_LOADED.labels("request").set(len(loaded.before.rules))
        RULES_LOADED.labels("response").set(0 if loaded.after is None else len(loaded.after.rules))
        RULE_RELOADS.labels("loaded").inc()
        log.info("gateway_rules_loaded", rules=loaded.count, source=loaded.label, replaced=before)
        return True

    async def run(self) -> None:
        """Poll until cancelled; a failed check keeps the current rules."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.refresh()
            except (FeintError, OSError, psycopg.Error) as exc:
                RULE_RELOADS.labels("failed").inc()
                log.warning("gateway_rules_reload_failed", error=str(exc), kept=getattr(self.current, "label", None))


async def _starter_only(known: str | None) -> LoadedRules | None:
    if known == "starter":
        return None
    rules = await asyncio.to_thread(starter_rules)
    return await asyncio.to_thread(compile_rules, rule_set(rules, name="starter"), label="starter rules", tag="starter")
