"""The shadow service's SQL: the only module that talks to the shadow tables.

Every function takes a connection (``Database.transaction()`` when several statements must hold
together) and returns plain frozen rows. Every read that returns many rows takes a ``limit``;
callers bound it. Tenants are a column of every key, so a row of another tenant is never found.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from feint.errors import InvariantViolated
from feint.platform.db import Conn

# --- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSetRow:
    id: uuid.UUID
    name: str
    description: str
    versions: int
    created_by: str
    created_at: datetime
    production: int | None = None


@dataclass(frozen=True, slots=True)
class VersionRow:
    ruleset_id: uuid.UUID
    number: int
    content_hash: str
    author: str
    message: str
    threshold: float | None
    rule_count: int
    created_by: str
    created_at: datetime
    state: str
    state_changed_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentRow:
    position: int
    name: str
    yaml: str


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule_key: str
    position: int
    document: int
    title: str
    level: str
    weight: float
    content_hash: str
    post_response: bool


@dataclass(frozen=True, slots=True)
class HistoryRow:
    seq: int
    ruleset_id: uuid.UUID
    event: str
    number: int
    from_state: str | None
    to_state: str
    replaced: int | None
    actor: str
    reason: str
    recorded_at: datetime
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DatasetRow:
    id: uuid.UUID
    name: str
    file: str
    row_count: int
    sha256: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EvaluationRow:
    id: uuid.UUID
    tenant_id: uuid.UUID
    status: str
    progress: float
    request: dict[str, Any]
    inputs: dict[str, Any]
    error: str | None
    runner: str
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_RULESET_COLUMNS = "id, name, description, versions, created_by, created_at"
_RULESET_SELECT = """r.id, r.name, r.description, r.versions, r.created_by, r.created_at,
    (SELECT v.number FROM shadow_versions v
      WHERE v.tenant_id = r.tenant_id AND v.ruleset_id = r.id AND v.state = 'production') AS production"""
_VERSION_COLUMNS = (
    "ruleset_id, number, content_hash, author, message, threshold, rule_count, created_by, created_at, "
    "state, state_changed_at"
)
_EVALUATION_COLUMNS = (
    "id, tenant_id, status, progress, request, inputs, error, runner, created_by, created_at, started_at, finished_at"
)


async def _one(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any]) -> dict[str, Any] | None:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchone()


async def _all(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any]) -> list[dict[str, Any]]:
    cur = await conn.execute(query.encode(), params)
    return await cur.fetchall()


# --- tenants and the starter rule set -----------------------------------------------------


async def mark_starter_installed(conn: Conn, tenant_id: uuid.UUID) -> bool:
    """Record that the starter set is installed for a tenant; False when it already was."""
    row = await _one(
        conn,
        "INSERT INTO shadow_tenants (tenant_id) VALUES (%s) ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id",
        (tenant_id,),
    )
    return row is not None


async def starter_installed(conn: Conn, tenant_id: uuid.UUID) -> bool:
    row = await _one(conn, "SELECT 1 AS found FROM shadow_tenants WHERE tenant_id = %s", (tenant_id,))
    return row is not None


async def tenant_id_by_name(conn: Conn, name: str) -> uuid.UUID | None:
    row = await _one(conn, "SELECT id FROM tenants WHERE name = %s", (name,))
    return row["id"] if row else None


async def tenant_name(conn: Conn, tenant_id: uuid.UUID) -> str:
    row = await _one(conn, "SELECT name FROM tenants WHERE id = %s", (tenant_id,))
    if row is None:
        raise InvariantViolated(f"tenant {tenant_id} of a verified key does not exist")
    return str(row["name"])


# --- rule sets ----------------------------------------------------------------------------


async def insert_ruleset(
    conn: Conn, *, tenant_id: uuid.UUID, name: str, description: str, created_by: str
) -> RuleSetRow | None:
    """A new rule set, or None when the tenant already has one of that name."""
    row = await _one(
        conn,
        f"""INSERT INTO shadow_rulesets (tenant_id, id, name, description, created_by)
            VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant_id, name) DO NOTHING
            RETURNING {_RULESET_COLUMNS}""",
        (tenant_id, uuid.uuid4(), name, description, created_by),
    )
    return RuleSetRow(**row) if row else None


def _ruleset_where(ref: uuid.UUID | str) -> str:
    return "r.id = %(ref)s" if isinstance(ref, uuid.UUID) else "r.name = %(ref)s"


async def get_ruleset(
    conn: Conn, *, tenant_id: uuid.UUID, ref: uuid.UUID | str, lock: bool = False
) -> RuleSetRow | None:
    """A rule set by id or name with its production version; ``lock`` holds its row to the end of
    the transaction, which serialises every change to its versions."""
    row = await _one(
        conn,
        f"""SELECT {_RULESET_SELECT}
            FROM shadow_rulesets r
            WHERE r.tenant_id = %(tenant)s AND {_ruleset_where(ref)}
            {"FOR UPDATE OF r" if lock else ""}""",
        {"tenant": tenant_id, "ref": ref},
    )
    return RuleSetRow(**row) if row else None


async def list_rulesets(conn: Conn, *, tenant_id: uuid.UUID, limit: int, offset: int) -> list[RuleSetRow]:
    rows = await _all(
        conn,
        f"""SELECT {_RULESET_SELECT}
            FROM shadow_rulesets r WHERE r.tenant_id = %s ORDER BY r.name LIMIT %s OFFSET %s""",
        (tenant_id, limit, offset),
    )
    return [RuleSetRow(**row) for row in rows]


async def next_version_number(conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID) -> int:
    row = await _one(
        conn,
        "UPDATE shadow_rulesets SET versions = versions + 1 WHERE tenant_id = %s AND id = %s RETURNING versions",
        (tenant_id, ruleset_id),
    )
    if row is None:
        raise InvariantViolated(f"rule set {ruleset_id} vanished while adding a version")
    return int(row["versions"])


# --- versions -----------------------------------------------------------------------------


async def insert_version(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    version: VersionRow,
    documents: Sequence[DocumentRow],
    rules: Sequence[RuleRow],
) -> VersionRow:
    """Write a version with its documents and rules; returns it as stored (server timestamps)."""
    row = await _one(
        conn,
        f"""INSERT INTO shadow_versions (tenant_id, ruleset_id, number, content_hash, author, message, threshold,
                                         rule_count, created_by, state)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_VERSION_COLUMNS}""",
        (
            tenant_id,
            version.ruleset_id,
            version.number,
            version.content_hash,
            version.author,
            version.message,
            version.threshold,
            version.rule_count,
            version.created_by,
            version.state,
        ),
    )
    if row is None:  # pragma: no cover - INSERT … RETURNING returns the row or raises
        raise InvariantViolated("insert of a version returned nothing")
    key = (tenant_id, version.ruleset_id, version.number)
    async with conn.cursor() as cur:
        await cur.executemany(
            b"""INSERT INTO shadow_version_documents (tenant_id, ruleset_id, number, position, name, yaml)
                VALUES (%s, %s, %s, %s, %s, %s)""",
            [(*key, d.position, d.name, d.yaml) for d in documents],
        )
        await cur.executemany(
            b"""INSERT INTO shadow_version_rules (tenant_id, ruleset_id, number, rule_key, position, document, title,
                                                  level, weight, content_hash, post_response)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            [
                (*key, r.rule_key, r.position, r.document, r.title, r.level, r.weight, r.content_hash, r.post_response)
                for r in rules
            ],
        )
    return VersionRow(**row)


