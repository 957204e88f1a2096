"""The ``feint`` command: the root group; each domain registers its own sub-group here."""

from __future__ import annotations

import importlib
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from feint import __version__
from feint.errors import ConfigError, FeintError
from feint.platform import SERVICES, WORKERS_MAX, migrations, tls
from feint.platform import keys as keys_mod
from feint.platform.db import connect_sync
from feint.platform.secrets import derive, load_master_key
from feint.platform.telemetry import configure_logging
from feint.settings import Settings, get_settings

if TYPE_CHECKING:  # typer vendors its own click: these are the types its groups take
    from typer._click.core import Command, Context

# Each domain's commands, imported when the command line names them: `feint shadow ingest`
# does not pay for the credits server stack or FastAPI (about a second of start-up otherwise).
LAZY_GROUPS: dict[str, tuple[str, str]] = {
    "credits": ("feint.credits.cli", "credits_app"),
    "backup": ("feint.backup.cli", "backup_app"),
    "rules": ("feint.shadow.rules_cli", "rules_app"),
    "shadow": ("feint.shadow.cli", "shadow_app"),
    "camouflage": ("feint.camouflage.cli", "camouflage_app"),
    "rollout": ("feint.shadow.canary.cli", "rollout_app"),
}


class _LazyGroup(TyperGroup):
    """The root group: the domains' sub-groups are built on first use (listed in help as usual)."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_GROUPS if n not in self.commands)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in LAZY_GROUPS:
            return found
        module, attr = LAZY_GROUPS[cmd_name]
        sub: typer.Typer = getattr(importlib.import_module(module), attr)
        command = typer.main.get_command(sub)
        command.name = cmd_name
        self.add_command(command, cmd_name)
        return command


app = typer.Typer(
    name="feint",
    help="Feint: self-hosted bot defence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_LazyGroup,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

err = Console(stderr=True)
out = Console()
T = TypeVar("T")

STATUS_TIMEOUT_SECONDS = 2.0


def _settings(*, serving: bool = False) -> Settings:
    """Settings, and logs configured: to stdout for the services, to stderr for commands."""
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, stderr=not serving)
    return settings


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body; a FeintError becomes one red line and exit code 1."""
    try:
        return fn()
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def migrate(
    target: Annotated[int | None, typer.Option(help="Migrate up or down to this version (default: newest).")] = None,
) -> None:
    """Apply the database migrations (idempotent)."""
    settings = _settings()

    def body() -> None:
        from feint.platform.serve import resolve_database

        db = resolve_database(settings)
        try:
            done = migrations.migrate(db.migration_url, target=target)
        finally:
            db.stop()
        for line in done or ["database is up to date"]:
            out.print(line)

    _guard(body)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@app.command()
