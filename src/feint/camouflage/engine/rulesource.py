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
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
import structlog
from prometheus_client import Counter, Gauge

from feint.errors import FeintError
from feint.platform.db import Conn, Database
from feint.shadow import store
from feint.shadow.canary.split import judged_by_candidate
from feint.shadow.rules import Matcher, Rule, RuleSet, compile_matcher, load_rules, rule_set, starter_rules
from feint.shadow.versions import Document, compile_version

RULE_FILES_SCANNED_MAX: Final = 10_000

RULES_LOADED = Gauge("feint_gateway_rules", "Rules the gateway judges with.", ["phase"])
RULE_RELOADS = Counter("feint_gateway_rule_reloads_total", "Rule set reloads by outcome.", ["outcome"])
CANARY_WEIGHT = Gauge("feint_gateway_canary_weight_percent", "Share of clients this replica judges with a canary.")
log = structlog.get_logger(component="feint.camouflage.rules")

_PRODUCTION_SQL: Final = """
SELECT r.tenant_id, r.id AS ruleset_id, v.number, v.content_hash
FROM tenants t
JOIN shadow_rulesets r ON r.tenant_id = t.id
JOIN shadow_versions v ON v.tenant_id = r.tenant_id AND v.ruleset_id = r.id AND v.state = 'production'
WHERE t.name = %(tenant)s AND r.name = %(ruleset)s
"""

# The live canary rollout of the rule set, if any (migration 0006); paused rollouts keep their weight.
_CANARY_SQL: Final = """
SELECT ro.tenant_id, ro.ruleset_id, ro.id AS rollout_id, ro.candidate, ro.weight, ro.phase, v.content_hash
FROM tenants t
JOIN shadow_rulesets r ON r.tenant_id = t.id
JOIN shadow_rollouts ro ON ro.tenant_id = r.tenant_id AND ro.ruleset_id = r.id AND ro.phase IN ('running', 'paused')
JOIN shadow_versions v ON v.tenant_id = ro.tenant_id AND v.ruleset_id = ro.ruleset_id AND v.number = ro.candidate
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
    rollout_id: uuid.UUID | None = None  # set while a canary rollout splits this rule set's clients
    canary: bool = False  # these are the rollout's candidate rules


@dataclass(frozen=True, slots=True)
class Canary:
    """The live rollout of the gateway's rule set: its candidate rules and the share they judge."""

    rollout_id: uuid.UUID
    weight_percent: float
    phase: str
    rules: LoadedRules  # canary=True, rollout_id set


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


async def _load_version(conn: Conn, row: dict[str, Any], *, number: int, label: str, ruleset: str) -> LoadedRules:
    """A stored version compiled for the gateway (its texts parsed again, its weights applied)."""
    ids = {"tenant_id": row["tenant_id"], "ruleset_id": row["ruleset_id"], "number": number}
    documents = await store.version_documents(conn, **ids)
    rows = await store.version_rules(conn, **ids)
    compiled = await asyncio.to_thread(
        compile_version,
        [Document(name=d.name, yaml=d.yaml) for d in documents],
        weights={r.rule_key: r.weight for r in rows},
        name=ruleset,
    )
    return await asyncio.to_thread(
        compile_rules, compiled.rule_set, label=label, tag=str(row["content_hash"]), version=number
    )


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
        number = int(row["number"])
        return await _load_version(conn, row, number=number, label=f"{tenant}/{ruleset}@{number}", ruleset=ruleset)


# Canary state in, canary state out: the same object when nothing changed, None when no rollout.
FetchCanary = Callable[["Canary | None"], Awaitable["Canary | None"]]


