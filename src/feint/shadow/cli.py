"""``feint shadow``: evaluate a candidate rule set offline, import traffic logs.

The root CLI registers ``shadow_app`` as ``feint shadow``. Domain errors print their message and
exit with status 2 (bad input) instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from feint.errors import FeintError
from feint.shadow.decision import Thresholds
from feint.shadow.errors import RulePathMissing
from feint.shadow.stats import OBJECTIVES, Objective

if TYPE_CHECKING:
    from collections.abc import Callable

    from feint.shadow.ingest import IngestProgress
    from feint.shadow.rules.model import RuleSet

shadow_app = typer.Typer(help="Prove a detection rule on recorded traffic before it goes live.", no_args_is_help=True)

_err = Console(stderr=True)
_EXIT_BAD_INPUT = 2


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    )  # fmt: skip


@shadow_app.command("evaluate")
def evaluate_command(
    production: Annotated[str, typer.Option(help="Sigma file or folder, or a stored version NAME[@N].")],
    candidate: Annotated[str, typer.Option(help="Sigma file or folder, or a stored version NAME[@N].")],
    traffic: Annotated[
        list[Path],
        typer.Option(help="Parquet dataset (feint shadow ingest), or log files or globs ('access.log*'); repeatable."),
    ],
    out: Annotated[Path, typer.Option(help="Where to write report.json.")],
    labels: Annotated[Path | None, typer.Option(help="CSV file with header id,label.")] = None,
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained report.html.")] = None,
    objective: Annotated[str, typer.Option(help=f"One of {', '.join(OBJECTIVES)}.")] = "f1",
    confidence_full: Annotated[float, typer.Option(help="Confidence needed for full deployment.")] = 0.75,
    confidence_canary: Annotated[float, typer.Option(help="Confidence needed for a canary.")] = 0.50,
    fpr_max: Annotated[float, typer.Option(help="Highest candidate false-positive rate for full deployment.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (recorded in the report).")] = 0,
    threads: Annotated[int | None, typer.Option(help="DuckDB threads (default: every core).")] = None,
    tenant: Annotated[
        str | None, typer.Option(envvar="FEINT_TENANT", help="Tenant of stored versions (NAME or NAME@N).")
    ] = None,
) -> None:
    """Evaluate CANDIDATE against PRODUCTION on labeled traffic; write report.json (and .html).

    Each of PRODUCTION and CANDIDATE is a Sigma file, a folder of Sigma files, or a stored rule-set
    version of the tenant: ``NAME`` (its production version) or ``NAME@N``."""
    # Imported here: the engines pull in DuckDB, pyarrow and pandas, which no other command needs.
    from feint.shadow.evaluate import evaluate
    from feint.shadow.report import render_html

    try:
        if objective not in OBJECTIVES:
            raise typer.BadParameter(f"objective must be one of {', '.join(OBJECTIVES)}")
        thresholds = Thresholds(
            confidence_full=confidence_full, confidence_canary=confidence_canary, fpr_max=fpr_max,
            objective=_objective(objective), seed=seed,
        )  # fmt: skip
        production_rules = _rule_source(production, tenant=tenant)
        candidate_rules = _rule_source(candidate, tenant=tenant)
        with _ingest_progress(_err) as importing:
            on_ingest = _ingest_meter(importing)
            with _progress(_err) as bar:
                task = bar.add_task("evaluating", total=None)
                report = evaluate(
                    production_rules, candidate_rules, traffic=traffic, labels=labels, thresholds=thresholds,
                    threads=threads, on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                    on_ingest=on_ingest,
                )  # fmt: skip
    except FeintError as exc:
        _err.print(f"[red]error:[/red] {exc.detail}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(_EXIT_BAD_INPUT) from exc
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if html is not None:
        html.write_text(render_html(report), encoding="utf-8")
    typer.echo(
        f"{report['decision']} ({report['decision_reason']}), risk {report['risk']}, "
        f"confidence {report['confidence']}; report written to {out}"
    )


def _rule_source(value: str, *, tenant: str | None) -> Path | RuleSet:
    """A file or folder that exists is read as Sigma; anything else names a stored version."""
    path = Path(value)
    if path.exists():
        return path
    if tenant is None:
        raise RulePathMissing(path=f"{value} (for a stored version NAME[@N], pass --tenant)")
    from feint.shadow.rules_cli import stored_rule_set  # the database is needed only here

    return stored_rule_set(tenant=tenant, ref=value)


def _objective(name: str) -> Objective:
    for known in OBJECTIVES:
        if known == name:
            return known
    raise typer.BadParameter(f"objective must be one of {', '.join(OBJECTIVES)}")  # pragma: no cover


@shadow_app.command("ingest")
def ingest_command(
    logs: Annotated[
        list[Path],
        typer.Argument(help="Log files or globs ('access.log*'): combined, W3C extended or JSON lines; gzip or plain."),
    ],
    out: Annotated[Path, typer.Option(help="Parquet dataset to write.")],
    threads: Annotated[int | None, typer.Option(help="DuckDB threads (default: every core).")] = None,
) -> None:
    """Import traffic logs into one Parquet dataset; report malformed lines.

    Several files (rotated, gzipped) make one dataset whose request ids are ``<file name>:<line>``."""
    from feint.shadow.ingest import ingest

    try:
        with _ingest_progress(_err) as bar:
            report = ingest(logs, out, on_progress=_ingest_meter(bar), threads=threads)
    except FeintError as exc:
        _err.print(f"[red]error:[/red] {exc.detail}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(_EXIT_BAD_INPUT) from exc
    typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))


def _ingest_progress(console: Console) -> Progress:
    """Bytes read of the files as stored, lines read, and lines per second."""
    return Progress(
        TextColumn("[bold]importing"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[lines]:>12,} lines  {task.fields[rate]:>10,.0f} lines/s"), TimeRemainingColumn(),
        console=console, transient=True,
    )  # fmt: skip


def _ingest_meter(bar: Progress) -> Callable[[IngestProgress], None]:
    task = bar.add_task("importing", total=None, lines=0, rate=0.0)

    def update(progress: IngestProgress) -> None:
        bar.update(task, completed=progress.bytes_done, total=progress.bytes_total or None, lines=progress.lines,
                   rate=progress.lines_per_second)  # fmt: skip

    return update
