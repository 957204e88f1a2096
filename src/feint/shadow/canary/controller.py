"""The canary controller: a background task of every shadow replica that checks due rollouts.

Each tick claims the running rollouts whose interval has passed with ``FOR UPDATE SKIP LOCKED``,
so every rollout is checked once per interval however many replicas run; the weight a check sets
is in the database at commit, and gateways poll it (``GET /v1/rulesets/{ref}/rollout``) at least
once per ``CANARY_TICK_SECONDS``. So a rollback reaches every gateway replica within one check
interval plus one tick plus one gateway poll period; docs/shadow.md states the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Final

import structlog

from feint.errors import FeintError
from feint.platform.db import Database
from feint.shadow.canary import service

log = structlog.get_logger(component="feint.shadow.canary.controller")

CANARY_TICK_SECONDS: Final = 1.0
STOP_SECONDS_MAX: Final = 5.0


class Controller:
    """Runs :func:`service.check_due` every ``tick_seconds`` until stopped."""

    def __init__(
        self, db: Database, *, source: service.WindowSource, tick_seconds: float = CANARY_TICK_SECONDS
    ) -> None:
        self._db = db
        self._source = source
        self._tick = tick_seconds
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name="canary-controller")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stopping.set()
        task, self._task = self._task, None
        try:
            await asyncio.wait_for(task, timeout=STOP_SECONDS_MAX)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tick(self) -> int:
        """One round of checks; returns how many rollouts were checked."""
        checked = await service.check_due(self._db, source=self._source, now=datetime.now(UTC))
        return len(checked)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except FeintError as exc:
                # The database is down or a rollout is broken: logged and counted, retried next tick.
                log.exception("canary_check_failed", error=exc.detail, slug=exc.slug)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._tick)