async def get_version(conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, number: int) -> VersionRow | None:
    row = await _one(
        conn,
        f"SELECT {_VERSION_COLUMNS} FROM shadow_versions WHERE tenant_id = %s AND ruleset_id = %s AND number = %s",
        (tenant_id, ruleset_id, number),
    )
    return VersionRow(**row) if row else None


async def list_versions(
    conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, limit: int, before: int | None
) -> list[VersionRow]:
    """Newest first; ``before`` pages to older versions."""
    rows = await _all(
        conn,
        f"""SELECT {_VERSION_COLUMNS} FROM shadow_versions
            WHERE tenant_id = %s AND ruleset_id = %s AND (%s::integer IS NULL OR number < %s)
            ORDER BY number DESC LIMIT %s""",
        (tenant_id, ruleset_id, before, before, limit),
    )
    return [VersionRow(**row) for row in rows]


async def version_documents(
    conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, number: int
) -> list[DocumentRow]:
    rows = await _all(
        conn,
        """SELECT position, name, yaml FROM shadow_version_documents
           WHERE tenant_id = %s AND ruleset_id = %s AND number = %s ORDER BY position""",
        (tenant_id, ruleset_id, number),
    )
    return [DocumentRow(**row) for row in rows]


async def version_rules(conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, number: int) -> list[RuleRow]:
    rows = await _all(
        conn,
        """SELECT rule_key, position, document, title, level, weight, content_hash, post_response
           FROM shadow_version_rules WHERE tenant_id = %s AND ruleset_id = %s AND number = %s ORDER BY position""",
        (tenant_id, ruleset_id, number),
    )
    return [RuleRow(**row) for row in rows]


