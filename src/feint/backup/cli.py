"""``feint backup …``: create, list, verify, restore and prune encrypted backups; keys; lifecycle.

Every command reads ``FEINT_BACKUP_URL`` (where), ``FEINT_S3_ENDPOINT_URL`` (which S3) and
``FEINT_BACKUP_KEYSET`` (the keyset file, opened with the master key). Long steps show a Rich
progress bar on stderr; machine-readable answers (``--json``) go to stdout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from feint.errors import FeintError
from feint.settings import Settings, get_settings

backup_app = typer.Typer(help="Encrypted, verified database backups (S3 or a folder).", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

LIFECYCLE_DAILY_DAYS = 30
LIFECYCLE_ARCHIVE_AFTER_DAYS = 30
LIFECYCLE_MONTHLY_DAYS = 7 * 365 + 2  # seven years, leap days included
ABORT_INCOMPLETE_UPLOADS_DAYS = 1


def lifecycle_rules(*, transition: bool = True) -> dict[str, Any]:
    """The S3 lifecycle configuration: 30 days of dailies, 7 years of monthlies (in Glacier
    Instant Retrieval after 30 days, unless ``transition`` is off for servers without storage classes)."""
    rules: dict[str, Any] = {
        "Rules": [
            {
                "ID": "feint-daily-30-days",
                "Status": "Enabled",
                "Filter": {"Prefix": "daily/"},
                "Expiration": {"Days": LIFECYCLE_DAILY_DAYS},
            },
            {
                "ID": "feint-monthly-7-years",
                "Status": "Enabled",
                "Filter": {"Prefix": "monthly/"},
                "Transitions": [{"Days": LIFECYCLE_ARCHIVE_AFTER_DAYS, "StorageClass": "GLACIER_IR"}],
                "Expiration": {"Days": LIFECYCLE_MONTHLY_DAYS},
            },
            {
                "ID": "feint-abort-incomplete-uploads",
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_UPLOADS_DAYS},
            },
        ]
    }
    if not transition:
        del rules["Rules"][1]["Transitions"]
    return rules


def _guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None


def _settings() -> Settings:
    from feint.platform.telemetry import configure_logging

    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, stderr=True)
    return settings


def _storage(settings: Settings) -> Any:
    from feint.backup.storage import open_storage

    return open_storage(settings.backup_url, endpoint_url=settings.s3_endpoint_url)


def _provider(settings: Settings) -> Any:
    from feint.platform.crypto import LocalMasterKey
    from feint.platform.secrets import load_master_key

    return LocalMasterKey(load_master_key(settings))


def _keys(settings: Settings) -> Any:
    from feint.backup import keys

    return keys.load(settings.backup_keyset, _provider(settings))


@contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The configured database's URL, or the embedded server's (started for the command)."""
    from feint.platform.serve import resolve_database

    target = resolve_database(settings)
    try:
        yield target.migration_url
    finally:
        target.stop()


class _Bar:
    """A progress bar's two handles: advance by a byte count, and set the total once known."""

    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress, self._task = progress, task

    def __call__(self, count: int) -> None:
        self._progress.advance(self._task, count)

    def total(self, value: int) -> None:
        self._progress.update(self._task, total=value)


@contextmanager
def _bar(description: str, total: int | None) -> Iterator[_Bar]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))


def _report(
    settings: Settings, *, operation: str, database: str, started: float, data: dict[str, Any], ok: bool
) -> None:
    from feint.backup import notify

    event = f"{'backup' if operation == 'create' else operation}.{'succeeded' if ok else 'failed'}"
    problem = notify.post_event(settings.backup_webhook_url, event=event, data=data)
    if problem:
        err.print(f"[yellow]warning:[/yellow] alert webhook not delivered: {problem}")
    problem = notify.push_metrics(
        settings.backup_pushgateway_url,
        operation=operation,
        database=database,
        succeeded=ok,
        duration_seconds=time.monotonic() - started,
        stored_bytes=data.get("stored_bytes"),
        database_bytes=data.get("database_bytes"),
    )
    if problem:
        err.print(f"[yellow]warning:[/yellow] metrics not pushed: {problem}")


