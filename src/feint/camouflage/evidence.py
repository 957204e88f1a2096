"""Who is a bot and who is known-good: the one SQL definition that the labels (``store.labels``,
``GET /v1/labels``, ``feint camouflage labels``) and the canary guards (``shadow/canary/live.py``)
both use, so that a rule is judged on the same evidence before and during its rollout.

A decision's client, in this order of precedence:

1. the newest analyst verdict or customer appeal on its client key (``shadow_feedback``) decides;
2. else **benign** (0) when the client key or the address is on the allow-list
   (``camouflage_allowlist`` and ``FEINT_CAMOUFLAGE_ALLOW_CLIENTS``);
3. else a **bot** (1) on engagement, counted live (not only once its decoy session has ended): it
   took or used a honeytoken (the events are written within a second), or kept probing the decoys
   (``FEINT_CAMOUFLAGE_PROBE_REQUESTS`` diverted requests, or an ended session with that many
   requests or with a honeytoken taken or used);
4. else no label (NULL).

`labelled` wraps a query of decisions (columns ``client_key`` and ``c_ip`` at least) in the CTEs
that add ``label``; its parameters are `params` plus the caller's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

from feint.camouflage.engine.events import EventId
from feint.settings import Settings

TOKEN_EVENTS: Final = (EventId.HONEYTOKEN_TAKEN, EventId.HONEYTOKEN_USED)

_EVIDENCE: Final = """
clients AS (SELECT DISTINCT client_key FROM d),
verdicts AS (
    SELECT DISTINCT ON (f.client_key) f.client_key, f.verdict FROM shadow_feedback f
    WHERE f.tenant_id = %(tenant)s AND f.client_key IN (SELECT client_key FROM clients)
    ORDER BY f.client_key, f.created_at DESC
),
allowed AS (
    SELECT a.client FROM camouflage_allowlist a WHERE a.tenant_id = %(tenant)s
    UNION SELECT unnest(%(allowed)s::text[])
),
bots AS (
    SELECT s.client_key FROM camouflage_sessions s
    WHERE s.tenant_id = %(tenant)s AND s.client_key IN (SELECT client_key FROM clients)
      AND (s.tokens_taken > 0 OR s.requests >= %(probes)s
           OR EXISTS (SELECT 1 FROM camouflage_honeytokens h
                      WHERE h.tenant_id = s.tenant_id AND h.session_id = s.id AND h.uses > 0))
    UNION
    SELECT e.client_key FROM camouflage_events e
    WHERE e.tenant_id = %(tenant)s AND e.logtype = ANY(%(token_events)s)
      AND e.client_key IN (SELECT client_key FROM clients)
    UNION
    SELECT x.client_key FROM camouflage_decisions x
    WHERE x.tenant_id = %(tenant)s AND x.diverted AND x.client_key IN (SELECT client_key FROM clients)
    GROUP BY x.client_key HAVING count(*) >= %(probes)s
),
labelled AS (
    SELECT d.*,
           CASE WHEN v.verdict IS NOT NULL THEN (v.verdict = 'bot')::int
                WHEN d.client_key IN (SELECT client FROM allowed) OR d.c_ip IN (SELECT client FROM allowed) THEN 0
                WHEN b.client_key IS NOT NULL THEN 1
           END AS label
    FROM d
    LEFT JOIN verdicts v ON v.client_key = d.client_key
    LEFT JOIN bots b ON b.client_key = d.client_key
)
"""


def labelled(decisions: str) -> str:
    """``WITH d AS (decisions), …, labelled AS (d's rows with label 1, 0 or NULL)``: the caller
    appends its ``SELECT … FROM labelled``. ``decisions`` is a constant query of the caller."""
    return "WITH d AS (" + decisions + ")," + _EVIDENCE


def params(*, tenant_id: uuid.UUID, allowed: Sequence[str], probes_min: int) -> dict[str, Any]:
    """The parameters of `labelled`: ``allowed`` adds clients to the tenant's stored allow-list."""
    return {
        "tenant": tenant_id,
        "allowed": list(allowed),
        "probes": probes_min,
        "token_events": [int(e) for e in TOKEN_EVENTS],
    }


def allowed_clients(settings: Settings) -> list[str]:
    """``FEINT_CAMOUFLAGE_ALLOW_CLIENTS`` as a list (commas, blanks ignored)."""
    return [c.strip() for c in settings.camouflage_allow_clients.split(",") if c.strip()]
