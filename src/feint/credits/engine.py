"""Runs jobs (one request's operations) as database transactions, and micro-batches single ones.

A `Job` is what one request asks for: its operations, the batch mode, its idempotency key and
how to render the answer. `Engine.run` commits a list of jobs in one transaction (two round
trips, see `feint.credits.store.ledger`); `MicroBatcher` gathers the single-operation jobs that
arrive while a transaction is in flight and commits them together, which is how one process
reaches thousands of transfers per second on a database that commits a few thousand
transactions per second (TigerBeetle's batching, applied to PostgreSQL).

Idempotency is decided inside the transaction, under an advisory lock on the key: a stored
response with the same request hash is replayed; another hash is `IdempotencyKeyReused`;
otherwise the job runs and its response (success or domain error) is stored with it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import psycopg
import psycopg.errors
import structlog
from prometheus_client import Counter, Histogram

from feint.credits import audit, posting, rules
from feint.credits import book as book_rules
from feint.credits.book import Book
from feint.credits.errors import error_from_stored, stored_problem
from feint.credits.jobs import Committed, Idempotency, Job, Outcome, Rendered, Results
from feint.credits.models import (
    AccountKind,
    BatchMode,
    CaptureHold,
    CreateAccount,
    ExpireHold,
    IssueGrant,
    PlaceHold,
    PostTransfer,
    RecordPaymentMethod,
    SweepGrant,
    VoidHold,
    system_account_id,
)
from feint.credits.store import ledger
from feint.credits.store.ledger import AuditAppend, IdempotencyRow, Loaded, LoadPlan
from feint.errors import FeintError, IdempotencyKeyReused, InvariantViolated
from feint.platform.db import Database

TRANSACTION_RETRIES_MAX = 5
RETRY_BACKOFF_SECONDS = 0.005
QUEUE_JOBS_MAX = 16_384
_RETRYABLE = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.UniqueViolation,
    psycopg.errors.LockNotAvailable,
)

__all__ = ["Committed", "Engine", "Idempotency", "Job", "Outcome", "Rendered", "Results"]

log = structlog.get_logger(component="feint.credits")
TRANSACTIONS = Counter("feint_credits_transactions_total", "Ledger transactions by outcome.", ["outcome"])
OPERATIONS = Counter("feint_credits_operations_total", "Ledger operations by result.", ["result"])
BATCH_SIZE = Histogram(
    "feint_credits_transaction_operations",
    "Operations committed per ledger transaction (source: single requests micro-batched, or a batch request).",
    ["source"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8190),
)
TRANSACTION_SECONDS = Histogram(
    "feint_credits_transaction_seconds",
    "Ledger transaction time, lock to commit.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class _Conflict(Exception):
    """A conflict the database asks us to retry (deadlock, serialization failure, duplicate key)."""


@dataclass
class _Plan:
    load: LoadPlan = field(default_factory=LoadPlan)
    grant_accounts: set[tuple[UUID, UUID]] = field(default_factory=set)
    holds_to_find: set[tuple[UUID, UUID]] = field(default_factory=set)


def _plan(jobs: Sequence[Job]) -> _Plan:
    plan = _Plan()
    load = plan.load
    for job in jobs:
        if job.idempotency is not None:
            load.lock_names.add(ledger.advisory_key("idempotency", job.tenant_id, job.idempotency.key))
            load.idempotency.add((job.tenant_id, job.idempotency.key))
        for op in job.operations:
            t = op.tenant_id
            if isinstance(op, CreateAccount):
                load.accounts.add((t, op.id))
                load.accounts.update(
                    (t, system_account_id(t, op.code, k))
                    for k in (AccountKind.ISSUANCE, AccountKind.CONSUMPTION, AccountKind.EXPIRY)
                )
                load.lock_names.add(ledger.advisory_key("code", t, op.code))
                if op.id_supplied:
                    load.lock_names.add(ledger.advisory_key("account", t, op.id))
            elif isinstance(op, PostTransfer | PlaceHold):
                load.accounts.update({(t, op.debit_account_id), (t, op.credit_account_id)})
                if op.id_supplied:
                    kind = "transfer" if isinstance(op, PostTransfer) else "hold"
                    load.lock_names.add(ledger.advisory_key(kind, t, op.id))
                    (load.transfers if isinstance(op, PostTransfer) else load.holds).add((t, op.id))
            elif isinstance(op, IssueGrant):
                load.accounts.add((t, op.account_id))
                plan.grant_accounts.add((t, op.account_id))
            elif isinstance(op, CaptureHold | VoidHold | ExpireHold):
                load.holds.add((t, op.hold_id))
                plan.holds_to_find.add((t, op.hold_id))
            elif isinstance(op, SweepGrant):
                load.accounts.update({(t, op.account_id), (t, system_account_id(t, op.code, AccountKind.EXPIRY))})
            elif isinstance(op, RecordPaymentMethod):
                load.fingerprints.add((t, op.fingerprint))
                load.lock_names.add(ledger.advisory_key("card", t, op.fingerprint.hex()))
    return plan


async def _discover(conn: Any, plan: _Plan) -> None:
    """Accounts that only the database can name: a grant's issuance account, a hold's accounts."""
    if plan.grant_accounts:
        for (tenant, _), code in (await ledger.account_codes(conn, plan.grant_accounts)).items():
            plan.load.accounts.add((tenant, system_account_id(tenant, code, AccountKind.ISSUANCE)))
    if plan.holds_to_find:
        for (tenant, _), (debit, credit) in (await ledger.hold_accounts(conn, plan.holds_to_find)).items():
            plan.load.accounts.update({(tenant, debit), (tenant, credit)})


def _stored_outcome(stored: ledger.StoredResponse) -> Outcome:
    if stored.status >= 400:
        return Outcome(error=error_from_stored(orjson.loads(stored.response)), replayed=True)
    return Outcome(rendered=Rendered(stored.status, stored.response), replayed=True)


def _render(job: Job, results: Results, book: Book) -> Outcome:
    if not job.batch and isinstance(results[0], FeintError):
        return Outcome(error=results[0])
    return Outcome(rendered=job.render(results, book))


class Engine:
    """Commits jobs; safe to call from many tasks and many processes at once."""

    def __init__(self, db: Database, *, retention_seconds: int, post_in_database: bool = True) -> None:
        self.db = db
        self.retention_seconds = retention_seconds
        self.post_in_database = post_in_database

    async def run(self, jobs: Sequence[Job]) -> Committed:
        """Commit ``jobs`` in one transaction, retrying when the database asks (deadlock, conflict).

        An atomic job of several operations must be alone: when it fails, the whole book is
        thrown away and only its idempotency record is committed."""
        if len(jobs) > 1 and any(j.mode is BatchMode.ATOMIC and len(j.operations) > 1 for j in jobs):
            raise InvariantViolated("an atomic batch must run in its own transaction")
        for attempt in range(TRANSACTION_RETRIES_MAX):
            try:
                return await self._run_once(jobs)
            except _Conflict as exc:
                TRANSACTIONS.labels("retried").inc()
                log.info("ledger_retry", attempt=attempt + 1, error=str(exc))
                await asyncio.sleep(RETRY_BACKOFF_SECONDS * (2**attempt))
            except psycopg.errors.CheckViolation as exc:
                TRANSACTIONS.labels("invariant").inc()
                raise InvariantViolated(f"the database refused a change: {exc.diag.constraint_name}") from exc
        raise InvariantViolated(f"transaction failed {TRANSACTION_RETRIES_MAX} times on conflicts")

    async def _run_once(self, jobs: Sequence[Job]) -> Committed:
        if self.post_in_database and posting.eligible(jobs):
            started = time.perf_counter()
            try:
                committed, tally = await posting.run(self.db, jobs, retention_seconds=self.retention_seconds)
            except posting.Fallback:
                TRANSACTIONS.labels("fallback").inc()
            except _RETRYABLE as exc:
                raise _Conflict(type(exc).__name__) from exc
            else:
                TRANSACTION_SECONDS.observe(time.perf_counter() - started)
                TRANSACTIONS.labels("committed").inc()
                OPERATIONS.labels("applied").inc(tally.applied)
                OPERATIONS.labels("failed").inc(tally.failed)
                OPERATIONS.labels("replayed").inc(tally.replayed)
                BATCH_SIZE.labels("batch" if jobs[0].batch else "single").observe(sum(len(j.operations) for j in jobs))
                return committed
        plan = _plan(jobs)
        async with self.db.connection() as conn:
            if plan.grant_accounts or plan.holds_to_find:
                await _discover(conn, plan)
            started = time.perf_counter()
            try:
                loaded = await ledger.begin_and_load(conn, plan.load)
            except _RETRYABLE as exc:
                await _safe_rollback(conn)
                raise _Conflict(type(exc).__name__) from exc
            try:
                try:
                    committed, writes = self._decide(jobs, loaded)
                except InvariantViolated:
                    raise
                except FeintError as exc:  # an atomic batch failed: keep nothing of it
                    OPERATIONS.labels("failed").inc(len(jobs[0].operations))
                    outcome = Outcome(error=exc)
                    committed = Committed(outcomes=[outcome], book=Book(now=loaded.book.now), loaded=loaded)
                    writes = [_idempotency_row(jobs[0], outcome)] if jobs[0].idempotency else []
                await self._commit(conn, committed.book, writes)
            except _RETRYABLE as exc:
                await _safe_rollback(conn)
                # Out of the pool's context as our own type: it would turn an OperationalError
                # (deadlock, serialization failure) into DependencyUnavailable.
                raise _Conflict(type(exc).__name__) from exc
            except BaseException:
                await _safe_rollback(conn)
                raise
        TRANSACTION_SECONDS.observe(time.perf_counter() - started)
        TRANSACTIONS.labels("committed").inc()
        source = "batch" if any(j.batch for j in jobs) else "single"
        BATCH_SIZE.labels(source).observe(sum(len(j.operations) for j in jobs))
        return committed

    async def _commit(self, conn: Any, book: Book, writes: list[IdempotencyRow]) -> None:
        if not (book.changed or writes):
            await ledger.rollback(conn)  # nothing to write: end the transaction, release the locks
            return
        batch_id = uuid.uuid4()
        await ledger.write_and_commit(
            conn,
            book,
            batch_id=batch_id,
            audit=_audit_entries(book, batch_id=batch_id),
            idempotency=writes,
            retention_seconds=self.retention_seconds,
        )

    def _decide(self, jobs: Sequence[Job], loaded: Loaded) -> tuple[Committed, list[IdempotencyRow]]:
        """Apply the jobs to the loaded book (pure); returns outcomes and idempotency rows to store."""
        book = loaded.book
        rules.settle(book)
        outcomes: list[Outcome] = []
        writes: list[IdempotencyRow] = []
        seen: dict[tuple[UUID, str], tuple[bytes, Outcome]] = {}
        for job in jobs:
            key = (job.tenant_id, job.idempotency.key) if job.idempotency else None
            if key is not None and job.idempotency is not None:
                earlier = seen.get(key)
                stored = loaded.idempotency.get(key)
                if earlier is not None or stored is not None:
                    request_hash = earlier[0] if earlier else stored.request_hash  # type: ignore[union-attr]
                    if request_hash != job.idempotency.request_hash:
                        outcomes.append(
                            Outcome(
                                error=IdempotencyKeyReused(
                                    f"Idempotency-Key {job.idempotency.key[:64]!r} was used with a different request"
                                )
                            )
                        )
                    elif earlier is not None:
                        outcomes.append(Outcome(rendered=earlier[1].rendered, error=earlier[1].error, replayed=True))
                    else:
                        outcomes.append(_stored_outcome(stored))  # type: ignore[arg-type]
                    OPERATIONS.labels("replayed").inc(len(job.operations))
                    continue
            outcome = self._apply_job(job, book)
            outcomes.append(outcome)
            if key is not None and job.idempotency is not None:
                seen[key] = (job.idempotency.request_hash, outcome)
                writes.append(_idempotency_row(job, outcome))
        book_rules.check_book(book)
        return Committed(outcomes=outcomes, book=book, loaded=loaded), writes

    def _apply_job(self, job: Job, book: Book) -> Outcome:
        if job.mode is BatchMode.ATOMIC and len(job.operations) > 1:
            results = rules.apply_all(book, job.operations, mode=BatchMode.ATOMIC)
        else:
            results = []
            for op in job.operations:
                try:
                    results.append(rules.apply(book, op))
                except InvariantViolated:
                    raise
                except FeintError as exc:
                    results.append(exc)
        failed = sum(isinstance(r, FeintError) for r in results)
        OPERATIONS.labels("applied").inc(len(results) - failed)
        OPERATIONS.labels("failed").inc(failed)
        return _render(job, results, book)


def _idempotency_row(job: Job, outcome: Outcome) -> IdempotencyRow:
    if job.idempotency is None:  # pragma: no cover - callers check
        raise InvariantViolated("no idempotency key")
    if outcome.error is not None:
        status, body = outcome.error.status, audit.canonical(stored_problem(outcome.error))
    else:
        rendered = outcome.unwrap()
        status, body = rendered.status, rendered.body
    return IdempotencyRow(
        tenant_id=job.tenant_id,
        key=job.idempotency.key,
        request_hash=job.idempotency.request_hash,
        status=status,
        response=body,
    )


def _audit_entries(book: Book, *, batch_id: UUID) -> list[AuditAppend]:
    entries = []
    at = book_rules.iso(book.now)
    for tenant_id, records in book.audit.records.items():
        entries.append(
            AuditAppend(
                tenant_id=tenant_id,
                batch_id=batch_id,
                body=audit.entry_body(tenant_id=tenant_id, batch_id=batch_id, at=at, records=records),
                operations=audit.canonical(records),
            )
        )
    return entries


async def _safe_rollback(conn: Any) -> None:
    try:
        await ledger.rollback(conn)
    except Exception:  # noqa: BLE001 - the connection is broken; the pool discards it
        log.warning("rollback_failed")
