"""The rule repository: rule sets, immutable versions and the states a version moves through.

A version is immutable once written: its Sigma texts, the rules they compile to, each rule's
weight, the threshold, the content hash, author and message. Only its state changes, along
:data:`TRANSITIONS`::

    draft ──► shadow ──► canary ──► production ──► retired
      │          │          │                        ▲
      └──────────┴──────────┴────────────────────────┘

A version reaches production only from canary, and leaves it only when another version takes its
place (a promotion or a rollback retires it in the same transaction), so once a rule set has gone
live it always has exactly one production version (the partial unique index
``shadow_versions_one_production`` backs this up). A rollback returns production to any version
that was in production before; it is recorded, with who and why, in the append-only history.

The state machine (:func:`plan_transition`, :func:`plan_rollback`) is pure, as are the checks of a
new version and the diff (:mod:`feint.shadow.versions`); the ``async`` service
functions below them read and write through :mod:`feint.shadow.store`, each in one transaction
that holds the rule set's row lock while it changes states.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

import structlog

from feint.errors import Conflict, InvariantViolated, NotFound, ValidationFailed
from feint.platform.db import Conn, Database
from feint.shadow import store, versions
from feint.shadow.rules.model import RuleSet
from feint.shadow.versions import (
    STARTER_FOLDER,
    CompiledVersion,
    Document,
    Snapshot,
    VersionDiff,
    compile_version,
    diff_snapshots,
)

State = Literal["draft", "shadow", "canary", "production", "retired"]
STATES: Final[tuple[State, ...]] = get_args(State)
TRANSITIONS: Final[Mapping[State, frozenset[State]]] = {
    "draft": frozenset({"shadow", "retired"}),
    "shadow": frozenset({"canary", "retired"}),
    "canary": frozenset({"production", "retired"}),
    # Production is left only when another version takes its place (promotion or rollback).
    "production": frozenset(),
    "retired": frozenset(),
}
MESSAGE_LENGTH_MAX: Final = 2_000
REASON_LENGTH_MAX: Final = 2_000
AUTHOR_LENGTH_MAX: Final = 200
DESCRIPTION_LENGTH_MAX: Final = 2_000
LIST_LIMIT_MAX: Final = 1_000
STARTER_RULESET: Final = "starter"
STARTER_ACTOR: Final = "feint"

log = structlog.get_logger(component="feint.shadow.repository")


# --- errors -------------------------------------------------------------------------------


class RuleSetNotFound(NotFound):
    slug, title = "ruleset-not-found", "Rule set not found"

    def __init__(self, *, ref: str) -> None:
        # The reference is echoed: bytes that are not valid Unicode are shown escaped, never raw.
        shown = ref[:80].encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(f"no rule set {shown!r}", ruleset=shown)


class VersionNotFound(NotFound):
    slug, title = "version-not-found", "Rule set version not found"

    def __init__(self, *, ruleset: str, number: int) -> None:
        super().__init__(f"rule set {ruleset!r} has no version {number}", ruleset=ruleset, version=number)


class NoProductionVersion(NotFound):
    slug, title = "no-production-version", "No production version"

    def __init__(self, *, ruleset: str) -> None:
        super().__init__(f"rule set {ruleset!r} has no version in production yet", ruleset=ruleset)


class RuleSetNameTaken(Conflict):
    slug, title = "ruleset-name-taken", "Rule set name taken"

    def __init__(self, *, name: str) -> None:
        super().__init__(f"a rule set named {name!r} already exists", name=name)


class TransitionInvalid(Conflict):
    """A state change the table does not allow; names both states and what is allowed."""

    slug, title = "transition-invalid", "Invalid state transition"

    def __init__(self, *, number: int, from_state: State, to_state: State) -> None:
        allowed = sorted(TRANSITIONS[from_state])
        then = ", ".join(allowed) if allowed else "nothing (it leaves production only when another version replaces it)"
        if from_state == "retired":
            then = "nothing (a rollback returns a former production version to production)"
        super().__init__(
            f"version {number} cannot go from {from_state} to {to_state}; from {from_state} it can go to {then}",
            from_state=from_state,
            to_state=to_state,
            allowed=allowed,
        )
        self.from_state = from_state
        self.to_state = to_state


class RollbackInvalid(Conflict):
    slug, title = "rollback-invalid", "Invalid rollback"

    def __init__(self, detail: str, *, version: int) -> None:
        super().__init__(detail, version=version)


def _invalid(detail: str, field: str, problem: str) -> ValidationFailed:
    return ValidationFailed(detail, errors=[{"field": field, "problem": problem}])


# --- the state machine (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One state change of one version, as the history records it."""

    number: int
    from_state: State
    to_state: State
    event: Literal["transition", "retired", "rollback"]
    replaced: int | None = None


