"""Fixtures of the credits integration tests: the app on the test database, keys, helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from feint.credits.app import create
from feint.credits.config import CreditsSettings
from feint.platform.runtime import Platform, build
from feint.settings import Settings
from tests.conftest import serve_app


@dataclass
class Ledger:
    """An HTTP client on the credits app with keys for tenant ``acme`` and an operator."""

    client: httpx.AsyncClient
    platform: Platform
    write: dict[str, str]
    read: dict[str, str]
    admin: dict[str, str]
    operator: dict[str, str]  # names tenant acme
    other: dict[str, str]  # a write key of tenant "globex"

    async def account(self, code: str = "api-calls", **fields: Any) -> dict[str, Any]:
        r = await self.client.post("/v1/accounts", json={"code": code, **fields}, headers=self.write)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def grant(self, account_id: str, amount: int, **fields: Any) -> dict[str, Any]:
        r = await self.client.post(
            "/v1/grants", json={"account_id": account_id, "amount": amount, **fields}, headers=self.operator
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def balance(self, account_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.client.get(f"/v1/accounts/{account_id}", headers=headers or self.read)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def transfer(self, debit: str, credit: str, amount: int, **extra: Any) -> httpx.Response:
        headers = {**self.write, **extra.pop("headers", {})}
        return await self.client.post(
            "/v1/transfers",
            json={"debit_account_id": debit, "credit_account_id": credit, "amount": amount, **extra},
            headers=headers,
        )


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


@pytest.fixture
def credits_settings() -> CreditsSettings:
    """Sweeper off (tests that need it turn it on), no cache unless a test asks."""
    return CreditsSettings(sweeper_interval_seconds=0, cache="off")


@pytest.fixture
def ledger_factory(
    clean_db: str,
    make_settings: Callable[..., Settings],
    api_key: Callable[..., str],
    credits_settings: CreditsSettings,
) -> Callable[..., Any]:
    def factory(settings: CreditsSettings | None = None, **platform_overrides: Any) -> Any:
        import contextlib

        @contextlib.asynccontextmanager
        async def run() -> AsyncIterator[Ledger]:
            overrides = {"database_url": clean_db, "rate_limit_per_second": 100_000.0, "rate_limit_burst": 100_000}
            overrides.update(platform_overrides)
            platform = build(make_settings(**overrides), database_url=clean_db)
            app = create(platform, settings=settings or credits_settings)
            keys = {
                "write": bearer(api_key(tenant="acme", scope="write")),
                "read": bearer(api_key(tenant="acme", scope="read")),
                "admin": bearer(api_key(tenant="acme", scope="admin")),
                "operator": bearer(api_key(scope="operator"), **{"feint-tenant": "acme"}),
                "other": bearer(api_key(tenant="globex", scope="write")),
            }
            async with serve_app(app) as client:
                yield Ledger(client=client, platform=platform, **keys)

        return run()

    return factory


@pytest.fixture
async def ledger(ledger_factory: Callable[..., Any]) -> AsyncIterator[Ledger]:
    async with ledger_factory() as value:
        yield value


def new_id() -> str:
    return str(uuid.uuid4())