def up() -> None:
    """Run all three services and the gateway in this process (embedded database when none is set)."""

    from feint.camouflage import demo
    from feint.camouflage.listener import GatewayListener
    from feint.platform.serve import Servable, run_loop, serve_all

    settings = _settings(serving=True)
    begun = time.perf_counter()

    def body() -> None:
        from feint.platform.serve import platform_for, service_app, service_port, uvicorn_server

        with platform_for(settings) as (platform, target):
            servers = [service_app(name, platform) for name in SERVICES]
            uv: list[Servable] = [
                uvicorn_server(a, settings=settings, port=service_port(settings, n))
                for n, a in zip(SERVICES, servers, strict=True)
            ]
            upstream = settings.upstream_url
            if upstream is None:
                demo_port = _free_port("127.0.0.1")
                uv.append(uvicorn_server(demo.create(), settings=settings, port=demo_port, host="127.0.0.1"))
                upstream = f"http://127.0.0.1:{demo_port}"
            uv.append(GatewayListener.for_platform(platform, upstream_url=upstream, port=settings.gateway_port))
            scheme = "https" if settings.tls_enabled else "http"

            def ready() -> None:
                table = Table(title=f"Feint {__version__} is up", show_header=True)
                table.add_column("service")
                table.add_column("URL")
                for name in SERVICES:
                    table.add_row(name, f"{scheme}://{settings.host}:{service_port(settings, name)}")
                table.add_row("gateway", f"{scheme}://{settings.host}:{settings.gateway_port} → {upstream}")
                table.add_row("database", "embedded PostgreSQL 18" if target.server else "FEINT_DATABASE_URL")
                table.add_row("cache", "Redis" if settings.redis_url else "in-process")
                err.print(table)
                err.print(f"healthy {time.perf_counter() - begun:.2f} s after start; Ctrl-C stops everything")

            run_loop(serve_all(uv, on_ready=ready))
        err.print("stopped")

    _guard(body)


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help="credits, shadow or camouflage")],
    port: Annotated[int | None, typer.Option(help="Port (default: the service's FEINT_*_PORT).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=WORKERS_MAX,
            help="Processes serving the port (default: the number of cores with FEINT_REDIS_URL, else 1).",
        ),
    ] = None,
    supervisor: Annotated[
        int | None, typer.Option(hidden=True, help="Internal: pid of the supervisor this worker serves under.")
    ] = None,
    gateway_port: Annotated[
        int | None, typer.Option(help="camouflage: port of the gateway (default: FEINT_GATEWAY_PORT).")
    ] = None,
) -> None:
    """Run one service (what a container runs); camouflage also runs the gateway."""

    from feint.platform.serve import (
        Servable,
        default_workers,
        exit_with_supervisor,
        platform_for,
        reuse_port_socket,
        run_loop,
        run_workers,
        serve_all,
        service_app,
        service_port,
        uvicorn_server,
    )

    if name not in SERVICES:
        err.print(f"[red]error:[/red] unknown service {name!r}; choose one of {', '.join(SERVICES)}")
        raise typer.Exit(2)
    settings = _settings(serving=True)
    # The gateway keeps decoy sessions in its process: camouflage scales by pods, one process each.
    count = workers or (1 if name == "camouflage" else default_workers(settings))
    if count > 1 and name == "camouflage":
        err.print("[red]error:[/red] camouflage runs one process (its decoy sessions live there); scale with replicas")
        raise typer.Exit(2)
    if count > 1 and not settings.redis_url:
        err.print(
            "[red]error:[/red] --workers above 1 needs FEINT_REDIS_URL "
            "(rate limits and the cache are per process without it)"
        )
        raise typer.Exit(2)
    chosen = port or service_port(settings, name)
    reuse_port = supervisor is not None
    if supervisor is not None:
        exit_with_supervisor(supervisor)  # first: a supervisor killed while this one starts is noticed too

    def body() -> None:
        if count > 1:
            code = run_workers(name, settings=settings, port=chosen, workers=count)
            if code:
                raise typer.Exit(code)
            return
        with platform_for(settings) as (platform, _):
            servers: list[Servable] = [uvicorn_server(service_app(name, platform), settings=settings, port=chosen)]
            # A supervisor's worker listens on its own SO_REUSEPORT socket of the shared port.
            sockets = [reuse_port_socket(settings.host, chosen)] if reuse_port else None
            if name == "camouflage":
                from feint.camouflage.listener import GatewayListener

                if settings.upstream_url is None:
                    err.print("[yellow]FEINT_UPSTREAM_URL is not set: the management API only, no gateway[/yellow]")
                else:
                    servers.append(
                        GatewayListener.for_platform(
                            platform, upstream_url=settings.upstream_url, port=gateway_port or settings.gateway_port
                        )
                    )
            run_loop(serve_all(servers, sockets=sockets))

    _guard(body)


@app.command()
def status() -> None:
    """Show which services and which database answer."""
    from feint.platform.serve import service_port

    settings = _settings()
    table = Table(show_header=True)
    table.add_column("component")
    table.add_column("address")
    table.add_column("state")
    scheme = "https" if settings.tls_enabled else "http"
    probe = tls.probe_context(settings)
    healthy = True
    for name in SERVICES:
        url = f"{scheme}://{settings.host}:{service_port(settings, name)}/health"
        try:
            # A status probe of our own loopback service: see tls.probe_context.
            response = httpx.get(url, timeout=STATUS_TIMEOUT_SECONDS, verify=probe)
            state = "up" if response.status_code == 200 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            state = f"down ({type(exc).__name__})"
        healthy &= state == "up"
        table.add_row(name, url, state)
    if settings.database_url:
        try:
            with connect_sync(settings.database_url) as conn:
                conn.execute("SELECT 1")
            db_state = "up"
        except FeintError as exc:
            db_state = f"down ({exc.detail})"
        table.add_row("database", _hide_password(settings.database_url), db_state)
    else:
        pid_file = settings.home_dir / "pgdata" / "postmaster.pid"
        db_state = "up" if pid_file.exists() else "down"
        table.add_row("database", f"embedded ({settings.home_dir / 'pgdata'})", db_state)
    healthy &= db_state == "up"
    out.print(table)
    raise typer.Exit(0 if healthy else 1)


def _hide_password(url: str) -> str:
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, creds = head.partition("//")
    return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"


