"""``feint rollout …``: canaries of rule versions for operators, straight on the database.

``start``, ``status``, ``pause``, ``resume``, ``abort`` and ``promote`` act for one tenant
(``--tenant`` or ``FEINT_TENANT``) and are recorded in the rule history as ``cli:<user>``, like
``feint rules``. ``simulate`` needs no database: it replays a labelled traffic file through the
controller and the gateway's decision path on simulated time and prints one JSON object.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from feint.platform.db import Database
from feint.shadow.canary import plan as plans
from feint.shadow.canary import service
from feint.shadow.canary.guards import DEFAULT_GUARDS
from feint.shadow.canary.store import RolloutRow
from feint.shadow.rules_cli import Tenant, _actor, _run, err, out

rollout_app = typer.Typer(help="Canary rollouts of rule versions with automatic rollback.", no_args_is_help=True)

Reason = Annotated[str, typer.Option("--reason", "-m", help="Why (recorded in the rule history).")]


def parse_steps(text: str) -> tuple[float, ...]:
    """``5,25,50,100`` → weights; exit 2 naming the bad part."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        err.print(f"[red]error:[/red] --steps {text!r}: write weights in percent separated by commas, e.g. 5,25,50,100")
        raise typer.Exit(2) from None


def _table(rows: list[RolloutRow]) -> Table:
    table = Table("rollout", "candidate", "phase", "weight", "step", "checks", "failures", "next check", "reasons")
    for r in rows:
        table.add_row(
            str(r.id),
            str(r.candidate),
            r.phase,
            f"{r.weight:g}%",
            str(r.step),
            str(r.checks),
            str(r.failures),
            "-" if r.finished_at else f"{r.next_check_at:%H:%M:%S}",
            "; ".join(r.reasons)[:120],
        )
    return table


@rollout_app.command("start")
def start(
    tenant: Tenant,
    ref: Annotated[str, typer.Argument(help="NAME@N: the rule set and the candidate version (state shadow).")],
    reason: Reason,
    steps: Annotated[str, typer.Option(help="Weights in percent; 100 means promotion.")] = "5,25,50,100",
    interval: Annotated[float, typer.Option(help="Seconds between checks.")] = 60.0,
    failure_limit: Annotated[int, typer.Option(help="Failed checks before rollback.")] = plans.FAILURE_LIMIT_DEFAULT,
    inconclusive_limit: Annotated[
        int, typer.Option(help="Inconclusive checks in a row before pausing for a human.")
    ] = plans.INCONCLUSIVE_LIMIT_DEFAULT,
    force: Annotated[bool, typer.Option(help="Start without an approving offline evaluation (audited).")] = False,
) -> None:
    """Start a canary of a shadow version."""
    name, sep, number = ref.rpartition("@")
    if not sep or not number.isdigit():
        err.print(f"[red]error:[/red] {ref!r}: name the candidate as NAME@N")
        raise typer.Exit(2)
    plan = plans.Plan(
        steps=parse_steps(steps),
        interval_seconds=interval,
        failure_limit=failure_limit,
        inconclusive_limit=inconclusive_limit,
        guards=DEFAULT_GUARDS,
    )

    async def work(db: Database, tenant_id: uuid.UUID) -> RolloutRow:
        return await service.start(
            db,
            tenant_id=tenant_id,
            ref=name,
            candidate=int(number),
            plan=plan,
            force=force,
            reason=reason,
            actor=_actor(),
        )

    out.print(_table([_run(tenant, work)]))


