"""The credits service app (port 5004): the ledger's routes on the shared plumbing."""

from __future__ import annotations

from fastapi import FastAPI

from feint.credits import views
from feint.credits.cache import BalanceCache
from feint.credits.config import CreditsSettings, load_credits_settings
from feint.credits.hot import HotRoutes
from feint.credits.service import EXTRAS_KEY, Credits
from feint.platform.runtime import Platform
from feint.platform.web import create_app

DESCRIPTION = """Double-entry credits ledger: accounts, grants, transfers, holds, batches, audit chain.

Amounts are integers (1 to 2**63-1); every mutating request accepts an `Idempotency-Key` header
(same key and body: the first answer again, with `Idempotent-Replayed: true`; another body: 409
`idempotency-key-reused`). Operator keys name the tenant with the `Feint-Tenant` header.
Errors are RFC 9457 problem documents; see docs/credits.md."""


def create(
    platform: Platform, *, settings: CreditsSettings | None = None, cache: BalanceCache | None = None
) -> FastAPI:
    service = Credits(platform, settings or load_credits_settings(), cache=cache)
    platform.extras[EXTRAS_KEY] = service

    async def start(_: Platform) -> None:
        await service.start()

    async def stop(_: Platform) -> None:
        await service.stop()

    return create_app(
        "credits",
        platform=platform,
        routers=[views.router],
        description=DESCRIPTION,
        on_startup=[start],
        on_shutdown=[stop],
        inner=[HotRoutes],
    )
