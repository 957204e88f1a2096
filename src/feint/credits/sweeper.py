"""The sweeper: releases expired holds, moves expired grant remainders to the expiry account,
forgets idempotency keys past their retention.

Balances never wait for it (a grant stops counting at its expiry whether or not it has run); it
makes the ledger say so with transfers, so that the expiry stays auditable. Each pass handles at
most ``sweeper_items_max`` of each kind; several processes may sweep at once, since every
operation re-checks its object under the account lock and does nothing when already done.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter

from feint.credits.models import ExpireHold, Operation, SweepGrant
from feint.credits.store import reads

if TYPE_CHECKING:
    from feint.credits.service import Credits

log = structlog.get_logger(component="feint.credits.sweeper")
SWEPT = Counter("feint_credits_swept_total", "Objects handled by the sweeper.", ["kind"])


@dataclass(frozen=True)
class SweepReport:
    holds: int
    grants: int
    idempotency_keys: int


async def sweep_once(service: Credits) -> SweepReport:
    limit = service.settings.sweeper_items_max
    async with service.db.connection() as conn:
        holds = await reads.expired_holds(conn, limit=limit)
        grants = await reads.expired_grants(conn, limit=limit)
        purged = await reads.purge_idempotency(conn, limit=limit)
    ops: list[Operation] = [ExpireHold(tenant_id=t, hold_id=h) for t, h, _, _ in holds]
    ops += [
        SweepGrant(tenant_id=t, grant_id=g, account_id=a, code=c, transfer_id=uuid.uuid4()) for t, g, a, c in grants
    ]
    step = service.settings.micro_batch_operations_max
    for start in range(0, len(ops), step):
        await service.run_quietly(ops[start : start + step])
    SWEPT.labels("hold").inc(len(holds))
    SWEPT.labels("grant").inc(len(grants))
    SWEPT.labels("idempotency_key").inc(purged)
    return SweepReport(holds=len(holds), grants=len(grants), idempotency_keys=purged)


async def sweep_forever(service: Credits) -> None:
    """Sweep every ``sweeper_interval_seconds`` until cancelled; a failed pass is logged and retried."""
    while True:
        try:
            await sweep_once(service)
        except Exception:
            log.exception("sweep_failed")
        await asyncio.sleep(service.settings.sweeper_interval_seconds)