@backup_app.command()
def create() -> None:
    """Back the database up now: pg_dump → zstd → AES-256-GCM → SHA-256 → storage, then a manifest."""
    from feint.backup import pipeline
    from feint.backup.verify import database_name

    settings = _settings()
    started = time.monotonic()

    def body() -> None:
        storage, keys = _storage(settings), _keys(settings)
        with _database(settings) as url:
            try:
                # The total is the database size (indexes are not dumped, so the bar may end early).
                with _bar("backing up (dump bytes of database size)", None) as bar:
                    manifest = pipeline.create_backup(
                        database_url=url, storage=storage, keys=keys, progress=bar, on_plan=bar.total
                    )
            except Exception as exc:
                detail = exc.detail if isinstance(exc, FeintError) else f"{type(exc).__name__}: {exc}"
                data = {"database": database_name(url), "error": detail, "url": storage.url}
                _report(settings, operation="create", database=database_name(url), started=started, data=data, ok=False)
                raise
        elapsed = time.monotonic() - started
        summary = {**manifest.summary(), "seconds": round(elapsed, 2), "url": storage.url}
        _report(settings, operation="create", database=manifest.database, started=started, data=summary, ok=True)
        err.print(
            f"backup {manifest.id} ({manifest.kind}): {manifest.database_bytes / 1e6:.1f} MB database, "
            f"{manifest.dump_bytes / 1e6:.1f} MB dump, {manifest.stored_bytes / 1e6:.1f} MB stored "
            f"in {elapsed:.1f} s ({manifest.database_bytes / 1e6 / max(elapsed, 1e-9):.1f} MB/s of database); "
            f"key {manifest.key_id}"
        )
        out.print(manifest.id)

    _guard(body)


@backup_app.command("list")
def list_backups(as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False) -> None:
    """List the backups (oldest first), and any incomplete ones."""
    from feint.backup import pipeline

    settings = _settings()

    def body() -> None:
        found = pipeline.catalog(_storage(settings))
        if as_json:
            rows = [
                m.summary() | {"sha256": m.sha256, "finished_at": m.finished_at.isoformat()} for m in found.manifests
            ]
            out.print_json(orjson.dumps({"backups": rows, "incomplete": found.incomplete}).decode())
            return
        table = Table(show_header=True)
        for column in ("id", "kind", "database", "consistent at", "database MB", "stored MB", "rows", "key"):
            table.add_column(column)
        for m in found.manifests:
            s = m.summary()
            table.add_row(
                m.id, m.kind, m.database, s["consistent_at"], f"{m.database_bytes / 1e6:.1f}",
                f"{m.stored_bytes / 1e6:.1f}", str(s["rows"]), str(m.key_id),
            )  # fmt: skip
        out.print(table)
        for folder in found.incomplete:
            err.print(f"[yellow]incomplete (no manifest):[/yellow] {folder}")

    _guard(body)


@backup_app.command()
def verify(
    backup_id: Annotated[str, typer.Argument(help="A backup id, or `latest`.")] = "latest",
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON on stdout.")] = False,
) -> None:
    """Download, check the hash, decrypt, restore into a scratch database, compare counts, audit the ledger."""
    from feint.backup import pipeline
    from feint.backup import verify as verify_mod

    settings = _settings()
    started = time.monotonic()

    def body() -> None:
        storage, keys = _storage(settings), _keys(settings)
        manifest = pipeline.catalog(storage).find(backup_id)
        with _database(settings) as url:
            try:
                with _bar(f"verifying {manifest.id}", manifest.stored_bytes) as advance:
                    report = verify_mod.verify_backup(
                        storage=storage, manifest=manifest, keys=keys, server_url=url, progress=advance
                    )
            except Exception as exc:
                detail = exc.detail if isinstance(exc, FeintError) else f"{type(exc).__name__}: {exc}"
                data = {"backup": manifest.id, "ok": False, "problems": [detail]}
                _report(settings, operation="verify", database=manifest.database, started=started, data=data, ok=False)
                raise
        _report(
            settings, operation="verify", database=manifest.database, started=started, data=report.body(), ok=report.ok
        )
        if as_json:
            out.print_json(orjson.dumps(report.body()).decode())
        for problem in report.problems:
            err.print(f"[red]problem:[/red] {problem}")
        verdict = "[green]verified[/green]" if report.ok else "[red]FAILED[/red]"
        err.print(
            f"{verdict} {manifest.id}: {report.tables} tables, {report.rows} rows, {report.tenants} ledger tenants, "
            f"{report.audit_entries} audit entries in {time.monotonic() - started:.1f} s"
        )
        if not report.ok:
            raise typer.Exit(1)

    _guard(body)