def plan_transition(*, number: int, current: State, to: State, production: int | None) -> tuple[Change, ...]:
    """The changes that move version ``number`` from ``current`` to ``to``, in the order to apply
    them: a promotion to production first retires the version it replaces."""
    if to not in TRANSITIONS[current]:
        raise TransitionInvalid(number=number, from_state=current, to_state=to)
    move = Change(number, current, to, "transition")
    if to == "production" and production is not None:
        return (Change(production, "production", "retired", "retired"), move)
    return (move,)


def plan_rollback(
    *, target: int, target_state: State, production: int | None, was_production: bool
) -> tuple[Change, ...]:
    """Production back to ``target``, a version that was in production before: the current one is
    retired, then the target returns."""
    if production is None:
        raise RollbackInvalid("the rule set has no version in production to roll back", version=target)
    if target == production:
        raise RollbackInvalid(f"version {target} is already in production", version=target)
    if not was_production:
        raise RollbackInvalid(
            f"version {target} was never in production; promote it through shadow and canary instead",
            version=target,
        )
    if target_state != "retired":
        raise InvariantViolated(f"former production version {target} is {target_state}, not retired")
    return (
        Change(production, "production", "retired", "retired"),
        Change(target, target_state, "production", "rollback", replaced=production),
    )


# --- the service --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionDetail:
    ruleset: store.RuleSetRow
    version: store.VersionRow
    documents: list[store.DocumentRow]
    rules: list[store.RuleRow]

    def snapshot(self) -> Snapshot:
        return Snapshot(
            label=f"{self.ruleset.name}@{self.version.number}",
            documents=self.documents,
            rules=self.rules,
            threshold=self.version.threshold,
            content_hash=self.version.content_hash,
        )


_RULESET_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")


def parse_ref(ref: str) -> uuid.UUID | str:
    """A rule set reference: its id when the text is a UUID, else its name."""
    try:
        return uuid.UUID(ref)
    except ValueError:
        return ref


async def _ruleset(conn: Conn, *, tenant_id: uuid.UUID, ref: str, lock: bool = False) -> store.RuleSetRow:
    parsed = parse_ref(ref)
    if isinstance(parsed, str) and not _RULESET_NAME.match(parsed):
        # No rule set can have this name (the table's CHECK); NUL or lone surrogates never reach SQL.
        raise RuleSetNotFound(ref=ref)
    found = await store.get_ruleset(conn, tenant_id=tenant_id, ref=parse_ref(ref), lock=lock)
    if found is None:
        raise RuleSetNotFound(ref=ref)
    return found


async def _version(conn: Conn, *, tenant_id: uuid.UUID, ruleset: store.RuleSetRow, number: int) -> store.VersionRow:
    found = await store.get_version(conn, tenant_id=tenant_id, ruleset_id=ruleset.id, number=number)
    if found is None:
        raise VersionNotFound(ruleset=ruleset.name, number=number)
    return found


async def _apply(
    conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, changes: Sequence[Change], actor: str, reason: str
) -> None:
    for change in changes:
        await store.set_state(
            conn,
            tenant_id=tenant_id,
            ruleset_id=ruleset_id,
            number=change.number,
            from_state=change.from_state,
            to_state=change.to_state,
        )
        await store.insert_history(
            conn,
            tenant_id=tenant_id,
            ruleset_id=ruleset_id,
            event=change.event,
            number=change.number,
            from_state=change.from_state,
            to_state=change.to_state,
            replaced=change.replaced,
            actor=actor,
            reason=reason,
        )


async def _write_version(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    ruleset: store.RuleSetRow,
    compiled: CompiledVersion,
    message: str,
    author: str,
    actor: str,
    state: State,
) -> store.VersionRow:
    number = await store.next_version_number(conn, tenant_id=tenant_id, ruleset_id=ruleset.id)
    pending = store.VersionRow(
        ruleset_id=ruleset.id,
        number=number,
        content_hash=compiled.rule_set.content_hash,
        author=author,
        message=message,
        threshold=compiled.rule_set.threshold,
        rule_count=len(compiled.rules),
        created_by=actor,
        created_at=ruleset.created_at,  # replaced by the server's time on insert
        state=state,
        state_changed_at=ruleset.created_at,
    )
    version = await store.insert_version(
        conn, tenant_id=tenant_id, version=pending, documents=compiled.document_rows(), rules=compiled.rule_rows()
    )
    await store.insert_history(
        conn,
        tenant_id=tenant_id,
        ruleset_id=ruleset.id,
        event="installed" if state == "production" else "created",
        number=number,
        from_state=None,
        to_state=state,
        actor=actor,
        reason=message,
    )
    return version