def _with_keys_db(settings: Settings, fn: Callable[[Any, keys_mod.KeyHasher], T]) -> T:
    from feint.platform.serve import resolve_database

    target = resolve_database(settings)
    try:
        migrations.migrate(target.migration_url)
        hasher = keys_mod.KeyHasher(derive(load_master_key(settings), "api-key-hash"))
        with connect_sync(target.url) as conn:
            return fn(conn, hasher)
    finally:
        target.stop()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str | None, typer.Option(help="Tenant the key belongs to (created if new).")] = None,
    scope: Annotated[str, typer.Option(help="read, write or admin (tenant keys).")] = "read",
    operator: Annotated[bool, typer.Option("--operator", help="A platform operator key (no tenant).")] = False,
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
) -> None:
    """Create an API key; the key is printed once, alone on stdout."""
    settings = _settings()
    if operator == (tenant is not None):
        err.print("[red]error:[/red] give either --tenant NAME (with --scope) or --operator")
        raise typer.Exit(2)
    if not operator and scope not in keys_mod.TENANT_SCOPE_RANK:
        err.print(f"[red]error:[/red] --scope must be read, write or admin, not {scope!r}")
        raise typer.Exit(2)
    chosen: keys_mod.Scope = "operator" if operator else scope  # type: ignore[assignment]

    def body() -> None:
        key, info = _with_keys_db(
            settings, lambda conn, hasher: keys_mod.create_key(conn, hasher, tenant=tenant, scope=chosen, name=name)
        )
        owner = f" for {tenant}" if tenant else ""
        err.print(f"created key {info.id} ({info.scope}{owner}); store it now, it is not shown again")
        sys.stdout.write(key + "\n")
        sys.stdout.flush()

    _guard(body)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `feint keys list`).")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    settings = _settings()
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        err.print(f"[red]error:[/red] {key_id!r} is not a key id (a UUID from `feint keys list`)")
        raise typer.Exit(2) from None

    def body() -> None:
        _with_keys_db(settings, lambda conn, _: keys_mod.revoke_key(conn, parsed))
        err.print(f"revoked {parsed}")

    _guard(body)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None) -> None:
    """List keys (never the keys themselves: only their ids and prefixes)."""
    settings = _settings()

    def body() -> None:
        rows = _with_keys_db(settings, lambda conn, _: keys_mod.list_keys(conn, tenant=tenant))
        table = Table(show_header=True)
        for column in ("id", "tenant", "scope", "prefix", "name", "created", "revoked"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                str(r.id),
                r.tenant or "(operator)",
                r.scope,
                r.prefix + "…",
                r.name,
                str(r.created_at),
                str(r.revoked_at or ""),
            )
        out.print(table)

    _guard(body)


@keys_app.command("rotate-data-key")
def keys_rotate_data_key(
    keyset: Annotated[str, typer.Option(help="Data keyset to rotate.")] = "credits-payment-data",
) -> None:
    """Add a new primary key to a data keyset; data encrypted before stays readable."""
    from feint.platform import crypto

    settings = _settings()

    def body() -> None:
        provider = crypto.LocalMasterKey(load_master_key(settings))
        before, after = _with_keys_db(
            settings, lambda conn, _: crypto.rotate_data_key(conn, provider=provider, name=keyset)
        )
        err.print(
            f"keyset {keyset}: primary key {before.primary_key_id} → {after.primary_key_id} "
            f"({len(after.key_ids)} keys); run `feint keys reencrypt` to move old data forward"
        )

    _guard(body)


@keys_app.command("reencrypt")
def keys_reencrypt(
    keyset: Annotated[str | None, typer.Option(help="Only columns of this keyset (default: all).")] = None,
) -> None:
    """Re-encrypt every registered column with its keyset's primary key (after rotate-data-key)."""
    from rich.progress import Progress

    from feint.platform import crypto

    settings = _settings()

    def body() -> None:
        provider = crypto.LocalMasterKey(load_master_key(settings))
        columns = crypto.registered_columns(keyset)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("re-encrypting", total=None)
            moved = _with_keys_db(
                settings,
                lambda conn, _: crypto.reencrypt(
                    conn, provider=provider, columns=columns, progress=lambda _c, rows: progress.advance(task, rows)
                ),
            )
        for column, count in moved.items():
            out.print(f"{column}: {count} re-encrypted")

    _guard(body)


def main() -> None:
    """Entry point: a bad setting is one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except ConfigError as exc:
        sys.stderr.write(f"feint: configuration error: {exc}\n")
        sys.exit(2)