async def _canary_from_repository(db: Database, *, tenant: str, ruleset: str, known: Canary | None) -> Canary | None:
    async with db.connection() as conn:
        cursor = await conn.execute(_CANARY_SQL, {"tenant": tenant, "ruleset": ruleset})
        row = await cursor.fetchone()
        if row is None:
            return None
        rollout_id, number = row["rollout_id"], int(row["candidate"])
        if known is not None and known.rollout_id == rollout_id and known.rules.tag == row["content_hash"]:
            rules = known.rules  # the candidate's content never changes; only weight and phase do
        else:
            label = f"{tenant}/{ruleset}@{number} (canary)"
            loaded = await _load_version(conn, row, number=number, label=label, ruleset=ruleset)
            rules = dataclasses.replace(loaded, rollout_id=rollout_id, canary=True)
    return Canary(rollout_id=rollout_id, weight_percent=float(row["weight"]), phase=str(row["phase"]), rules=rules)


Fetch = Callable[[str | None], Awaitable[LoadedRules | None]]


class RuleReloader:
    """Holds the current rules; ``run`` polls the source and swaps them in when they change.

    While a canary rollout of the rule set is live, ``rules_for`` sends the clients whose key
    hashes into the rollout's share to the candidate (:func:`judged_by_candidate`, the split the
    controller and ``feint rollout simulate`` use too) and the rest to production; both carry
    the rollout id, so the decision log holds both slices the guards compare. A rollback is in
    force on every replica at its next poll: within ``poll_seconds``.
    """

    def __init__(self, fetch: Fetch, *, poll_seconds: float, fetch_canary: FetchCanary | None = None) -> None:
        self.fetch = fetch
        self.fetch_canary = fetch_canary
        self.poll_seconds = poll_seconds
        self.current: LoadedRules | None = None
        self.canary: Canary | None = None
        self._production: LoadedRules | None = None  # ``current`` marked with the live rollout's id

    @classmethod
    def for_settings(
        cls, *, db: Database | None, tenant: str, ruleset: str, path: Path | None, poll_seconds: float
    ) -> RuleReloader:
        if path is not None:
            return cls(lambda known: _from_path(path, known), poll_seconds=poll_seconds)
        if db is None:
            return cls(_starter_only, poll_seconds=poll_seconds)
        return cls(
            lambda known: _from_repository(db, tenant=tenant, ruleset=ruleset, known=known),
            poll_seconds=poll_seconds,
            fetch_canary=lambda known: _canary_from_repository(db, tenant=tenant, ruleset=ruleset, known=known),
        )

    def rules_for(self, client_key: str) -> LoadedRules | None:
        """The rules that judge this client: production, or a live canary's candidate for its share."""
        canary, production = self.canary, self._production
        if canary is None or production is None:
            return self.current
        if judged_by_candidate(client_key, weight_percent=canary.weight_percent, salt=str(canary.rollout_id)):
            return canary.rules
        return production

    async def refresh(self) -> bool:
        """Check the source once; True when new rules were swapped in."""
        loaded = await self.fetch(None if self.current is None else self.current.tag)
        changed = loaded is not None
        if loaded is None:
            RULE_RELOADS.labels("unchanged").inc()
        else:
            before = None if self.current is None else self.current.label
            self.current = loaded
            RULES_LOADED.labels("request").set(len(loaded.before.rules))
            RULES_LOADED.labels("response").set(0 if loaded.after is None else len(loaded.after.rules))
            RULE_RELOADS.labels("loaded").inc()
            log.info("gateway_rules_loaded", rules=loaded.count, source=loaded.label, replaced=before)
        if self.fetch_canary is not None:
            canary = await self.fetch_canary(self.canary)
            if (canary is None) != (self.canary is None) or (
                canary is not None and self.canary is not None and canary.rules is not self.canary.rules
            ):
                log.info(
                    "gateway_canary",
                    rollout=None if canary is None else str(canary.rollout_id),
                    weight=None if canary is None else canary.weight_percent,
                )
            self.set_canary(canary)
        else:
            self.set_canary(self.canary)
        return changed

    def set_canary(self, canary: Canary | None) -> None:
        """Judge a share of clients with ``canary``'s rules (None: everyone with production)."""
        self.canary = canary
        CANARY_WEIGHT.set(0.0 if canary is None else canary.weight_percent)
        current = self.current
        self._production = (
            None
            if canary is None or current is None
            else dataclasses.replace(current, rollout_id=canary.rollout_id, canary=False)
        )

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