@rollout_app.command("status")
def status(
    tenant: Tenant,
    rollout: Annotated[str | None, typer.Argument(help="A rollout id (default: the tenant's recent rollouts).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show rollouts: phase, weight, and the last check's guard results."""

    async def work(db: Database, tenant_id: uuid.UUID) -> list[RolloutRow]:
        if rollout is None:
            return await service.list_rollouts(db, tenant_id=tenant_id, ref=None, limit=50)
        return [await service.get(db, tenant_id=tenant_id, rollout_id=_uuid(rollout))]

    rows = _run(tenant, work)
    if as_json:
        from feint.shadow.canary.schemas import RolloutOut

        out.print_json(json.dumps([RolloutOut.of(r).model_dump(mode="json") for r in rows]))
        return
    out.print(_table(rows))
    if rollout is not None and rows[0].last_results:
        results = Table("guard", "outcome", "production", "canary", "test", "p", "reason")
        for r in rows[0].last_results:
            results.add_row(
                r["metric"],
                r["outcome"],
                _fmt(r["production"]),
                _fmt(r["canary"]),
                r["test"],
                _fmt(r["p_value"]),
                r["reason"],
            )
        out.print(results)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        err.print(f"[red]error:[/red] {text!r} is not a rollout id")
        raise typer.Exit(2) from None


def _action(name: str) -> Any:
    def command(
        tenant: Tenant,
        rollout: Annotated[str, typer.Argument(help="The rollout id.")],
        reason: Reason,
    ) -> None:
        async def work(db: Database, tenant_id: uuid.UUID) -> RolloutRow:
            return await service.operate(
                db, tenant_id=tenant_id, rollout_id=_uuid(rollout), action=name, reason=reason, actor=_actor()
            )

        out.print(_table([_run(tenant, work)]))

    command.__doc__ = {
        "pause": "Hold the weight where it is until resumed.",
        "resume": "Resume the checks of a paused rollout.",
        "abort": "Set the weight to 0 now and retire the candidate.",
        "promote": "Promote the candidate now, skipping the remaining steps (audited).",
    }[name]
    return command


for _name in ("pause", "resume", "abort", "promote"):
    rollout_app.command(_name)(_action(_name))


@rollout_app.command("simulate")
def simulate(
    production: Annotated[Path, typer.Option(help="Production rules: a Sigma file or folder.")],
    candidate: Annotated[Path, typer.Option(help="Candidate rules: a Sigma file or folder.")],
    traffic: Annotated[Path, typer.Option(help="Traffic: a log or Parquet dataset feint shadow ingest reads.")],
    labels: Annotated[Path, typer.Option(help="Labels CSV (id,label) as feint shadow evaluate reads.")],
    steps: Annotated[str, typer.Option(help="Weights in percent; 100 means promotion.")] = "5,25,50,100",
    interval: Annotated[float, typer.Option(help="Simulated seconds between checks.")] = 60.0,
    rate: Annotated[float, typer.Option(help="Requests per simulated second when the traffic has no times.")] = 50.0,
    failure_limit: Annotated[int, typer.Option(help="Failed checks before rollback.")] = plans.FAILURE_LIMIT_DEFAULT,
    inconclusive_limit: Annotated[
        int, typer.Option(help="Inconclusive checks in a row before pausing.")
    ] = plans.INCONCLUSIVE_LIMIT_DEFAULT,
    latency_guard: Annotated[
        bool,
        typer.Option(
            help="Judge the p99 evaluation latency measured during the replay (turn off when this "
            "machine's timings say nothing about the gateway's, e.g. a busy laptop)."
        ),
    ] = True,
) -> None:
    """Replay labelled traffic through the controller and the gateway's decision path; print JSON."""
    from feint.shadow.canary.replay import simulate_files

    plan = plans.Plan(
        steps=parse_steps(steps),
        interval_seconds=interval,
        failure_limit=failure_limit,
        inconclusive_limit=inconclusive_limit,
        guards=DEFAULT_GUARDS if latency_guard else tuple(g for g in DEFAULT_GUARDS if g.metric != "latency_p99"),
    )
    result = simulate_files(
        production=production, candidate=candidate, traffic=traffic, labels=labels, plan=plan, rate=rate
    )
    typer.echo(json.dumps(result, sort_keys=True))