@backup_app.command()
def restore(
    backup_id: Annotated[str, typer.Argument(help="A backup id, or `latest`.")] = "latest",
    target: Annotated[
        str | None, typer.Option(help="Database URL to restore into (default: the configured database).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Restore over a database that has tables.")] = False,
    no_privileges: Annotated[bool, typer.Option("--no-privileges", help="Skip GRANTs (roles missing).")] = False,
) -> None:
    """Restore a backup (one transaction: all of it or nothing); refuses a non-empty target without --force."""
    from feint.backup import pipeline
    from feint.backup import verify as verify_mod

    settings = _settings()
    started = time.monotonic()

    def body() -> None:
        storage, keys = _storage(settings), _keys(settings)
        manifest = pipeline.catalog(storage).find(backup_id)
        with _database(settings) as configured:
            url = target or configured
            exists, tables = verify_mod.target_state(url)
            if tables and not force:
                err.print(
                    f"[red]error:[/red] {verify_mod.database_name(url)} has {tables} tables; "
                    "restore into an empty database or pass --force (replaces the objects the backup holds)"
                )
                raise typer.Exit(1)
            if not exists:
                verify_mod.create_database(url)
            with _bar(f"restoring {manifest.id}", manifest.stored_bytes) as advance:
                pipeline.restore_into(
                    storage=storage, manifest=manifest, keys=keys, target_url=url, clean=bool(tables),
                    privileges=not no_privileges, progress=advance,
                )  # fmt: skip
        err.print(
            f"restored {manifest.id} (consistent at {manifest.consistent_at.isoformat()}) into "
            f"{verify_mod.database_name(url)} in {time.monotonic() - started:.1f} s"
        )

    _guard(body)


@backup_app.command()
def prune(
    keep_daily: Annotated[int, typer.Option(help="Newest backup of each of the last N days.")] = 30,
    keep_weekly: Annotated[int, typer.Option(help="Newest backup of each of the last N ISO weeks.")] = 8,
    keep_monthly: Annotated[int, typer.Option(help="Newest backup of each of the last N months.")] = 84,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would go; delete nothing.")] = False,
) -> None:
    """Delete backups outside the retention policy (manifest first, so a half-pruned backup is incomplete)."""
    from feint.backup import pipeline, retention

    settings = _settings()

    def body() -> None:
        storage = _storage(settings)
        found = pipeline.catalog(storage)
        policy = retention.Policy(daily=keep_daily, weekly=keep_weekly, monthly=keep_monthly)
        kept, dropped = retention.plan([(m.id, m.consistent_at) for m in found.manifests], policy)
        by_id = {m.id: m for m in found.manifests}
        for backup_id in dropped:
            manifest = by_id[backup_id]
            out.print(f"{'would delete' if dry_run else 'delete'} {manifest.folder}")
            if not dry_run:
                storage.delete(manifest.manifest_key)
                storage.delete(manifest.object_key)
        err.print(f"{len(kept)} kept, {len(dropped)} {'would go' if dry_run else 'deleted'}")

    _guard(body)


