"""``feint credits …``: the ledger for operators (the same service code the API runs)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from feint.credits.config import load_credits_settings
from feint.errors import FeintError, NotFound
from feint.platform.serve import platform_for
from feint.platform.telemetry import configure_logging
from feint.settings import get_settings

if TYPE_CHECKING:
    from feint.credits.service import Credits
    from feint.platform.runtime import Platform

# The service layer (schemas, store, Tink) is imported inside the commands that use it: importing
# it here would slow every `feint` command down by a second.

credits_app = typer.Typer(help="The credits ledger: accounts, grants, balances, audit.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit chain.", no_args_is_help=True)
credits_app.add_typer(audit_app, name="audit")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def _run(body: Callable[[Credits, uuid.UUID | None], Awaitable[T]], *, tenant: str | None) -> T:
    """Resolve and migrate the database, open a platform and the service, run ``body(service, tenant_id)``."""
    from feint.credits.service import Credits

    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, stderr=True)  # stdout carries the answer
    credits_settings = load_credits_settings().model_copy(update={"sweeper_interval_seconds": 0, "cache": "off"})

    async def main(platform: Platform) -> T:
        await platform.open()
        try:
            tenant_id = None
            if tenant is not None:
                tenant_id = await platform.keys.tenant_id(tenant)
                if tenant_id is None:
                    raise NotFound(f"no tenant {tenant!r} (tenants are created by `feint keys create --tenant`)")
            return await body(Credits(platform, credits_settings), tenant_id)
        finally:
            await platform.close()

    try:
        with platform_for(settings) as (platform, _):
            return asyncio.run(main(platform))
    except FeintError as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(1) from None


def _print(body: bytes) -> None:
    out.print_json(body.decode())


def _parse(model: type[M], fields: dict[str, object]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        err.print(f"[red]error:[/red] --{'.'.join(str(p) for p in first['loc']).replace('_', '-')}: {first['msg']}")
        raise typer.Exit(2) from None


def _tenant_id(tenant_id: uuid.UUID | None) -> uuid.UUID:
    if tenant_id is None:  # pragma: no cover - every command but audit verify requires --tenant
        raise NotFound("no tenant")
    return tenant_id


Tenant = Annotated[str, typer.Option(help="Tenant name.")]


@credits_app.command("create-account")
def create_account(
    tenant: Tenant,
    code: Annotated[str, typer.Option(help="Credit type, e.g. api-calls.")],
    account_id: Annotated[str | None, typer.Option("--id", help="Account id (default: a new UUID).")] = None,
    no_overdraft: Annotated[bool, typer.Option(help="Refuse to go below zero (--allow-overdraft: no limit).")] = True,
    overdraft_limit: Annotated[
        int | None, typer.Option(help="How far below zero a no-overdraft account may go.")
    ] = None,
) -> None:
    """Open a customer account (and the tenant's system accounts for its code)."""
    from feint.credits.schemas import AccountIn

    request = _parse(
        AccountIn,
        {
            "code": code,
            "no_overdraft": no_overdraft,
            "overdraft_limit": overdraft_limit,
            **({"id": account_id} if account_id else {}),
        },
    )

    async def body(service: Credits, tenant_id: uuid.UUID | None) -> bytes:
        return (await service.one(request.to_domain(_tenant_id(tenant_id)), idempotency=None)).body

    _print(_run(body, tenant=tenant))


@credits_app.command()
def grant(
    tenant: Tenant,
    account: Annotated[str, typer.Option(help="Account id.")],
    amount: Annotated[int, typer.Option(help="Credits to issue.")],
    expires_at: Annotated[datetime | None, typer.Option(help="ISO 8601 instant with a time zone.")] = None,
    priority: Annotated[int, typer.Option(help="0 burns first.")] = 50,
) -> None:
    """Issue credits to an account."""
    from feint.credits.schemas import GrantIn

    fields: dict[str, object] = {"account_id": account, "amount": amount, "priority": priority}
    if expires_at is not None:
        fields["expires_at"] = expires_at
    request = _parse(GrantIn, fields)

    async def body(service: Credits, tenant_id: uuid.UUID | None) -> bytes:
        return (await service.one(request.to_domain(_tenant_id(tenant_id)), idempotency=None)).body

    _print(_run(body, tenant=tenant))


@credits_app.command()
def balance(tenant: Tenant, account: Annotated[str, typer.Option(help="Account id.")]) -> None:
    """Posted, pending and available balances of an account."""
    account_id = _uuid(account, "--account")

    async def body(service: Credits, tenant_id: uuid.UUID | None) -> bytes:
        return await service.account(tenant_id=_tenant_id(tenant_id), account_id=account_id)

    _print(_run(body, tenant=tenant))


@audit_app.command("verify")
def audit_verify(
    tenant: Annotated[str | None, typer.Option(help="One tenant (default: every tenant).")] = None,
) -> None:
    """Recompute the audit chain; exit 1 naming the first broken entry."""
    from feint.credits.verify import verify

    async def body(service: Credits, tenant_id: uuid.UUID | None) -> dict[str, object]:
        return (await verify(service.db, tenant_id=tenant_id)).body()

    report = _run(body, tenant=tenant)
    out.print_json(orjson.dumps(report, default=str).decode())
    if not report["ok"]:
        broken = report.get("first_broken")
        if isinstance(broken, dict):
            err.print(f"[red]broken:[/red] tenant {broken['tenant_id']} entry {broken['seq']}: {broken['reason']}")
        raise typer.Exit(1)


def _uuid(value: str, option: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        err.print(f"[red]error:[/red] {option} must be a UUID")
        raise typer.Exit(2) from None
