"""The database's own posting of transfers: one call of ``credit_post_transfers`` (migration 0008).

The call is one statement on an autocommit connection, hence one transaction and one round trip:
it takes the advisory locks, locks the accounts in (tenant, id) order, applies the transfers,
writes transfers, grants, balances, idempotency records and audit entries, and answers. Nothing
in Python runs while a row is locked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import tuple_row

from feint.credits.models import PostTransfer, TransferColumns
from feint.platform.db import Conn

FALLBACK_SQLSTATE = "FE001"  # a pending hold past its timeout on one of the accounts: use the general path
INVARIANT_SQLSTATE = "FE002"  # an invariant failed before anything was written

_CALL = """SELECT * FROM credit_post_transfers(
    %b::bigint[], %b::uuid[], %b::uuid[], %b::uuid[], %b::uuid[], %b::bigint[], %b::bytea[], %b::boolean[],
    %b::integer[], %b::integer[], %b::uuid[], %b::text[], %b::bytea[], %b::text, %b::boolean, %b::integer,
    %b::integer)"""


# A batch of transfers as columns (`TransferColumns`): the per-operation arrays that are the same
# for every operation are made by the server (array_fill), the transfers' ids too
# (gen_random_uuid: no client id in such a batch), and the account ids and amounts go as text
# array literals that PostgreSQL parses itself (no UUID objects, no per-element dumping here).
_CALL_COLUMNS = """SELECT * FROM credit_post_transfers(
    %(locks)b::bigint[], array_fill(%(tenant)b::uuid, ARRAY[%(n)b::integer]),
    (SELECT array_agg(gen_random_uuid()) FROM generate_series(1, %(n)b::integer)),
    %(debits)s::uuid[], %(credits)s::uuid[], %(amounts)s::bigint[], {metadata},
    array_fill(false, ARRAY[%(n)b::integer]), array_fill(NULL::integer, ARRAY[%(n)b::integer]),
    array_fill(1, ARRAY[%(n)b::integer]), ARRAY[%(tenant)b::uuid], ARRAY[%(key)b::text], ARRAY[%(hash)b::bytea],
    %(mode)b::text, %(everything)b::boolean, %(retention)b::integer, %(accounts_max)b::integer)"""
_EMPTY_METADATA = "array_fill('\\x7b7d'::bytea, ARRAY[%(n)b::integer])"  # b"{}" for every operation
_CALL_COLUMNS_EMPTY = _CALL_COLUMNS.format(metadata=_EMPTY_METADATA)
_CALL_COLUMNS_METADATA = _CALL_COLUMNS.format(metadata="%(metadata)b::bytea[]")


@dataclass(frozen=True)
class JobKey:
    tenant_id: UUID
    key: str | None
    request_hash: bytes | None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes | None
    outcome: str  # applied | failed | replayed | reused


@dataclass
class Posted:
    now: datetime
    answers: list[Answer]
    accounts: list[tuple[Any, ...]]  # the changed accounts' rows (see `account_row`)


async def post_transfers(
    conn: Conn,
    *,
    locks: Sequence[int],
    ops: Sequence[PostTransfer],
    previous: Sequence[int | None],
    job_of: Sequence[int],
    jobs: Sequence[JobKey],
    mode: str | None,
    everything: bool,
    retention_seconds: int,
    accounts_max: int,
) -> Posted:
    params = (
        list(locks),
        [op.tenant_id for op in ops],
        [op.id for op in ops],
        [op.debit_account_id for op in ops],
        [op.credit_account_id for op in ops],
        [op.amount for op in ops],
        [op.metadata for op in ops],
        [op.id_supplied for op in ops],
        list(previous),
        list(job_of),
        [j.tenant_id for j in jobs],
        [j.key for j in jobs],
        [j.request_hash for j in jobs],
        mode,
        everything,
        retention_seconds,
        accounts_max,
    )
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(_CALL, params, binary=True)
    return _posted(await cur.fetchall())


async def post_columns(
    conn: Conn,
    *,
    locks: Sequence[int],
    columns: TransferColumns,
    job: JobKey,
    mode: str,
    everything: bool,
    retention_seconds: int,
    accounts_max: int,
) -> Posted:
    """One batch job of transfers given as columns (no client ids): the same call, fewer objects."""
    params = {
        "locks": list(locks),
        "tenant": columns.tenant_id,
        "n": len(columns),
        "debits": "{" + ",".join(columns.debits) + "}",
        "credits": "{" + ",".join(columns.credits) + "}",
        "amounts": "{" + ",".join(map(str, columns.amounts)) + "}",
        "key": job.key,
        "hash": job.request_hash,
        "mode": mode,
        "everything": everything,
        "retention": retention_seconds,
        "accounts_max": accounts_max,
    }
    if columns.metadata is None:
        query = _CALL_COLUMNS_EMPTY
    else:
        query, params["metadata"] = _CALL_COLUMNS_METADATA, columns.metadata
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(query, params, binary=True)
    return _posted(await cur.fetchall())


def _posted(rows: list[tuple[Any, ...]]) -> Posted:
    answers = [Answer(r[2], None if r[3] is None else bytes(r[3]), r[4]) for r in rows if r[0] == "o"]
    accounts = [r[6:] for r in rows if r[0] == "a"]
    if not rows:  # pragma: no cover - the function always answers each job
        raise RuntimeError("credit_post_transfers answered nothing")
    return Posted(now=rows[0][5], answers=answers, accounts=accounts)