@backup_app.command()
def keygen(out_path: Annotated[Path, typer.Option("--out", help="Where to write the keyset (mode 0600).")]) -> None:
    """Make a new backup keyset, sealed by the master key; point FEINT_BACKUP_KEYSET at it."""
    from feint.backup import keys

    settings = _settings()

    def body() -> None:
        made = keys.generate(out_path, _provider(settings))
        err.print(f"wrote {out_path}: primary key {made.info.primary_key_id}; back it up with the master key")

    _guard(body)


@backup_app.command("rotate-key")
def rotate_key() -> None:
    """Add a new primary key to FEINT_BACKUP_KEYSET; older backups stay readable with the old keys."""
    from feint.backup import keys
    from feint.errors import ConfigError

    settings = _settings()
    if settings.backup_keyset is None:
        raise ConfigError("FEINT_BACKUP_KEYSET", "unset", "the keyset file to rotate")

    def body() -> None:
        before, after = keys.rotate(settings.backup_keyset.expanduser(), _provider(settings))  # type: ignore[union-attr]
        err.print(
            f"backup keyset: primary key {before.primary_key_id} → {after.primary_key_id} ({len(after.key_ids)} keys)"
        )

    _guard(body)


@backup_app.command()
def lifecycle(
    print_only: Annotated[bool, typer.Option("--print", help="Print the JSON instead of applying it.")] = False,
    no_transition: Annotated[
        bool, typer.Option("--no-transition", help="No move to GLACIER_IR (servers without storage classes).")
    ] = False,
) -> None:
    """Apply the bucket lifecycle rules: dailies 30 days; monthlies to GLACIER_IR after 30 days, kept 7 years."""
    from feint.backup.storage import S3Storage

    rules = lifecycle_rules(transition=not no_transition)
    if print_only:
        out.print_json(orjson.dumps(rules).decode())
        return
    settings = _settings()

    def body() -> None:
        storage = _storage(settings)
        if not isinstance(storage, S3Storage):
            err.print("[red]error:[/red] lifecycle rules apply to an s3:// FEINT_BACKUP_URL; use `prune` for a folder")
            raise typer.Exit(2)
        prefixed = lifecycle_rules(transition=not no_transition)
        for rule in prefixed["Rules"]:
            rule["Filter"]["Prefix"] = storage.full_key(rule["Filter"]["Prefix"])
        storage.call(
            "put_bucket_lifecycle_configuration",
            what=f"set lifecycle of {storage.bucket} (a server without storage classes needs --no-transition)",
            Bucket=storage.bucket,
            LifecycleConfiguration=prefixed,
        )
        err.print(f"lifecycle rules applied to s3://{storage.bucket} ({len(prefixed['Rules'])} rules)")

    _guard(body)


@backup_app.command()
def drill(
    transfers: Annotated[int, typer.Option(help="Transfers written before the backup.", min=1, max=1_000_000)] = 2_000,
) -> None:
    """Disaster-recovery drill: fill the ledger, back up, destroy, restore, verify; prints RTO and data loss."""
    from feint.backup import drill as drill_mod
    from feint.platform.telemetry import configure_logging

    settings = _settings()
    configure_logging(level="warning", fmt=settings.log_format, stderr=True)  # not one line per drill request

    def body() -> None:
        with _database(settings) as url:
            result = drill_mod.run_drill(settings=settings, server_url=url, transfers=transfers, say=err.print)
        for problem in result.problems:
            err.print(f"[red]problem:[/red] {problem}")
        out.print(
            f"backup: {result.backup_id} ({result.transfers_before_backup} transfers, {result.backup_seconds:.1f} s)"
        )
        out.print(f"RTO (destroy → verified restore): {result.rto_seconds:.1f} s")
        out.print(
            f"data-loss window (backup consistent point → last acknowledged write): "
            f"{result.loss_window_seconds:.1f} s, {result.transfers_lost} acknowledged transfers lost"
        )
        out.print("drill " + ("[green]passed[/green]" if not result.problems else "[red]FAILED[/red]"))
        if result.problems:
            raise typer.Exit(1)

    _guard(body)
