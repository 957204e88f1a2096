"""``feint rules …``: the rule repository for operators, straight on the database.

Every command acts for one tenant (``--tenant`` or ``FEINT_TENANT``) and is recorded in the
history as ``cli:<user>``. Versions are written ``NAME@N`` (``starter@3``); ``NAME`` alone means
the version in production. ``diff`` also takes a Sigma file or folder on either side, to see
what an import would change before making it.
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final, TypeVar, get_args

import typer
from rich.console import Console
from rich.table import Table

from feint.errors import Conflict, FeintError, NotFound
from feint.platform import migrations
from feint.platform.db import Database
from feint.platform.serve import resolve_database
from feint.platform.telemetry import configure_logging
from feint.settings import get_settings
from feint.shadow import repository, store, versions
from feint.shadow.repository import STARTER_RULESET, State, VersionDetail
from feint.shadow.rules.model import RuleSet
from feint.shadow.versions import (
    Snapshot,
    VersionDiff,
    compile_version,
    diff_snapshots,
    documents_from_path,
    snapshot_of,
)

T = TypeVar("T")
CLI_POOL_SIZE: Final = 2
NEXT_STATE: Final[dict[str, State]] = {"draft": "shadow", "shadow": "canary", "canary": "production"}

rules_app = typer.Typer(
    help="The rule repository: rule sets, versions, promotions, rollbacks, diffs.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)

Tenant = Annotated[str, typer.Option("--tenant", envvar="FEINT_TENANT", help="The tenant to act for.")]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in some containers
        return "cli:unknown"


def _run(tenant: str, work: Callable[[Database, uuid.UUID], Awaitable[T]], *, starter: bool = True) -> T:
    """Migrate, open the database, find the tenant (its starter set ensured unless ``starter`` is
    false) and run ``work``; a FeintError is one red line and exit code 1."""
    settings = get_settings()
    configure_logging(level="warning", fmt=settings.log_format, stderr=True)
    try:
        target = resolve_database(settings)
        try:
            migrations.migrate(target.migration_url)
            return asyncio.run(_with_tenant(target.url, settings.database_role or None, tenant, work, starter=starter))
        finally:
            target.stop()
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}", markup=True, highlight=False)
        raise typer.Exit(1) from None


async def _with_tenant(
    url: str, role: str | None, tenant: str, work: Callable[[Database, uuid.UUID], Awaitable[T]], *, starter: bool
) -> T:
    db = Database(url, role=role, size_max=CLI_POOL_SIZE, name="feint-rules-cli")
    await db.open()
    try:
        async with db.connection() as conn:
            tenant_id = await store.tenant_id_by_name(conn, tenant)
        if tenant_id is None:
            raise NotFound(f"no tenant {tenant!r}; `feint keys create --tenant {tenant}` creates it")
        if starter:
            await repository.ensure_starter(db, tenant_id=tenant_id)
        return await work(db, tenant_id)
    finally:
        await db.close()


run_for_tenant = _run  # other domains' operator commands (``feint camouflage labels``)


def _version_ref(text: str) -> tuple[str, int | None]:
    name, sep, number = text.rpartition("@")
    if not sep:
        return text, None
    if not number.isdigit() or int(number) < 1:
        err.print(f"[red]error:[/red] {text!r}: write a version as NAME@N with N ≥ 1", highlight=False)
        raise typer.Exit(2)
    return name, int(number)


async def _detail(db: Database, tenant_id: uuid.UUID, ref: str) -> VersionDetail:
    name, number = _version_ref(ref)
    if number is None:
        return await repository.production(db, tenant_id=tenant_id, ref=name)
    return await repository.get_version(db, tenant_id=tenant_id, ref=name, number=number)


def stored_rule_set(*, tenant: str, ref: str) -> RuleSet:
    """A stored version (``NAME@N``, or ``NAME`` for production) as the engines' rule set, for
    commands that evaluate stored versions (``feint shadow evaluate``); exits 1 saying why when
    there is no such version."""

    async def work(db: Database, tenant_id: uuid.UUID) -> RuleSet:
        return repository.rule_set_of(await _detail(db, tenant_id, ref))

    return _run(tenant, work)


@rules_app.command("list")
def list_command(
    tenant: Tenant,
    ruleset: Annotated[str | None, typer.Argument(help="A rule set: list its versions.")] = None,
) -> None:
    """List the tenant's rule sets, or the versions of one."""

    async def work(db: Database, tenant_id: uuid.UUID) -> Table:
        if ruleset is None:
            table = Table("name", "id", "versions", "production", "description")
            for row in await repository.list_rulesets(db, tenant_id=tenant_id, limit=1_000, offset=0):
                table.add_row(row.name, str(row.id), str(row.versions), str(row.production or "-"), row.description)
            return table
        table = Table("version", "state", "hash", "rules", "author", "created", "message")
        for v in await repository.list_versions(db, tenant_id=tenant_id, ref=ruleset, limit=1_000, before=None):
            table.add_row(
                str(v.number),
                v.state,
                v.content_hash[:12],
                str(v.rule_count),
                v.author,
                f"{v.created_at:%Y-%m-%d %H:%M}",
                v.message.splitlines()[0] if v.message else "",
            )
        return table

    out.print(_run(tenant, work))


