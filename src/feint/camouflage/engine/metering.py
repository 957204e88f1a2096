"""Metering: the protected tenant's credits are charged one credit per judged request, in batches.

The request path only counts (`Metering.admit`, no I/O). A background task (`run`) works in
windows of ``FEINT_METERING_WINDOW_SECONDS``: it places a hold of ``FEINT_METERING_HOLD_CREDITS``
on the tenant's account (``FEINT_METERING_ACCOUNT``) towards the tenant's consumption account,
and at the end of the window captures exactly the requests counted (voids the hold when there
were none). Each call carries an ``Idempotency-Key`` derived from the window's id, so a retry
after a lost answer never charges twice; requests not yet charged (``owed``) stay owed until a
capture succeeds, so N requests cost exactly N credits however the calls fail and are retried.

When the credits service cannot be reached, or the tenant's account cannot cover a hold, the
gateway alerts (events 8009 ``metering.unavailable`` / 8010 ``metering.exhausted``) and, by
``FEINT_METERING_MODE``, keeps serving (``open``: the requests stay owed) or refuses protected
requests (``closed``: 503) until a hold succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from dataclasses import dataclass
from typing import Any, Final

import httpx
import structlog
from prometheus_client import Counter, Gauge

from feint.camouflage.engine.events import EventId, EventSink
from feint.camouflage.engine.gateway_config import MeteringSettings
from feint.errors import ConfigError, FeintError

CREDITS_TIMEOUT_SECONDS: Final = 5.0
HOLD_TIMEOUT_FACTOR: Final = 10  # a hold outlives its window this many times (slow captures)
HOLD_TIMEOUT_SECONDS_MIN: Final = 60
RETRY_SECONDS_MAX: Final = 30.0
# A hold in these states can no longer be captured: what it would have charged stays owed.
HOLD_GONE: Final = frozenset({"hold-expired", "hold-already-voided", "hold-already-captured", "hold-not-found"})

METERED = Counter("feint_gateway_metered_credits_total", "Credits captured for protected requests.")
OWED = Gauge("feint_gateway_metering_owed", "Protected requests counted but not yet charged.")
METERING_FAILURES = Counter("feint_gateway_metering_failures_total", "Failed credits calls.", ["reason"])
log = structlog.get_logger(component="feint.camouflage.metering")


class MeteringFailed(FeintError):
    slug, title, status = "metering-failed", "Metering failed", 503

    def __init__(self, *, reason: str, exhausted: bool = False) -> None:
        super().__init__(f"metering: {reason}", reason=reason)
        self.reason = reason
        self.exhausted = exhausted


@dataclass
class _Hold:
    id: uuid.UUID
    window: uuid.UUID
    amount: int


class Metering:
    """Counts protected requests and charges them to the tenant's credits in windows."""

    def __init__(
        self,
        settings: MeteringSettings,
        *,
        tenant: str,
        tenant_id: uuid.UUID | None,
        events: EventSink | None,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if settings.operator_key is None or settings.account is None:
            raise ConfigError(
                "FEINT_METERING_OPERATOR_KEY",
                "and FEINT_METERING_ACCOUNT must be set when metering is on",
                "an operator key and an account id",
            )
        self.settings = settings
        self.tenant_id = tenant_id
        self.events = events
        self.client = httpx.AsyncClient(
            base_url=settings.credits_url.rstrip("/") + "/v1",
            headers={"Authorization": f"Bearer {settings.operator_key}", "Feint-Tenant": tenant},
            timeout=CREDITS_TIMEOUT_SECONDS,
            transport=transport,
            verify=True if tls is None else tls,  # https: the service's certificate, our client certificate
        )
        self.owed = 0  # counted, not yet captured
        self.charged = 0
        self.refusing = False  # closed mode while a hold cannot be placed
        self._hold: _Hold | None = None
        self._opening: asyncio.Future[_Hold] | None = None
        self._consumption: str | None = None
        self._alerted: str | None = None
        self._full = asyncio.Event()

    def admit(self) -> bool:
        """Count one protected request; False when closed metering refuses it."""
        if self.refusing and self.settings.mode == "closed":
            return False
        self.owed += 1
        OWED.set(self.owed)
        if self._hold is not None and self.owed >= self._hold.amount:
            self._full.set()  # the window's hold is used up: close it now
        return True

    async def _call(
        self, method: str, path: str, *, key: str | None = None, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        headers = {} if key is None else {"Idempotency-Key": key}
        try:
            response = await self.client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            METERING_FAILURES.labels("unreachable").inc()
            raise MeteringFailed(reason=f"credits unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            problem = response.json() if response.headers.get("content-type", "").endswith("json") else {}
            slug = str(problem.get("type", "")).rsplit("/", 1)[-1] or str(response.status_code)
            METERING_FAILURES.labels(slug).inc()
            raise MeteringFailed(reason=slug, exhausted=slug in ("insufficient-funds", "limit-reached"))
        data: dict[str, Any] = response.json()
        return data

    async def _consumption_account(self) -> str:
        if self._consumption is None:
            account = await self._call("GET", f"/accounts/{self.settings.account}")
            page = await self._call("GET", f"/accounts?kind=consumption&code={account['code']}", key="-", body=None)
            if not page["accounts"]:
                raise MeteringFailed(reason=f"no consumption account for code {account['code']}")
            self._consumption = str(page["accounts"][0]["id"])
        return self._consumption

    async def _open(self) -> _Hold:
        window = uuid.uuid4()
        amount = max(self.settings.hold_credits, self.owed)
        timeout = max(HOLD_TIMEOUT_SECONDS_MIN, int(self.settings.window_seconds * HOLD_TIMEOUT_FACTOR))
        hold = await self._call(
            "POST",
            "/holds",
            key=f"feint-meter-{window}-hold",
            body={
                "id": str(window),
                "debit_account_id": str(self.settings.account),
                "credit_account_id": await self._consumption_account(),
                "amount": amount,
                "timeout_seconds": timeout,
                "metadata": {"metering": "gateway"},
            },
        )
        return _Hold(uuid.UUID(str(hold["id"])), window, int(hold["amount"]))

    async def settle(self) -> None:
        """Capture what is owed on the current hold (void it when nothing is), then forget it."""
        hold = self._hold
        if hold is None:
            return
        amount = min(self.owed, hold.amount)
        try:
            await self._resolve(hold, amount)
        except MeteringFailed as exc:
            if exc.reason not in HOLD_GONE:
                raise
            log.warning("metering_hold_gone", hold=str(hold.id), reason=exc.reason, owed=self.owed)
        self._hold = None

    async def _resolve(self, hold: _Hold, amount: int) -> None:
        if amount == 0:
            await self._call("POST", f"/holds/{hold.id}/void", key=f"feint-meter-{hold.window}-void", body=None)
        else:
            await self._call(
                "POST",
                f"/holds/{hold.id}/capture",
                key=f"feint-meter-{hold.window}-capture",
                body={"amount": amount},
            )
            self.owed -= amount
            self.charged += amount
            METERED.inc(amount)
            OWED.set(self.owed)

    async def step(self) -> None:
        """One window's work: settle the last hold, open the next one; alert on trouble."""
        try:
            await self.settle()
            # Shielded and remembered: a hold the credits service opened while this task was being
            # cancelled is still settled by close(), never left pending.
            self._opening = asyncio.ensure_future(self._open())
            self._hold = await asyncio.shield(self._opening)
            self._opening = None
        except MeteringFailed as exc:
            self.refusing = True
            self._alert(exc)
            raise
        self.refusing = False
        self._alerted = None

    def _alert(self, exc: MeteringFailed) -> None:
        kind = "exhausted" if exc.exhausted else "unavailable"
        if self._alerted == kind:
            return  # once per outage, not once per window
        self._alerted = kind
        log.warning("metering_alert", kind=kind, reason=exc.reason, owed=self.owed, mode=self.settings.mode)
        if self.events is not None:
            event = EventId.METERING_EXHAUSTED if exc.exhausted else EventId.METERING_UNAVAILABLE
            self.events.emit(event, tenant_id=self.tenant_id, details={"reason": exc.reason, "owed": self.owed})

    async def run(self) -> None:
        """Windows until cancelled; then a last capture of what is owed (bounded by the timeout).

        A window ends early when its hold is used up; after a failure the next try waits twice
        as long (up to ``RETRY_SECONDS_MAX``)."""
        delay = self.settings.window_seconds
        try:
            while True:
                try:
                    await self.step()
                    delay = self.settings.window_seconds
                except MeteringFailed:
                    delay = min(RETRY_SECONDS_MAX, delay * 2)
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._full.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        try:
            await asyncio.shield(self._final())
        finally:
            await self.client.aclose()

    async def _final(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None and self._hold is None:
            try:
                self._hold = await opening
            except MeteringFailed as exc:
                log.warning("metering_final_open_failed", reason=exc.reason)
        try:
            await self.settle()
        except MeteringFailed as exc:
            log.warning("metering_final_capture_failed", reason=exc.reason, owed=self.owed)


def for_settings(
    settings: MeteringSettings,
    *,
    tenant: str,
    tenant_id: uuid.UUID | None,
    events: EventSink | None,
    tls: ssl.SSLContext | None = None,
) -> Metering | None:
    """The metering of the gateway, or None when ``FEINT_METERING_MODE=off``; ``tls``: the internal
    client's context (`feint.platform.tls.client_context`) for an https credits URL."""
    if settings.mode == "off":
        return None
    return Metering(settings, tenant=tenant, tenant_id=tenant_id, events=events, tls=tls)