async def set_state(
    conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, number: int, from_state: str, to_state: str
) -> None:
    """Move a version from ``from_state`` to ``to_state``; the caller holds the rule set's lock."""
    try:
        row = await _one(
            conn,
            """UPDATE shadow_versions SET state = %s, state_changed_at = now()
               WHERE tenant_id = %s AND ruleset_id = %s AND number = %s AND state = %s RETURNING number""",
            (to_state, tenant_id, ruleset_id, number, from_state),
        )
    except psycopg.errors.UniqueViolation as exc:
        raise InvariantViolated(f"a second production version of rule set {ruleset_id}") from exc
    if row is None:
        raise InvariantViolated(f"version {number} was not in state {from_state} under the rule set's lock")


async def was_production(conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, number: int) -> bool:
    row = await _one(
        conn,
        """SELECT 1 AS found FROM shadow_history
           WHERE tenant_id = %s AND ruleset_id = %s AND number = %s AND to_state = 'production' LIMIT 1""",
        (tenant_id, ruleset_id, number),
    )
    return row is not None


# --- history ------------------------------------------------------------------------------


async def insert_history(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    ruleset_id: uuid.UUID,
    event: str,
    number: int,
    from_state: str | None,
    to_state: str,
    actor: str,
    reason: str,
    replaced: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        b"""INSERT INTO shadow_history (tenant_id, ruleset_id, event, number, from_state, to_state, replaced, actor,
                                        reason, details)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            tenant_id,
            ruleset_id,
            event,
            number,
            from_state,
            to_state,
            replaced,
            actor,
            reason[:2000],
            None if details is None else Jsonb(details),
        ),
    )


async def list_history(
    conn: Conn, *, tenant_id: uuid.UUID, ruleset_id: uuid.UUID, limit: int, before: int | None
) -> list[HistoryRow]:
    """Newest first; ``before`` (a ``seq``) pages to older events."""
    rows = await _all(
        conn,
        """SELECT seq, ruleset_id, event, number, from_state, to_state, replaced, actor, reason, recorded_at, details
           FROM shadow_history
           WHERE tenant_id = %s AND ruleset_id = %s AND (%s::bigint IS NULL OR seq < %s)
           ORDER BY seq DESC LIMIT %s""",
        (tenant_id, ruleset_id, before, before, limit),
    )
    return [HistoryRow(**row) for row in rows]


# --- datasets -----------------------------------------------------------------------------


async def insert_dataset(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    dataset_id: uuid.UUID,
    name: str,
    file: str,
    row_count: int,
    sha256: str,
    created_by: str,
) -> DatasetRow:
    row = await _one(
        conn,
        """INSERT INTO shadow_datasets (tenant_id, id, name, file, row_count, sha256, created_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           RETURNING id, name, file, row_count, sha256, created_by, created_at""",
        (tenant_id, dataset_id, name, file, row_count, sha256, created_by),
    )
    if row is None:  # pragma: no cover - INSERT … RETURNING returns the row or raises
        raise InvariantViolated("insert of a dataset returned nothing")
    return DatasetRow(**row)


async def get_dataset(conn: Conn, *, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> DatasetRow | None:
    row = await _one(
        conn,
        """SELECT id, name, file, row_count, sha256, created_by, created_at FROM shadow_datasets
           WHERE tenant_id = %s AND id = %s""",
        (tenant_id, dataset_id),
    )
    return DatasetRow(**row) if row else None


async def list_datasets(conn: Conn, *, tenant_id: uuid.UUID, limit: int) -> list[DatasetRow]:
    rows = await _all(
        conn,
        """SELECT id, name, file, row_count, sha256, created_by, created_at FROM shadow_datasets
           WHERE tenant_id = %s ORDER BY created_at DESC, id LIMIT %s""",
        (tenant_id, limit),
    )
    return [DatasetRow(**row) for row in rows]


# --- evaluations --------------------------------------------------------------------------


async def insert_evaluation(
    conn: Conn,
    *,
    tenant_id: uuid.UUID,
    evaluation_id: uuid.UUID,
    request: dict[str, Any],
    inputs: dict[str, Any],
    runner: str,
    created_by: str,
) -> EvaluationRow:
    row = await _one(
        conn,
        f"""INSERT INTO shadow_evaluations (tenant_id, id, status, request, inputs, runner, created_by)
            VALUES (%s, %s, 'queued', %s, %s, %s, %s) RETURNING {_EVALUATION_COLUMNS}""",
        (tenant_id, evaluation_id, Jsonb(request), Jsonb(inputs), runner, created_by),
    )
    if row is None:  # pragma: no cover - INSERT … RETURNING returns the row or raises
        raise InvariantViolated("insert of an evaluation returned nothing")
    return EvaluationRow(**row)


async def get_evaluation(conn: Conn, *, tenant_id: uuid.UUID, evaluation_id: uuid.UUID) -> EvaluationRow | None:
    row = await _one(
        conn,
        f"SELECT {_EVALUATION_COLUMNS} FROM shadow_evaluations WHERE tenant_id = %s AND id = %s",
        (tenant_id, evaluation_id),
    )
    return EvaluationRow(**row) if row else None


async def list_evaluations(conn: Conn, *, tenant_id: uuid.UUID, limit: int) -> list[EvaluationRow]:
    rows = await _all(
        conn,
        f"""SELECT {_EVALUATION_COLUMNS} FROM shadow_evaluations WHERE tenant_id = %s
            ORDER BY created_at DESC, id LIMIT %s""",
        (tenant_id, limit),
    )
    return [EvaluationRow(**row) for row in rows]


async def evaluation_report(
    conn: Conn, *, tenant_id: uuid.UUID, evaluation_id: uuid.UUID, html: bool
) -> tuple[str, Any] | None:
    """(status, report) of an evaluation: the JSON report or the HTML page; None when unknown."""
    column = "report_html" if html else "report"
    row = await _one(
        conn,
        f"SELECT status, {column} AS report FROM shadow_evaluations WHERE tenant_id = %s AND id = %s",
        (tenant_id, evaluation_id),
    )
    return (str(row["status"]), row["report"]) if row else None


async def start_evaluation(conn: Conn, *, evaluation_id: uuid.UUID, runner: str) -> bool:
    """queued → running; False when the job is no longer queued (reaped as interrupted)."""
    row = await _one(
        conn,
        """UPDATE shadow_evaluations SET status = 'running', started_at = now(), heartbeat_at = now()
           WHERE id = %s AND runner = %s AND status = 'queued' RETURNING id""",
        (evaluation_id, runner),
    )
    return row is not None


async def set_progress(conn: Conn, *, evaluation_id: uuid.UUID, progress: float, inputs: dict[str, Any]) -> None:
    await conn.execute(
        b"""UPDATE shadow_evaluations SET progress = %s, inputs = %s, heartbeat_at = now()
            WHERE id = %s AND status = 'running'""",
        (min(max(progress, 0.0), 1.0), Jsonb(inputs), evaluation_id),
    )


async def finish_evaluation(
    conn: Conn,
    *,
    evaluation_id: uuid.UUID,
    inputs: dict[str, Any],
    report: dict[str, Any] | None,
    report_html: str | None,
    error: str | None,
) -> bool:
    """running → succeeded (with a report) or failed (with an error); False when not running."""
    row = await _one(
        conn,
        """UPDATE shadow_evaluations
           SET status = CASE WHEN %(error)s::text IS NULL THEN 'succeeded' ELSE 'failed' END,
               progress = CASE WHEN %(error)s::text IS NULL THEN 1 ELSE progress END,
               inputs = %(inputs)s, report = %(report)s, report_html = %(html)s, error = %(error)s,
               finished_at = now(), heartbeat_at = now()
           WHERE id = %(id)s AND status IN ('queued', 'running') RETURNING id""",
        {
            "id": evaluation_id,
            "inputs": Jsonb(inputs),
            "report": Jsonb(report) if report is not None else None,
            "html": report_html,
            "error": error,
        },
    )
    return row is not None


async def renew_lease(conn: Conn, *, runner: str, ids: Sequence[uuid.UUID]) -> int:
    """Renew the lease of the live jobs ``ids`` of a runner; returns how many it renewed."""
    cur = await conn.execute(
        b"""UPDATE shadow_evaluations SET heartbeat_at = now()
            WHERE runner = %s AND id = ANY(%s) AND status IN ('queued', 'running')""",
        (runner, list(ids)),
    )
    return cur.rowcount


async def live_runners(conn: Conn) -> list[str]:
    """The runners that hold queued or running jobs."""
    rows = await _all(conn, "SELECT DISTINCT runner FROM shadow_evaluations WHERE status IN ('queued', 'running')", ())
    return [str(row["runner"]) for row in rows]


async def interrupt(conn: Conn, *, error: str, runner: str | None = None, lease_seconds: float = 0.0) -> int:
    """Mark live jobs failed with ``error``: those of ``runner``, or else those whose lease expired."""
    cur = await conn.execute(
        b"""UPDATE shadow_evaluations SET status = 'failed', error = %(error)s, finished_at = now()
            WHERE status IN ('queued', 'running')
              AND (CASE WHEN %(runner)s::text IS NULL
                        THEN heartbeat_at < now() - make_interval(secs => %(lease)s)
                        ELSE runner = %(runner)s END)""",
        {"error": error, "runner": runner, "lease": lease_seconds},
    )
    return cur.rowcount