@rules_app.command("show")
def show(
    tenant: Tenant,
    ref: Annotated[str, typer.Argument(help="NAME@N, or NAME for the version in production.")],
    yaml: Annotated[bool, typer.Option("--yaml", help="Print the Sigma texts too.")] = False,
) -> None:
    """Show a version: its state, hash, message and rules (with --yaml, its Sigma texts)."""
    detail = _run(tenant, lambda db, tenant_id: _detail(db, tenant_id, ref))
    v = detail.version
    out.print(f"{detail.ruleset.name}@{v.number}  {v.state}  sha256:{v.content_hash}", highlight=False)
    out.print(f"by {v.author} at {v.created_at:%Y-%m-%d %H:%M:%S %Z}: {v.message}", highlight=False)
    if v.threshold is not None:
        out.print(f"flags when the weighted score reaches {v.threshold:g}", highlight=False)
    table = Table("rule", "title", "level", "weight", "post-response")
    for r in detail.rules:
        table.add_row(r.rule_key, r.title, r.level, f"{r.weight:g}", "yes" if r.post_response else "")
    out.print(table)
    if yaml:
        for d in detail.documents:
            out.rule(d.name)
            out.print(d.yaml, markup=False, highlight=False)


@rules_app.command("import")
def import_command(
    tenant: Tenant,
    path: Annotated[Path, typer.Argument(help="A Sigma file, or a folder of *.yml / *.yaml files.")],
    ruleset: Annotated[str, typer.Option("--ruleset", help="The rule set (created when new).")],
    message: Annotated[str, typer.Option("--message", "-m", help="What changed and why.")],
    author: Annotated[str | None, typer.Option(help="Who wrote it (default: cli:<user>).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Flag at this weighted score (default: any match).")] = None,
    weight: Annotated[
        list[str] | None, typer.Option(help="RULE_ID=WEIGHT, repeatable (default: the weight of the rule's level).")
    ] = None,
) -> None:
    """Import Sigma rules as a new draft version; nothing is stored when any rule is invalid."""
    weights = _weights(weight or [])

    async def work(db: Database, tenant_id: uuid.UUID) -> str:
        compiled = compile_version(documents_from_path(path), weights=weights, threshold=threshold, name=ruleset)
        try:
            await repository.get_ruleset(db, tenant_id=tenant_id, ref=ruleset)
        except repository.RuleSetNotFound:
            await repository.create_ruleset(db, tenant_id=tenant_id, name=ruleset, description="", actor=_actor())
        version = await repository.add_version(
            db,
            tenant_id=tenant_id,
            ref=ruleset,
            compiled=compiled,
            message=message,
            author=author or _actor(),
            actor=_actor(),
        )
        return f"{ruleset}@{version.number} (draft, {version.rule_count} rules, sha256:{version.content_hash[:12]})"

    out.print(f"imported {_run(tenant, work)}", highlight=False)


