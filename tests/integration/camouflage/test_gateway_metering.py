"""Metering: N requests through the gateway cost exactly N credits, whatever the calls go through."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from feint.camouflage.engine.gateway_config import MeteringSettings
from feint.camouflage.engine.metering import Metering, MeteringFailed
from feint.credits.app import create
from feint.credits.config import CreditsSettings
from feint.platform.runtime import Platform, build
from feint.settings import Settings
from tests.conftest import serve_app
from tests.integration.camouflage.conftest import exchange, running_gateway

pytestmark = pytest.mark.integration

BROWSER = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


class LosesFirstCapture(httpx.AsyncBaseTransport):
    """Passes calls to the credits app, but loses the answer of the first capture (it did happen)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("/capture") and self.lost == 0:
            self.lost += 1
            await response.aread()
            raise httpx.ReadError("connection lost after the capture", request=request)
        return response


async def _ledger(client: httpx.AsyncClient, operator: dict[str, str], write: dict[str, str]) -> str:
    account = await client.post("/v1/accounts", json={"code": "gateway-requests"}, headers=write)
    assert account.status_code == 201, account.text
    account_id = str(account.json()["id"])
    grant = await client.post("/v1/grants", json={"account_id": account_id, "amount": 1_000}, headers=operator)
    assert grant.status_code == 201, grant.text
    return account_id


async def test_n_requests_cost_n_credits(
    platform: Platform,
    tmp_path: Path,
    clean_db: str,
    make_settings: Callable[..., Settings],
    api_key: Callable[..., str],
) -> None:
    """37 requests (forwarded and diverted) through the gateway take exactly 37 credits, over several
    holds, with one capture answer lost on the way and retried."""
    credits_platform = build(
        make_settings(database_url=clean_db, rate_limit_per_second=100_000.0, rate_limit_burst=100_000),
        database_url=clean_db,
    )
    app = create(credits_platform, settings=CreditsSettings(sweeper_interval_seconds=0, cache="off"))
    operator_key = api_key(scope="operator")
    operator = {"authorization": f"Bearer {operator_key}", "feint-tenant": "acme"}
    write = {"authorization": f"Bearer {api_key(tenant='acme', scope='write')}"}
    async with serve_app(app) as client:
        account_id = await _ledger(client, operator, write)
        settings = MeteringSettings(
            mode="open",
            credits_url="http://credits",
            operator_key=operator_key,
            account=uuid.UUID(account_id),
            window_seconds=0.05,
            hold_credits=10,
        )
        transport = LosesFirstCapture(httpx.ASGITransport(app=app))
        meter = Metering(settings, tenant="acme", tenant_id=None, events=None, transport=transport)
        async with running_gateway(platform, tmp_path) as gw:
            gw.gateway.meter = meter
            task = asyncio.create_task(meter.run())
            for n in range(30):
                await exchange(gw.port, b"GET /item/%d HTTP/1.1\r\nHost: a\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
                               % (n, BROWSER))  # fmt: skip
            for n in range(7):
                await exchange(
                    gw.port, b"GET /?id=1+union+select+%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % n
                )
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        balance = (await client.get(f"/v1/accounts/{account_id}", headers=write)).json()
    assert transport.lost == 1
    assert meter.charged == 37 and meter.owed == 0
    assert balance["posted"] == 1_000 - 37 and balance["pending"] == 0


async def test_unreachable_credits_open_keeps_serving_closed_refuses(platform: Platform, tmp_path: Path) -> None:
    """With credits down, open metering serves and owes; closed metering answers 503."""
    settings = MeteringSettings(
        mode="closed",
        credits_url="http://127.0.0.1:1",
        operator_key="k",
        account=uuid.uuid4(),
        window_seconds=0.05,
    )
    meter = Metering(settings, tenant="acme", tenant_id=None, events=None)
    with pytest.raises(MeteringFailed):
        await meter.step()
    async with running_gateway(platform, tmp_path) as gw:
        gw.gateway.meter = meter
        refused = await exchange(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nConnection: close\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert gw.upstream.requests == []
        open_meter = Metering(settings.model_copy(update={"mode": "open"}), tenant="acme", tenant_id=None, events=None)
        open_meter.refusing = True
        gw.gateway.meter = open_meter
        served = await exchange(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nConnection: close\r\n\r\n")
        assert served.startswith(b"HTTP/1.1 200 ") and open_meter.owed == 1
    await meter.close()
    await open_meter.close()