async def ensure_starter(
    db: Database, *, tenant_id: uuid.UUID, documents: Sequence[Document] | None = None
) -> store.RuleSetRow | None:
    """Install the shipped starter rule set as a tenant's production rule set, once per tenant.

    Returns the new rule set, or None when it was installed before (even if since replaced) or
    when no starter rules are packaged."""
    async with db.connection() as conn:
        if await store.starter_installed(conn, tenant_id):
            return None
    texts = versions.starter_documents() if documents is None else tuple(documents)
    if not texts:
        log.warning("starter_rules_missing", folder=str(STARTER_FOLDER))
        return None
    try:
        compiled = await asyncio.to_thread(compile_version, texts, name=STARTER_RULESET)
    except ValidationFailed as exc:
        raise InvariantViolated(f"the shipped starter rules do not compile: {exc.detail}") from exc
    async with db.transaction() as conn:
        if not await store.mark_starter_installed(conn, tenant_id):
            return None  # another request installed it meanwhile
        ruleset = await store.insert_ruleset(
            conn,
            tenant_id=tenant_id,
            name=STARTER_RULESET,
            description="The rules shipped with Feint, installed on first use.",
            created_by=STARTER_ACTOR,
        )
        if ruleset is None:
            log.warning("starter_name_taken", tenant_id=str(tenant_id))
            return None
        await _write_version(
            conn,
            tenant_id=tenant_id,
            ruleset=ruleset,
            compiled=compiled,
            message="Feint starter rules",
            author=STARTER_ACTOR,
            actor=STARTER_ACTOR,
            state="production",
        )
        installed = await store.get_ruleset(conn, tenant_id=tenant_id, ref=ruleset.id)
    log.info("starter_installed", tenant_id=str(tenant_id), rules=len(compiled.rules))
    return installed


async def create_ruleset(
    db: Database, *, tenant_id: uuid.UUID, name: str, description: str, actor: str
) -> store.RuleSetRow:
    if isinstance(parse_ref(name), uuid.UUID):
        raise _invalid(f"rule set name {name!r} looks like an id", "body.name", "a name that is not a UUID")
    async with db.transaction() as conn:
        created = await store.insert_ruleset(
            conn, tenant_id=tenant_id, name=name, description=description, created_by=actor
        )
    if created is None:
        raise RuleSetNameTaken(name=name)
    return created


async def list_rulesets(db: Database, *, tenant_id: uuid.UUID, limit: int, offset: int) -> list[store.RuleSetRow]:
    async with db.connection() as conn:
        return await store.list_rulesets(conn, tenant_id=tenant_id, limit=min(limit, LIST_LIMIT_MAX), offset=offset)


async def get_ruleset(db: Database, *, tenant_id: uuid.UUID, ref: str) -> store.RuleSetRow:
    async with db.connection() as conn:
        return await _ruleset(conn, tenant_id=tenant_id, ref=ref)


async def add_version(
    db: Database, *, tenant_id: uuid.UUID, ref: str, compiled: CompiledVersion, message: str, author: str, actor: str
) -> store.VersionRow:
    """Store a checked version as a draft (one transaction: all of it or nothing)."""
    async with db.transaction() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref, lock=True)
        return await _write_version(
            conn,
            tenant_id=tenant_id,
            ruleset=ruleset,
            compiled=compiled,
            message=message,
            author=author,
            actor=actor,
            state="draft",
        )


async def list_versions(
    db: Database, *, tenant_id: uuid.UUID, ref: str, limit: int, before: int | None
) -> list[store.VersionRow]:
    async with db.connection() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref)
        return await store.list_versions(
            conn, tenant_id=tenant_id, ruleset_id=ruleset.id, limit=min(limit, LIST_LIMIT_MAX), before=before
        )


async def _detail(
    conn: Conn, *, tenant_id: uuid.UUID, ruleset: store.RuleSetRow, version: store.VersionRow
) -> VersionDetail:
    number = version.number
    return VersionDetail(
        ruleset=ruleset,
        version=version,
        documents=await store.version_documents(conn, tenant_id=tenant_id, ruleset_id=ruleset.id, number=number),
        rules=await store.version_rules(conn, tenant_id=tenant_id, ruleset_id=ruleset.id, number=number),
    )