def _weights(pairs: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.rpartition("=")
        try:
            weights[key] = float(value)
        except ValueError:
            key = ""
        if not sep or not key:
            err.print(f"[red]error:[/red] --weight {pair!r}: write RULE_ID=WEIGHT", highlight=False)
            raise typer.Exit(2)
    return weights


def _print_diff(d: VersionDiff) -> None:
    out.print(f"{d.from_label} → {d.to_label}", highlight=False)
    for r in d.added:
        out.print(f"[green]+ {r.key}  {r.title}[/green]", highlight=False)
    for r in d.removed:
        out.print(f"[red]- {r.key}  {r.title}[/red]", highlight=False)
    for c in d.changed:
        weight = f" weight {c.weight[0]:g} → {c.weight[1]:g}" if c.weight else ""
        out.print(f"[yellow]~ {c.key}  {c.title}{weight}[/yellow]", highlight=False)
        if c.diff:
            out.print(c.diff, markup=False, highlight=False, end="")
    if d.threshold:
        out.print(f"threshold {d.threshold[0]} → {d.threshold[1]}", highlight=False)
    out.print(
        f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, {d.unchanged} unchanged",
        highlight=False,
    )


def _local_snapshot(ref: str) -> Snapshot | None:
    """Sigma files on disk as a diff side, when ``ref`` names a file or folder."""
    path = Path(ref)
    if not path.exists():
        return None
    return snapshot_of(compile_version(documents_from_path(path), name=ref), label=ref)


@rules_app.command("diff")
def diff(
    tenant: Tenant,
    a: Annotated[str, typer.Argument(help="NAME@N, NAME (production), or a Sigma file or folder.")],
    b: Annotated[str, typer.Argument(help="NAME@N, NAME (production), or a Sigma file or folder.")],
) -> None:
    """What changed from A to B: rules added, removed, changed (with a unified diff of the YAML)."""

    async def side(db: Database, tenant_id: uuid.UUID, ref: str) -> Snapshot:
        local = _local_snapshot(ref)
        return local if local is not None else (await _detail(db, tenant_id, ref)).snapshot()

    async def work(db: Database, tenant_id: uuid.UUID) -> VersionDiff:
        return diff_snapshots(await side(db, tenant_id, a), await side(db, tenant_id, b))

    _print_diff(_run(tenant, work))


@rules_app.command("promote")
def promote(
    tenant: Tenant,
    ref: Annotated[str, typer.Argument(help="NAME@N: the version to move.")],
    to: Annotated[str | None, typer.Option(help="Target state (default: the next one).")] = None,
    reason: Annotated[str, typer.Option(help="Why: kept in the history.")] = "",
) -> None:
    """Move a version to its next state (draft → shadow → canary → production), or --to retired."""
    name, number = _version_ref(ref)
    if number is None or (to is not None and to not in get_args(State)):
        err.print("[red]error:[/red] give NAME@N and, if any, --to one of " + ", ".join(get_args(State)))
        raise typer.Exit(2)

    async def work(db: Database, tenant_id: uuid.UUID) -> str:
        current = (await repository.get_version(db, tenant_id=tenant_id, ref=name, number=number)).version.state
        target: State | None = to if to is not None else NEXT_STATE.get(current)  # type: ignore[assignment]
        if target is None:
            raise Conflict(f"{name}@{number} is {current}; no state follows it (use rollback to change production)")
        moved = await repository.transition(
            db, tenant_id=tenant_id, ref=name, number=number, to=target, reason=reason, actor=_actor()
        )
        return f"{name}@{number}: {current} → {moved.state}"

    out.print(_run(tenant, work), highlight=False)


@rules_app.command("rollback")
def rollback(
    tenant: Tenant,
    ruleset: Annotated[str, typer.Argument(help="The rule set.")],
    to: Annotated[int, typer.Option("--to", min=1, help="A version that was in production before.")],
    reason: Annotated[str, typer.Option(help="Why: kept in the history.")],
) -> None:
    """Return production to an earlier production version at once (audited: who, when, why)."""
    if not reason.strip():
        err.print("[red]error:[/red] --reason must say why")
        raise typer.Exit(2)

    async def work(db: Database, tenant_id: uuid.UUID) -> str:
        before = await repository.get_ruleset(db, tenant_id=tenant_id, ref=ruleset)
        await repository.rollback(db, tenant_id=tenant_id, ref=ruleset, number=to, reason=reason, actor=_actor())
        return f"{ruleset}: production {before.production} → {to}"

    out.print(_run(tenant, work), highlight=False)


@rules_app.command("history")
def history(
    tenant: Tenant,
    ruleset: Annotated[str, typer.Argument(help="The rule set.")],
    limit: Annotated[int, typer.Option(min=1, max=repository.LIST_LIMIT_MAX)] = 50,
) -> None:
    """Every version created, state change and rollback, newest first."""

    async def work(db: Database, tenant_id: uuid.UUID) -> Table:
        table = Table("when", "event", "version", "from", "to", "who", "why")
        for h in await repository.history(db, tenant_id=tenant_id, ref=ruleset, limit=limit, before=None):
            table.add_row(
                f"{h.recorded_at:%Y-%m-%d %H:%M:%S}",
                h.event + (f" (replaced {h.replaced})" if h.replaced else ""),
                str(h.number),
                h.from_state or "",
                h.to_state,
                h.actor,
                h.reason,
            )
        return table

    out.print(_run(tenant, work))


@rules_app.command("install-starter")
def install_starter(tenant: Tenant) -> None:
    """Install the shipped starter rule set for a tenant (as production, the first time), or import a
    newer shipped starter as a draft of the starter rule set, to be proven before promotion."""

    async def work(db: Database, tenant_id: uuid.UUID) -> str:
        documents = versions.starter_documents()
        if not documents:
            raise NotFound("this build of Feint ships no starter rules")
        compiled = compile_version(documents, name=STARTER_RULESET)
        newest = await repository.list_versions(db, tenant_id=tenant_id, ref=STARTER_RULESET, limit=1, before=None)
        if newest and newest[0].content_hash == compiled.rule_set.content_hash:
            return f"{STARTER_RULESET}@{newest[0].number} already holds the shipped starter rules"
        version = await repository.add_version(
            db,
            tenant_id=tenant_id,
            ref=STARTER_RULESET,
            compiled=compiled,
            message="Feint starter rules (new release)",
            author=repository.STARTER_ACTOR,
            actor=_actor(),
        )
        return f"imported the shipped starter rules as {STARTER_RULESET}@{version.number} (draft)"

    out.print(_run(tenant, work), highlight=False)
