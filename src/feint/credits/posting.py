"""Transfers posted by the database: a micro-batch or a batch of transfers in one server-side call.

`eligible` says whether a list of jobs can take this path: every operation a transfer (the hot
route and the bulk of batches), a batch alone in its transaction, and no Idempotency-Key twice
in one micro-batch (a client retrying while its first attempt is in flight: the general engine
answers the second with the first's outcome in the same transaction). `run` makes the one call
(`feint.credits.store.transfers`), turns its rows into the outcomes the general engine would give
and a `Book` of the changed accounts for the balance cache's write-through. A call that finds a
pending hold past its timeout on one of its accounts raises `Fallback` before writing anything:
the general engine settles the hold and runs the jobs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg

from feint.credits.book import Book
from feint.credits.cache import WRITE_THROUGH_ANSWERS_MAX
from feint.credits.errors import error_from_stored
from feint.credits.jobs import Committed, Job, Outcome, Rendered
from feint.credits.models import Account, AccountKey, AccountKind, Grant, PostTransfer, TransferColumns
from feint.credits.store import ledger, transfers
from feint.credits.store.ledger import Loaded
from feint.errors import IdempotencyKeyReused, InvariantViolated
from feint.platform.db import Database

_KINDS = {kind.value: kind for kind in AccountKind}
_FAILED = re.compile(rb'^\{"mode":"[a-z]+","operations":\d+,"failed":(\d+),')


class Fallback(Exception):
    """The general engine must run these jobs (nothing was written)."""


class Tally:
    """Operations by result, for the engine's metrics."""

    __slots__ = ("applied", "failed", "replayed")

    def __init__(self) -> None:
        self.applied = 0
        self.failed = 0
        self.replayed = 0


def eligible(jobs: Sequence[Job]) -> bool:
    if not jobs or (len(jobs) > 1 and any(j.batch for j in jobs)):
        return False
    if len(jobs) == 1 and jobs[0].batch and isinstance(jobs[0].operations, TransferColumns):
        return True
    keys = set()
    for job in jobs:
        if not job.batch and len(job.operations) != 1:
            return False  # the call answers a micro-batch's jobs one operation each
        if not all(type(op) is PostTransfer for op in job.operations):
            return False
        if job.idempotency is not None:
            key = (job.tenant_id, job.idempotency.key)
            if key in keys:
                return False
            keys.add(key)
    return True


async def run(db: Database, jobs: Sequence[Job], *, retention_seconds: int) -> tuple[Committed, Tally]:
    """Commit ``jobs`` (all `eligible`) in one call; raises `Fallback`, or what the database raised."""
    if len(jobs) == 1 and isinstance(jobs[0].operations, TransferColumns):
        return await _run_columns(db, jobs[0], jobs[0].operations, retention_seconds=retention_seconds)
    ops: list[PostTransfer] = []
    job_of: list[int] = []
    previous: list[int | None] = []
    last: dict[tuple[UUID, UUID], int] = {}
    locks: set[int] = set()
    keys: list[transfers.JobKey] = []
    for number, job in enumerate(jobs, start=1):
        if job.idempotency is not None:
            locks.add(ledger.advisory_key("idempotency", job.tenant_id, job.idempotency.key))
            keys.append(transfers.JobKey(job.tenant_id, job.idempotency.key, job.idempotency.request_hash))
        else:
            keys.append(transfers.JobKey(job.tenant_id, None, None))
        for op in job.operations:
            if not isinstance(op, PostTransfer):  # pragma: no cover - `eligible` checked
                raise InvariantViolated("only transfers are posted by the database")
            ops.append(op)
            job_of.append(number)
            if op.id_supplied:
                locks.add(ledger.advisory_key("transfer", op.tenant_id, op.id))
                previous.append(last.get((op.tenant_id, op.id)))
                last[(op.tenant_id, op.id)] = len(ops)
            else:
                previous.append(None)
    batch = jobs[0] if jobs[0].batch else None
    async with db.connection() as conn:
        try:
            posted = await transfers.post_transfers(
                conn,
                locks=sorted(locks),
                ops=ops,
                previous=previous,
                job_of=job_of,
                jobs=keys,
                mode=None if batch is None else batch.mode.value,
                everything=batch is not None and batch.everything,
                retention_seconds=retention_seconds,
                accounts_max=WRITE_THROUGH_ANSWERS_MAX,
            )
        except psycopg.Error as exc:
            _refused(exc)
            raise
    return _committed(jobs, posted)


