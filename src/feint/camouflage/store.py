"""The camouflage engine's SQL: bandit arms, sessions, honeytokens, events, the allow-list, and
the reads of the management API and the labels. The only module with SQL for these tables.

Every query names the tenant, so another tenant's ids are never found. Bandit updates are single
statements with increments (``pulls = pulls + 1``), so replicas never lose each other's updates.
The decision log (``camouflage_decisions``, migration 0005) belongs to the gateway; this module
only reads it (threat explanations, labels).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from psycopg.types.json import Jsonb

from feint.camouflage import evidence
from feint.camouflage.engine.bandit import ArmStats
from feint.camouflage.engine.bands import Band
from feint.camouflage.engine.events import Event, bounded_details
from feint.camouflage.engine.honeytokens import TokenKind, TokenOwner, TokenSet
from feint.camouflage.engine.sessions import Session
from feint.platform.db import Conn, Database

LIST_LIMIT_MAX: Final = 1_000
TOKEN_HINT_CHARS: Final = 10


async def _one(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any]) -> dict[str, Any] | None:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchone()


async def _all(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any]) -> list[dict[str, Any]]:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchall()


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- bandit -------------------------------------------------------------------------------


def _arm(row: dict[str, Any]) -> ArmStats:
    return ArmStats(
        arm=row["arm"],
        band=Band(row["band"]),
        pulls=int(row["pulls"]),
        reward_sum=float(row["reward_sum"]),
        active=bool(row["active"]),
    )


class PostgresBanditStore:
    """Bandit state in ``camouflage_arms``: durable, shared by every replica."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def arms(self, *, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        async with self.db.connection() as conn:
            rows = await _all(
                conn,
                "SELECT arm, band, pulls, reward_sum, active FROM camouflage_arms "
                "WHERE tenant_id = %s AND band = %s ORDER BY arm",
                (tenant_id, band.value),
            )
        return [_arm(r) for r in rows]

    async def ensure(self, *, tenant_id: uuid.UUID, band: Band, arms: Sequence[str], active: Sequence[str]) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                """INSERT INTO camouflage_arms (tenant_id, band, arm, active)
                   SELECT %s, %s, arm, arm = ANY(%s) FROM unnest(%s::text[]) AS arm
                   ON CONFLICT (tenant_id, band, arm) DO NOTHING""",
                (tenant_id, band.value, list(active), list(arms)),
            )

    async def record(self, *, tenant_id: uuid.UUID, band: Band, arm: str, reward: float) -> None:
        """One ended session, counted even when the arm's row is gone (inserted, active: the arm was
        in play when the session chose it), as `MemoryBanditStore.record` does."""
        async with self.db.connection() as conn:
            await conn.execute(
                """INSERT INTO camouflage_arms AS a (tenant_id, band, arm, active, pulls, reward_sum)
                   VALUES (%(tenant)s, %(band)s, %(arm)s, true, 1, %(reward)s)
                   ON CONFLICT (tenant_id, band, arm) DO UPDATE
                   SET pulls = a.pulls + 1, reward_sum = a.reward_sum + %(reward)s, updated_at = now()""",
                {"tenant": tenant_id, "band": band.value, "arm": arm, "reward": reward},
            )

    async def rotate(self, *, tenant_id: uuid.UUID, band: Band, retire: str, explore: str | None) -> bool:
        async with self.db.transaction() as conn:
            row = await _one(
                conn,
                """UPDATE camouflage_arms SET active = false, retired_at = now(), updated_at = now()
                   WHERE tenant_id = %s AND band = %s AND arm = %s AND active RETURNING arm""",
                (tenant_id, band.value, retire),
            )
            if row is None:
                return False
            if explore is not None:
                await conn.execute(
                    """UPDATE camouflage_arms SET active = true, updated_at = now()
                       WHERE tenant_id = %s AND band = %s AND arm = %s""",
                    (tenant_id, band.value, explore),
                )
        return True

    async def seed(self, *, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        """What Redis starts from when its copy is missing (`SharedBanditStore`)."""
        return await self.arms(tenant_id=tenant_id, band=band)


# --- sessions, honeytokens, events ----------------------------------------------------------


class CamouflageStore:
    """Sessions, honeytokens and events of the engine (the SessionStore, HoneytokenStore and
    EventStore protocols in one object over one pool)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def started(self, session: Session) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                """INSERT INTO camouflage_sessions (tenant_id, id, client_key, src_host, threat, band, arm,
                                                   started_at, last_seen_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (
                    session.tenant_id,
                    session.id,
                    session.client_key[:128],
                    session.src_host[:64],
                    session.threat,
                    session.band.value,
                    session.arm,
                    _at(session.started),
                    _at(session.last_seen),
                ),
            )

    async def ended(self, session: Session, *, reward: float) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                """UPDATE camouflage_sessions SET last_seen_at = %s, ended_at = %s, requests = %s,
                          tokens_taken = %s, engaged_seconds = %s, reward = %s, paths = %s
                   WHERE tenant_id = %s AND id = %s""",
                (
                    _at(session.last_seen),
                    _at(session.ended or session.last_seen),
                    session.requests,
                    session.tokens_taken,
                    session.engaged_seconds,
                    reward,
                    session.paths,
                    session.tenant_id,
                    session.id,
                ),
            )

    async def insert_tokens(self, *, tenant_id: uuid.UUID, tokens: TokenSet) -> None:
        rows = [
            (digest, tenant_id, tokens.session_id, kind.value, tokens.values[kind][:TOKEN_HINT_CHARS])
            for kind, digest in tokens.digests().items()
        ]
        async with self.db.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                """INSERT INTO camouflage_honeytokens (digest, tenant_id, session_id, kind, hint)
                   VALUES (%s, %s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING""",
                rows,
            )

    async def owners(self, digests: Sequence[str]) -> list[TokenOwner]:
        async with self.db.connection() as conn:
            rows = await _all(
                conn,
                "SELECT digest, kind, tenant_id, session_id FROM camouflage_honeytokens WHERE digest = ANY(%s)",
                (list(digests),),
            )
        return [TokenOwner(r["digest"], TokenKind(r["kind"]), r["tenant_id"], r["session_id"]) for r in rows]

    async def mark_used(self, digests: Sequence[str]) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE camouflage_honeytokens SET uses = uses + 1, last_used_at = now() WHERE digest = ANY(%s)",
                (list(digests),),
            )

    async def insert_events(self, events: Sequence[Event]) -> None:
        rows = [
            (
                e.tenant_id,
                e.id,
                int(e.event_id),
                e.event_id.dotted,
                _at(e.time),
                e.session_id,
                e.src_host[:64],
                e.client_key[:128],
                e.threat,
                Jsonb(bounded_details(e.details)),
            )
            for e in events
            if e.tenant_id is not None
        ]
        if not rows:
            return
        async with self.db.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                """INSERT INTO camouflage_events (tenant_id, id, logtype, eventid, at, session_id, src_host,
                                                 client_key, threat, details)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                rows,
            )


# --- reads of the management API ---------------------------------------------------------
#
# Listings are newest first and paged by keyset: ``after`` is the (time, key) of the last row of
# the previous page, and each query asks for ``limit + 1`` rows so that the caller knows whether
# another page follows without a second query.


def _newest_first(column: str) -> str:
    """The time window, keyset and order of a listing by ``column`` then id, newest first (``column`` is
    always a constant of this module; every value is a parameter)."""
    return f"""
             AND (%(since)s::timestamptz IS NULL OR {column} >= %(since)s)
             AND (%(until)s::timestamptz IS NULL OR {column} < %(until)s)
             AND (%(after_at)s::timestamptz IS NULL OR ({column}, id) < (%(after_at)s, %(after_id)s::uuid))
           ORDER BY {column} DESC, id DESC LIMIT %(limit)s"""


def _window(
    since: datetime | None, until: datetime | None, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> dict[str, Any]:
    """The parameters of `_newest_first` (one row more than a page)."""
    return {
        "since": since,
        "until": until,
        "after_at": None if after is None else after[0],
        "after_id": None if after is None else after[1],
        "limit": min(limit, LIST_LIMIT_MAX) + 1,
    }


async def list_arms(conn: Conn, *, tenant_id: uuid.UUID, band: str | None) -> list[dict[str, Any]]:
    return await _all(
        conn,
        """SELECT band, arm, pulls, reward_sum, active, retired_at, updated_at,
                  CASE WHEN pulls > 0 THEN reward_sum / pulls ELSE 0 END AS effectiveness
           FROM camouflage_arms WHERE tenant_id = %(tenant)s AND (%(band)s::text IS NULL OR band = %(band)s)
           ORDER BY band, effectiveness DESC, arm""",
        {"tenant": tenant_id, "band": band},
    )


_SESSION_COLUMNS: Final = (
    "id, client_key, src_host, threat, band, arm, started_at, last_seen_at, ended_at, requests, tokens_taken, "
    "engaged_seconds, reward, paths"
)


async def list_sessions(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    band: str | None = None,
    persona: str | None = None,
    arm: str | None = None,
    ended: bool | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Sessions started in [since, until), newest first, after the keyset ``after``."""
    return await _all(
        conn,
        f"""SELECT {_SESSION_COLUMNS} FROM camouflage_sessions
           WHERE tenant_id = %(tenant)s
             AND (%(band)s::text IS NULL OR band = %(band)s)
             AND (%(persona)s::text IS NULL OR split_part(arm, '/', 1) = %(persona)s)
             AND (%(arm)s::text IS NULL OR arm = %(arm)s)
             AND (%(ended)s::boolean IS NULL OR (ended_at IS NOT NULL) = %(ended)s)"""
        + _newest_first("started_at"),
        {
            "tenant": tenant_id,
            "band": band,
            "persona": persona,
            "arm": arm,
            "ended": ended,
            **_window(since, until, after, limit),
        },
    )


