"""``feint camouflage …``: run a decoy persona, list personas, record a persona from a real server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.table import Table

from feint.errors import FeintError

camouflage_app = typer.Typer(help="Decoy personas: run, list, record.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@camouflage_app.command("personas")
def personas() -> None:
    """List the shipped personas (name, family, Server header, where each was recorded)."""
    from feint.camouflage.decoy import persona as persona_mod

    table = Table(show_header=True)
    for column in ("name", "family", "server", "rules", "recorded from"):
        table.add_column(column)
    for name in persona_mod.available():
        p = persona_mod.load(name)
        table.add_row(name, p.family, p.server or "(none)", str(len(p.rules)), str(p.source.get("configuration", "")))
    out.print(table)


@camouflage_app.command("decoy")
def decoy(
    persona: Annotated[str, typer.Option(help="Persona name (see `feint camouflage personas`) or directory.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    version: Annotated[str | None, typer.Option(help='Announce this version, e.g. "2.4.71 (Debian)".')] = None,
) -> None:
    """Run one persona alone on HOST:PORT until interrupted."""
    import asyncio

    from feint.camouflage.decoy import persona as persona_mod
    from feint.camouflage.decoy import server
    from feint.camouflage.decoy.responder import PersonaResponder

    try:
        loaded = persona_mod.load(persona, version=version)
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None

    async def main() -> None:
        srv = await server.serve(PersonaResponder(loaded), host=host, port=port)
        err.print(f"decoy {loaded.name} ({loaded.server or 'no Server header'}) on {host}:{srv.port}; Ctrl-C stops it")
        try:
            await asyncio.Event().wait()
        finally:
            await srv.stop()

    try:
        server.run(main())
    except KeyboardInterrupt:
        err.print("stopped")


@camouflage_app.command("site")
def site(
    persona: Annotated[str, typer.Option(help="Persona name or directory whose site tree to write.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Document root to write (created if missing).")],
) -> None:
    """Write a persona's site tree as a document root, for the real server that `record` probes."""
    from feint.camouflage.decoy import persona as persona_mod
    from feint.camouflage.decoy import recorder

    try:
        loaded = persona_mod.load(persona)
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None
    count = recorder.write_docroot(loaded, out_dir)
    out.print(f"{out_dir}: {count} files of {loaded.name}'s site")


@camouflage_app.command("record")
def record(
    target: Annotated[str, typer.Option(help="The running server, http://HOST:PORT.")],
    persona: Annotated[str, typer.Option(help="Persona to start from (limits, site tree) when OUT holds none.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Persona directory to write (or update).")],
    version: Annotated[
        str | None, typer.Option(help="The version the server announces (default: from Server).")
    ] = None,
    configuration: Annotated[str, typer.Option(help="How the server was configured (kept in the data).")] = "",
) -> None:
    """Send the probe corpus to TARGET and write the persona learned from its answers into OUT."""
    from rich.progress import Progress

    from feint.camouflage.decoy import persona as persona_mod
    from feint.camouflage.decoy import recorder

    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        err.print(f"[red]error:[/red] --target must be http://HOST:PORT, not {target!r}")
        raise typer.Exit(2)
    start = out_dir if (out_dir / persona_mod.PERSONA_FILE).is_file() else persona_mod.builtin_root() / persona
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("probing", total=None)
            result = recorder.record(
                host=parts.hostname,
                port=parts.port,
                out_dir=out_dir,
                start_from=start,
                version=version,
                configuration=configuration or f"recorded from {target}",
                progress=lambda _answer: progress.advance(task),
            )
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None
    out.print(
        f"{result.path}: {result.server or 'no Server header'}; {result.probes} probes, "
        f"{result.observations} answers, {result.responses} responses, {result.rules} rules"
    )
    for key in result.conflicts:
        err.print(f"[yellow]conflict:[/yellow] probes with key {key} got different answers (majority kept)")


@camouflage_app.command("labels")
def labels_command(
    since: Annotated[str, typer.Option(help="Start: an ISO 8601 instant or a duration back from now (24h, 7d).")],
    out_path: Annotated[Path, typer.Option("--out", help="The labels CSV to write (id,label).")],
    tenant: Annotated[str, typer.Option("--tenant", envvar="FEINT_TENANT", help="The tenant whose decisions.")],
    until: Annotated[str | None, typer.Option(help="End (excluded), same forms; default now.")] = None,
) -> None:
    """Write the labels file `feint shadow evaluate --labels` reads, from the gateway's decisions in
    [SINCE, UNTIL): bots by engagement and honeytokens, known-good clients from the allow-list."""
    import uuid
    from datetime import UTC, datetime

    from feint.camouflage import labels
    from feint.platform.db import Database
    from feint.settings import get_settings
    from feint.shadow.rules_cli import run_for_tenant

    try:
        span = labels.window(since, until, now=datetime.now(UTC), field_prefix="--")
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}", highlight=False)
        raise typer.Exit(2) from None
    settings = get_settings()

    async def work(db: Database, tenant_id: uuid.UUID) -> list[tuple[str, int]]:
        return await labels.collect(db, tenant_id=tenant_id, span=span, settings=settings)

    rows = run_for_tenant(tenant, work, starter=False)
    staging = out_path.with_name(f".{out_path.name}.partial")
    staging.write_text(labels.to_csv(rows), encoding="utf-8")
    staging.replace(out_path)
    bots = sum(label for _, label in rows)
    err.print(
        f"{out_path}: {len(rows)} labels ({bots} bots, {len(rows) - bots} benign) "
        f"from {span.since.isoformat()} to {span.until.isoformat()}",
        highlight=False,
        soft_wrap=True,
    )
