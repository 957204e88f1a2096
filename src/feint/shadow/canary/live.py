"""Guard data from live traffic: the gateway's decision log, labelled by what we know of each client.

A decision belongs to a rollout's slices when the gateway judged it while the rollout was live
(``camouflage_decisions.rollout_id``); ``canary`` says which slice. A decision's client is a bot,
benign or unlabelled by the definition the labels use too (``feint.camouflage.evidence``: the
newest verdict, else the allow-list, else engagement with the decoys counted live); an unlabelled
one counts for the error rate and latency, not for the two label rates.

Counts come from one aggregate query; latency samples are a uniform random sample of at most
``LATENCY_SAMPLES_MAX`` per slice, so a busy step costs the same as a quiet one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from feint.camouflage import evidence
from feint.camouflage.evidence import allowed_clients
from feint.platform.db import Database
from feint.settings import Settings
from feint.shadow.canary.guards import LATENCY_SAMPLES_MAX, SliceStats
from feint.shadow.canary.service import Window

PROBE_REQUESTS_DEFAULT: Final = 5  # FEINT_CAMOUFLAGE_PROBE_REQUESTS' default

_LABELLED: Final = (
    evidence.labelled(
        "SELECT canary, diverted, gateway_error, client_key, c_ip FROM camouflage_decisions"
        " WHERE tenant_id = %(tenant)s AND rollout_id = %(rollout)s"
        " AND decided_at >= %(since)s AND decided_at < %(until)s"
    )
    + """
SELECT canary,
       count(*) AS requests,
       count(*) FILTER (WHERE gateway_error) AS errors,
       count(*) FILTER (WHERE label = 0) AS benign,
       count(*) FILTER (WHERE label = 0 AND diverted) AS benign_diverted,
       count(*) FILTER (WHERE label = 1) AS bots,
       count(*) FILTER (WHERE label = 1 AND diverted) AS bots_diverted
FROM labelled GROUP BY canary
"""
)

_LATENCIES: Final = """
SELECT eval_latency_us FROM camouflage_decisions
WHERE tenant_id = %(tenant)s AND rollout_id = %(rollout)s AND canary = %(canary)s
  AND decided_at >= %(since)s AND decided_at < %(until)s AND random() < %(fraction)s
LIMIT %(limit)s
"""


class DecisionLogSource:
    """The live :class:`~feint.shadow.canary.service.WindowSource`."""

    def __init__(self, db: Database, *, allowed: Sequence[str] = (), probes_min: int = PROBE_REQUESTS_DEFAULT) -> None:
        self._db = db
        self._allowed = tuple(allowed)
        self._probes_min = probes_min

    @classmethod
    def for_settings(cls, db: Database, settings: Settings) -> DecisionLogSource:
        """With the allow-list and probe count the labels use (``FEINT_CAMOUFLAGE_*``)."""
        return cls(db, allowed=allowed_clients(settings), probes_min=settings.camouflage_probe_requests)

    async def window(self, *, tenant_id: uuid.UUID, rollout_id: uuid.UUID, since: datetime, until: datetime) -> Window:
        params = {"tenant": tenant_id, "rollout": rollout_id, "since": since, "until": until}
        async with self._db.connection() as conn:
            evidence_params = evidence.params(tenant_id=tenant_id, allowed=self._allowed, probes_min=self._probes_min)
            cursor = await conn.execute(_LABELLED.encode(), {**evidence_params, **params})
            rows = {bool(row["canary"]): row for row in await cursor.fetchall()}
            slices: dict[bool, SliceStats] = {}
            for canary in (False, True):
                row = rows.get(canary)
                if row is None:
                    slices[canary] = SliceStats()
                    continue
                fraction = min(1.0, LATENCY_SAMPLES_MAX / max(1, int(row["requests"])))
                cursor = await conn.execute(
                    _LATENCIES.encode(),
                    {**params, "canary": canary, "fraction": fraction, "limit": LATENCY_SAMPLES_MAX},
                )
                latencies = tuple(float(r["eval_latency_us"]) for r in await cursor.fetchall())
                slices[canary] = SliceStats(
                    requests=int(row["requests"]),
                    errors=int(row["errors"]),
                    benign=int(row["benign"]),
                    benign_diverted=int(row["benign_diverted"]),
                    bots=int(row["bots"]),
                    bots_diverted=int(row["bots_diverted"]),
                    latencies_us=latencies,
                )
        return Window(production=slices[False], canary=slices[True])
