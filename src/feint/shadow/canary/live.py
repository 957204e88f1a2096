"""Guard data from live traffic: the gateway's decision log, labelled by what we know of each client.

A decision belongs to a rollout's slices when the gateway judged it while the rollout was live
(``camouflage_decisions.rollout_id``); ``canary`` says which slice. A decision's client is

* **benign** when it is on the allow-list of known-good clients (``camouflage_allowlist``, by
  client key or address), or when the newest analyst verdict or customer appeal on it says so;
* a **bot** when the newest verdict says so, or when it took a honeytoken or kept probing a decoy
  (a decoy session with a honeytoken taken or at least ``ENGAGED_REQUESTS_MIN`` requests);
* unlabelled otherwise (it counts for the error rate and latency, not for the two label rates).

Counts come from one aggregate query; latency samples are a uniform random sample of at most
``LATENCY_SAMPLES_MAX`` per slice, so a busy step costs the same as a quiet one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

from feint.platform.db import Database
from feint.shadow.canary.guards import LATENCY_SAMPLES_MAX, SliceStats
from feint.shadow.canary.service import Window

ENGAGED_REQUESTS_MIN: Final = 5

_LABELLED: Final = """
WITH d AS (
    SELECT canary, diverted, gateway_error, client_key, c_ip
    FROM camouflage_decisions
    WHERE tenant_id = %(tenant)s AND rollout_id = %(rollout)s
      AND decided_at >= %(since)s AND decided_at < %(until)s
),
verdicts AS (
    SELECT DISTINCT ON (client_key) client_key, verdict
    FROM shadow_feedback WHERE tenant_id = %(tenant)s
    ORDER BY client_key, created_at DESC
),
engaged AS (
    SELECT DISTINCT client_key FROM camouflage_sessions
    WHERE tenant_id = %(tenant)s AND (tokens_taken > 0 OR requests >= %(engaged)s)
),
labelled AS (
    SELECT d.*,
           CASE WHEN v.verdict IS NOT NULL THEN v.verdict
                WHEN EXISTS (SELECT 1 FROM camouflage_allowlist a
                             WHERE a.tenant_id = %(tenant)s AND a.client IN (d.client_key, d.c_ip)) THEN 'benign'
                WHEN e.client_key IS NOT NULL THEN 'bot'
           END AS label
    FROM d
    LEFT JOIN verdicts v ON v.client_key = d.client_key
    LEFT JOIN engaged e ON e.client_key = d.client_key
)
SELECT canary,
       count(*) AS requests,
       count(*) FILTER (WHERE gateway_error) AS errors,
       count(*) FILTER (WHERE label = 'benign') AS benign,
       count(*) FILTER (WHERE label = 'benign' AND diverted) AS benign_diverted,
       count(*) FILTER (WHERE label = 'bot') AS bots,
       count(*) FILTER (WHERE label = 'bot' AND diverted) AS bots_diverted
FROM labelled GROUP BY canary
"""

_LATENCIES: Final = """
SELECT eval_latency_us FROM camouflage_decisions
WHERE tenant_id = %(tenant)s AND rollout_id = %(rollout)s AND canary = %(canary)s
  AND decided_at >= %(since)s AND decided_at < %(until)s AND random() < %(fraction)s
LIMIT %(limit)s
"""


class DecisionLogSource:
    """The live :class:`~feint.shadow.canary.service.WindowSource`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def window(self, *, tenant_id: uuid.UUID, rollout_id: uuid.UUID, since: datetime, until: datetime) -> Window:
        params = {"tenant": tenant_id, "rollout": rollout_id, "since": since, "until": until}
        async with self._db.connection() as conn:
            cursor = await conn.execute(_LABELLED.encode(), {**params, "engaged": ENGAGED_REQUESTS_MIN})
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