async def get_session(conn: Conn, *, tenant_id: uuid.UUID, session_id: uuid.UUID) -> dict[str, Any] | None:
    return await _one(
        conn,
        f"SELECT {_SESSION_COLUMNS} FROM camouflage_sessions WHERE tenant_id = %s AND id = %s",
        (tenant_id, session_id),
    )


async def list_events(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID | None = None,
    logtype: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Events at [since, until), newest first, after the keyset ``after``."""
    return await _all(
        conn,
        """SELECT id, logtype, eventid, at, session_id, src_host, client_key, threat, details
           FROM camouflage_events WHERE tenant_id = %(tenant)s
             AND (%(session)s::uuid IS NULL OR session_id = %(session)s)
             AND (%(logtype)s::int IS NULL OR logtype = %(logtype)s)"""
        + _newest_first("at"),
        {
            "tenant": tenant_id,
            "session": session_id,
            "logtype": logtype,
            **_window(since, until, after, limit),
        },
    )


async def list_honeytokens(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID | None = None,
    used: bool | None = None,
    after: tuple[datetime, uuid.UUID, str] | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Honeytokens planted, newest first: their digest, kind and hint, never the value. Paged by
    (created_at, session, kind), one token per kind and session, so a cursor carries no digest."""
    return await _all(
        conn,
        """SELECT digest, session_id, kind, hint, created_at, uses, last_used_at FROM camouflage_honeytokens
           WHERE tenant_id = %(tenant)s AND (%(session)s::uuid IS NULL OR session_id = %(session)s)
             AND (%(used)s::boolean IS NULL OR (uses > 0) = %(used)s)
             AND (%(after_at)s::timestamptz IS NULL
                  OR (created_at, session_id, kind) < (%(after_at)s, %(after_session)s::uuid, %(after_kind)s::text))
           ORDER BY created_at DESC, session_id DESC, kind DESC LIMIT %(limit)s""",
        {
            "tenant": tenant_id,
            "session": session_id,
            "used": used,
            "after_at": None if after is None else after[0],
            "after_session": None if after is None else after[1],
            "after_kind": None if after is None else after[2],
            "limit": min(limit, LIST_LIMIT_MAX) + 1,
        },
    )


async def list_decisions(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    session_id: uuid.UUID | None = None,
    action: str | None = None,
    threat_min: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int,
) -> list[dict[str, Any]]:
    """Logged decisions at [since, until), newest first, after the keyset ``after`` (summaries)."""
    return await _all(
        conn,
        """SELECT id, decided_at, threat, action, cs_method, cs_uri_stem, sc_status, client_key, session_id, arm
           FROM camouflage_decisions WHERE tenant_id = %(tenant)s
             AND (%(session)s::uuid IS NULL OR session_id = %(session)s)
             AND (%(action)s::text IS NULL OR action = %(action)s)
             AND (%(threat)s::int IS NULL OR threat >= %(threat)s)"""
        + _newest_first("decided_at"),
        {
            "tenant": tenant_id,
            "session": session_id,
            "action": action,
            "threat": threat_min,
            **_window(since, until, after, limit),
        },
    )


async def get_decision(conn: Conn, *, tenant_id: uuid.UUID, decision_id: uuid.UUID) -> dict[str, Any] | None:
    """A logged decision with its threat explanation (the gateway's table, migration 0005)."""
    return await _one(
        conn,
        """SELECT id, decided_at, client_key, fingerprint, c_ip, cs_method, cs_uri_stem, cs_uri_query,
                  cs_user_agent, cs_host, sc_status, threat, action, explanation, rules, ruleset_version,
                  rules_tag, rollout_id, canary, eval_latency_us, session_id, persona, arm
           FROM camouflage_decisions WHERE tenant_id = %s AND id = %s""",
        (tenant_id, decision_id),
    )


# --- allow-list and labels -----------------------------------------------------------------


async def allow(conn: Conn, *, tenant_id: uuid.UUID, client: str, note: str) -> dict[str, Any]:
    """Add an allow-list entry or replace its note; the row, with ``created`` true when it is new.

    Run it in a transaction: the service role may insert and delete entries but not update them
    (migration 0004), so a changed note is a delete and an insert that keeps ``created_at``."""
    params = {"tenant": tenant_id, "client": client, "note": note}
    row = await _one(
        conn,
        """INSERT INTO camouflage_allowlist (tenant_id, client, note) VALUES (%(tenant)s, %(client)s, %(note)s)
           ON CONFLICT (tenant_id, client) DO NOTHING RETURNING client, note, created_at""",
        params,
    )
    if row is not None:
        return {**row, "created": True}
    old = await _one(
        conn,
        """DELETE FROM camouflage_allowlist WHERE tenant_id = %(tenant)s AND client = %(client)s
           RETURNING created_at""",
        params,
    )
    row = await _one(
        conn,
        """INSERT INTO camouflage_allowlist (tenant_id, client, note, created_at)
           VALUES (%(tenant)s, %(client)s, %(note)s, coalesce(%(created)s::timestamptz, now()))
           RETURNING client, note, created_at""",
        {**params, "created": None if old is None else old["created_at"]},
    )
    if row is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
        raise RuntimeError("allow-list insert returned nothing")
    return {**row, "created": old is None}


async def list_allowed(
    conn: Conn, *, tenant_id: uuid.UUID, after: str | None = None, limit: int
) -> list[dict[str, Any]]:
    """Allow-list entries by client, after ``after``; ``limit + 1`` rows (see the listings above)."""
    return await _all(
        conn,
        """SELECT client, note, created_at FROM camouflage_allowlist
           WHERE tenant_id = %(tenant)s AND (%(after)s::text IS NULL OR client > %(after)s)
           ORDER BY client LIMIT %(limit)s""",
        {"tenant": tenant_id, "after": after, "limit": min(limit, LIST_LIMIT_MAX) + 1},
    )


async def allowed(conn: Conn, *, tenant_id: uuid.UUID, client: str) -> dict[str, Any] | None:
    return await _one(
        conn,
        "SELECT client, note, created_at FROM camouflage_allowlist WHERE tenant_id = %s AND client = %s",
        (tenant_id, client),
    )


async def disallow(conn: Conn, *, tenant_id: uuid.UUID, client: str) -> bool:
    row = await _one(
        conn,
        "DELETE FROM camouflage_allowlist WHERE tenant_id = %s AND client = %s RETURNING client",
        (tenant_id, client),
    )
    return row is not None


async def allowlist(conn: Conn, *, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    return await _all(
        conn,
        "SELECT client, note, created_at FROM camouflage_allowlist WHERE tenant_id = %s ORDER BY client",
        (tenant_id,),
    )


LABELS_ROWS_MAX: Final = 1_000_000
TOKEN_EVENTS: Final = evidence.TOKEN_EVENTS

# One row per decision of the window, labelled by the evidence on its client (``evidence.py``, the
# definition the canary guards use too); decisions with no evidence either way are left out.
LABELS_QUERY: Final = (
    evidence.labelled(
        "SELECT id, decided_at, client_key, c_ip FROM camouflage_decisions"
        " WHERE tenant_id = %(tenant)s AND decided_at >= %(since)s AND decided_at < %(until)s"
    )
    + """
SELECT id::text AS id, label FROM labelled WHERE label IS NOT NULL
ORDER BY decided_at, id
LIMIT %(limit)s
"""
)


async def labels(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    since: datetime,
    until: datetime,
    allowed: Sequence[str],
    probes_min: int,
    limit: int = LABELS_ROWS_MAX,
) -> list[tuple[str, int]]:
    """``(decision id, label)`` of the tenant's decisions in [since, until), oldest first, at most
    ``limit``: 1 for a bot, 0 for a known-good client (see ``evidence.py`` for the evidence and
    its order); ``allowed`` adds clients to the tenant's stored allow-list."""
    cur = await conn.execute(
        LABELS_QUERY.encode(),
        {
            **evidence.params(tenant_id=tenant_id, allowed=allowed, probes_min=probes_min),
            "since": since,
            "until": until,
            "limit": limit,
        },
    )
    return [(r["id"], int(r["label"])) for r in await cur.fetchall()]


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str)