async def get_version(db: Database, *, tenant_id: uuid.UUID, ref: str, number: int) -> VersionDetail:
    async with db.connection() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref)
        version = await _version(conn, tenant_id=tenant_id, ruleset=ruleset, number=number)
        return await _detail(conn, tenant_id=tenant_id, ruleset=ruleset, version=version)


async def production(db: Database, *, tenant_id: uuid.UUID, ref: str) -> VersionDetail:
    """The version in production, in full (what the gateway loads)."""
    async with db.connection() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref)
        if ruleset.production is None:
            raise NoProductionVersion(ruleset=ruleset.name)
        version = await _version(conn, tenant_id=tenant_id, ruleset=ruleset, number=ruleset.production)
        return await _detail(conn, tenant_id=tenant_id, ruleset=ruleset, version=version)


async def production_version(db: Database, *, tenant_id: uuid.UUID, ref: str) -> store.VersionRow:
    """The version in production without its documents and rules: enough for a poll's ETag."""
    async with db.connection() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref)
        if ruleset.production is None:
            raise NoProductionVersion(ruleset=ruleset.name)
        return await _version(conn, tenant_id=tenant_id, ruleset=ruleset, number=ruleset.production)


async def transition(
    db: Database, *, tenant_id: uuid.UUID, ref: str, number: int, to: State, reason: str, actor: str
) -> store.VersionRow:
    """Move a version to the next state; a promotion to production retires the one it replaces."""
    async with db.transaction() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref, lock=True)
        version = await _version(conn, tenant_id=tenant_id, ruleset=ruleset, number=number)
        changes = plan_transition(number=number, current=_state(version), to=to, production=ruleset.production)
        await _apply(conn, tenant_id=tenant_id, ruleset_id=ruleset.id, changes=changes, actor=actor, reason=reason)
        moved = await _version(conn, tenant_id=tenant_id, ruleset=ruleset, number=number)
    log.info("version_transition", ruleset=ruleset.name, version=number, to=to, actor=actor)
    return moved


async def rollback(
    db: Database, *, tenant_id: uuid.UUID, ref: str, number: int, reason: str, actor: str
) -> store.VersionRow:
    """Return production to a version that was in production before; audited with who and why."""
    async with db.transaction() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref, lock=True)
        target = await _version(conn, tenant_id=tenant_id, ruleset=ruleset, number=number)
        was = await store.was_production(conn, tenant_id=tenant_id, ruleset_id=ruleset.id, number=number)
        changes = plan_rollback(
            target=number, target_state=_state(target), production=ruleset.production, was_production=was
        )
        await _apply(conn, tenant_id=tenant_id, ruleset_id=ruleset.id, changes=changes, actor=actor, reason=reason)
        restored = await _version(conn, tenant_id=tenant_id, ruleset=ruleset, number=number)
    log.warning("production_rollback", ruleset=ruleset.name, to=number, replaced=ruleset.production, actor=actor)
    return restored


async def history(
    db: Database, *, tenant_id: uuid.UUID, ref: str, limit: int, before: int | None
) -> list[store.HistoryRow]:
    async with db.connection() as conn:
        ruleset = await _ruleset(conn, tenant_id=tenant_id, ref=ref)
        return await store.list_history(
            conn, tenant_id=tenant_id, ruleset_id=ruleset.id, limit=min(limit, LIST_LIMIT_MAX), before=before
        )


async def diff(db: Database, *, tenant_id: uuid.UUID, ref: str, a: int, b: int) -> VersionDiff:
    before = await get_version(db, tenant_id=tenant_id, ref=ref, number=a)
    after = await get_version(db, tenant_id=tenant_id, ref=ref, number=b)
    return diff_snapshots(before.snapshot(), after.snapshot())


def rule_set_of(detail: VersionDetail) -> RuleSet:
    """The stored version as the engines' rule set: its texts parsed again, its weights applied."""
    documents = [Document(name=d.name, yaml=d.yaml) for d in detail.documents]
    weights = {r.rule_key: r.weight for r in detail.rules}
    name = f"{detail.ruleset.name}@{detail.version.number}"
    compiled = compile_version(documents, weights=weights, threshold=detail.version.threshold, name=name)
    if compiled.rule_set.content_hash != detail.version.content_hash:
        # A newer parser canonicalises differently; the texts and weights are still those stored.
        log.warning("content_hash_drift", ruleset=name, stored=detail.version.content_hash)
    return compiled.rule_set


def _state(version: store.VersionRow) -> State:
    if version.state not in STATES:  # pragma: no cover - the table's CHECK allows only these
        raise InvariantViolated(f"version {version.number} has unknown state {version.state!r}")
    return version.state