async def _run_columns(
    db: Database, job: Job, columns: TransferColumns, *, retention_seconds: int
) -> tuple[Committed, Tally]:
    locks, key = [], transfers.JobKey(job.tenant_id, None, None)
    if job.idempotency is not None:
        locks.append(ledger.advisory_key("idempotency", job.tenant_id, job.idempotency.key))
        key = transfers.JobKey(job.tenant_id, job.idempotency.key, job.idempotency.request_hash)
    async with db.connection() as conn:
        try:
            posted = await transfers.post_columns(
                conn,
                locks=locks,
                columns=columns,
                job=key,
                mode=job.mode.value,
                everything=job.everything,
                retention_seconds=retention_seconds,
                accounts_max=WRITE_THROUGH_ANSWERS_MAX,
            )
        except psycopg.Error as exc:
            _refused(exc)
            raise
    return _committed([job], posted)


def _refused(exc: psycopg.Error) -> None:
    """The call's own refusals as the engine's exceptions (anything else is re-raised as it is)."""
    if exc.sqlstate == transfers.FALLBACK_SQLSTATE:
        raise Fallback(str(exc)) from exc
    if exc.sqlstate == transfers.INVARIANT_SQLSTATE:
        raise InvariantViolated(f"the database refused a change: {exc.diag.message_primary}") from exc


def _committed(jobs: Sequence[Job], posted: transfers.Posted) -> tuple[Committed, Tally]:
    tally = Tally()
    outcomes = [_outcome(job, answer, tally) for job, answer in zip(jobs, posted.answers, strict=True)]
    book, next_hold = _book(posted)
    return Committed(outcomes=outcomes, book=book, loaded=Loaded(book, {}, next_hold)), tally


def _outcome(job: Job, answer: transfers.Answer, tally: Tally) -> Outcome:
    operations = len(job.operations)
    if answer.outcome == "reused" and job.idempotency is not None:
        tally.replayed += operations
        key = job.idempotency.key
        return Outcome(error=IdempotencyKeyReused(f"Idempotency-Key {key[:64]!r} was used with a different request"))
    body = answer.body if answer.body is not None else b""
    if answer.outcome == "replayed":
        tally.replayed += operations
        if answer.status >= 400:
            return Outcome(error=error_from_stored(orjson.loads(body)), replayed=True)
        return Outcome(rendered=Rendered(answer.status, body), replayed=True)
    if answer.outcome == "failed":
        tally.failed += operations
        return Outcome(error=error_from_stored(orjson.loads(body)))
    failed = _FAILED.match(body) if job.batch else None
    count = int(failed.group(1)) if failed else 0
    tally.failed += count
    tally.applied += operations - count
    return Outcome(rendered=Rendered(answer.status, body))


def _book(posted: transfers.Posted) -> tuple[Book, dict[AccountKey, datetime]]:
    """The changed accounts as the cache's write-through reads them from a committed book.

    Beyond WRITE_THROUGH_ANSWERS_MAX accounts the database sends only each account's version: the
    write-through then leaves tombstones, which read nothing else of the account."""
    book = Book(now=posted.now)
    next_hold: dict[AccountKey, datetime] = {}
    for row in posted.accounts:
        tenant_id, account_id, kind, code, no_overdraft, limit, metadata, posted_, pending, holds, version = row[:11]
        if kind is None:  # a version only: all a tombstone reads (thousands of these after a large batch)
            account = Account(
                tenant_id, account_id, AccountKind.CUSTOMER, "", False, None, b"{}", 0, 0, 0, version, posted.now
            )
            book.accounts[account.key] = book.changed_accounts[account.key] = account
            continue
        created_at, next_expiry = row[11:13]
        account = Account(
            tenant_id=tenant_id,
            id=account_id,
            kind=_KINDS.get(kind, AccountKind.CUSTOMER),
            code=code or "",
            no_overdraft=bool(no_overdraft),
            overdraft_limit=limit,
            metadata=bytes(metadata) if metadata is not None else b"{}",
            posted=posted_ or 0,
            pending=pending or 0,
            holds_pending=holds or 0,
            version=version,
            created_at=created_at or posted.now,
        )
        book.accounts[account.key] = account
        book.changed_accounts[account.key] = account
        book.grants[account.key] = _grants(tenant_id, account_id, row[13:21])
        if next_expiry is not None:
            next_hold[account.key] = next_expiry
    return book, next_hold


def _grants(tenant_id: UUID, account_id: UUID, columns: Sequence[Any]) -> list[Grant]:
    ids, amounts, remaining, held, priorities, expiries, transfer_ids, created = columns
    if not ids:
        return []
    return [
        Grant(
            tenant_id=tenant_id,
            id=ids[n],
            account_id=account_id,
            amount=amounts[n],
            remaining=remaining[n],
            held=held[n],
            priority=priorities[n],
            expires_at=expiries[n],
            transfer_id=transfer_ids[n],
            created_at=created[n],
        )
        for n in range(len(ids))
    ]
