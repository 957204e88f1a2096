"""Every SQL statement of the credits ledger.

A write is one transaction in two round trips (psycopg pipeline mode):

1. ``BEGIN``; advisory locks on idempotency keys and client ids (sorted); the accounts involved,
   ``FOR UPDATE`` in (tenant, id) order, so two transactions never wait on each other in a cycle;
   the database clock, taken after the locks; then, under those locks, the accounts' live grants,
   their expired pending holds, the holds, transfers and idempotency records named by the
   operations.
2. the rules run in Python on that snapshot (`feint.credits.rules`); then every insert and
   update as one statement per table (``unnest`` of arrays), the audit entries (the chain head is
   updated by the database, last, so its lock is held only while the server finishes), ``COMMIT``.

Reads are single statements on autocommit connections.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg

from feint.credits.book import Book, ObjectKey
from feint.credits.models import (
    Account,
    AccountKey,
    AccountKind,
    Allocation,
    Grant,
    Hold,
    HoldState,
    PaymentMethod,
    Transfer,
    TransferKind,
)
from feint.platform.crypto import EncryptedColumn, register_encrypted_column
from feint.platform.db import Conn

PAYMENT_KEYSET = "credits-payment-data"
PAYMENT_SEALED = register_encrypted_column(
    EncryptedColumn(
        keyset=PAYMENT_KEYSET, table="credit_payment_methods", column="sealed", key_columns=("tenant_id", "id")
    )
)

PIPELINE_KEYS_MAX = 512
PIPELINE_AUDIT_BYTES_MAX = 128 * 1024
_ACCOUNT_COLUMNS = (
    "tenant_id, id, kind, code, no_overdraft, overdraft_limit, metadata, posted, pending, holds_pending, version, "
    "created_at"
)


def advisory_key(*parts: object) -> int:
    """A signed 64-bit advisory-lock key for a name (collisions only serialise two unrelated names)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# --- row → model ----------------------------------------------------------------------------


_KINDS = {kind.value: kind for kind in AccountKind}  # a dict lookup: Enum(value) costs microseconds


def account_from_row(row: dict[str, Any]) -> Account:
    return Account(
        tenant_id=row["tenant_id"],
        id=row["id"],
        kind=_KINDS[row["kind"]],
        code=row["code"],
        no_overdraft=row["no_overdraft"],
        overdraft_limit=row["overdraft_limit"],
        metadata=bytes(row["metadata"]),
        posted=row["posted"],
        pending=row["pending"],
        holds_pending=row["holds_pending"],
        version=row["version"],
        created_at=row["created_at"],
    )


def grant_from_row(row: dict[str, Any]) -> Grant:
    return Grant(
        tenant_id=row["tenant_id"],
        id=row["id"],
        account_id=row["account_id"],
        amount=row["amount"],
        remaining=row["remaining"],
        held=row["held"],
        priority=row["priority"],
        expires_at=row["expires_at"],
        transfer_id=row["transfer_id"],
        created_at=row["created_at"],
    )


def _allocations_json(allocations: Iterable[Allocation]) -> str:
    return orjson.dumps(
        [
            [str(a.grant_id) if a.grant_id else None, a.amount, a.expires_at.isoformat() if a.expires_at else None]
            for a in allocations
        ]
    ).decode()


def _allocations_from(value: Any) -> tuple[Allocation, ...]:
    return tuple(
        Allocation(grant_id=UUID(g) if g else None, amount=int(a), expires_at=datetime.fromisoformat(e) if e else None)
        for g, a, e in value
    )


def hold_from_row(row: dict[str, Any]) -> Hold:
    return Hold(
        tenant_id=row["tenant_id"],
        id=row["id"],
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        state=HoldState(row["state"]),
        expires_at=row["expires_at"],
        allocations=_allocations_from(row["allocations"]),
        captured_amount=row["captured_amount"],
        transfer_id=row["transfer_id"],
        metadata=bytes(row["metadata"]),
        created_at=row["created_at"],
        resolved_at=row["resolved_at"],
    )


def transfer_from_row(row: dict[str, Any]) -> Transfer:
    return Transfer(
        tenant_id=row["tenant_id"],
        id=row["id"],
        kind=TransferKind(row["kind"]),
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        hold_id=row["hold_id"],
        grant_id=row["grant_id"],
        debit_balance=row["debit_balance"],
        credit_balance=row["credit_balance"],
        metadata=bytes(row["metadata"]),
        posted_at=row["posted_at"],
    )


def payment_method_from_row(row: dict[str, Any]) -> PaymentMethod:
    return PaymentMethod(
        tenant_id=row["tenant_id"],
        id=row["id"],
        last4=row["last4"],
        brand=row["brand"],
        fingerprint=bytes(row["fingerprint"]),
        sealed=bytes(row["sealed"]),
        created_at=row["created_at"],
    )


def _pairs(keys: Iterable[tuple[UUID, Any]]) -> tuple[list[UUID], list[Any]]:
    ordered = sorted(set(keys), key=lambda k: (k[0], k[1]))
    return [k[0] for k in ordered], [k[1] for k in ordered]


# --- the write transaction -----------------------------------------------------------------


@dataclass
class LoadPlan:
    """What a transaction must lock and read, derived from its operations."""

    lock_names: set[int] = field(default_factory=set)
    accounts: set[AccountKey] = field(default_factory=set)
    holds: set[ObjectKey] = field(default_factory=set)
    transfers: set[ObjectKey] = field(default_factory=set)
    fingerprints: set[tuple[UUID, bytes]] = field(default_factory=set)
    idempotency: set[tuple[UUID, str]] = field(default_factory=set)


@dataclass(frozen=True)
class StoredResponse:
    request_hash: bytes
    status: int
    response: bytes


@dataclass(frozen=True)
class IdempotencyRow:
    tenant_id: UUID
    key: str
    request_hash: bytes
    status: int
    response: bytes


@dataclass(frozen=True)
class AuditAppend:
    tenant_id: UUID
    batch_id: UUID
    body: bytes
    operations: bytes


@dataclass
class Loaded:
    book: Book
    idempotency: dict[tuple[UUID, str], StoredResponse]
    next_hold_expiry: dict[AccountKey, datetime]


@contextlib.asynccontextmanager
async def _round_trip(conn: Conn, *, pipelined: bool) -> AsyncIterator[None]:
    """Statements sent together and answered together (pipeline mode), or one by one.

    Large payloads go one by one: psycopg 3.3 can stall in pipeline mode once a round trip
    carries about a megabyte over a Unix socket (psycopg issue #685 and kin), and a round trip
    per statement costs nothing next to sending that much."""
    if not pipelined:
        yield
        return
    async with conn.pipeline() as pipeline:
        yield
        await pipeline.sync()


def pipelined_load(plan: LoadPlan) -> bool:
    return len(plan.accounts) + len(plan.holds) + len(plan.transfers) + len(plan.idempotency) <= PIPELINE_KEYS_MAX


def pipelined_write(book: Book, audit: Sequence[AuditAppend]) -> bool:
    audit_bytes = sum(len(a.operations) for a in audit)
    return audit_bytes <= PIPELINE_AUDIT_BYTES_MAX and len(book.changed_accounts) <= PIPELINE_KEYS_MAX


async def begin_and_load(conn: Conn, plan: LoadPlan) -> Loaded:
    """Round trip 1: BEGIN, locks, clock, reads. The caller must end with `write_and_commit` or `rollback`."""
    customer_keys: tuple[list[UUID], list[UUID]]
    async with _round_trip(conn, pipelined=pipelined_load(plan)):
        await conn.execute("BEGIN")
        if plan.lock_names:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest(%b::bigint[]) AS k", (sorted(plan.lock_names),)
            )
        tenants, ids = _pairs(plan.accounts)
        accounts_cur = await conn.execute(
            f"""SELECT {", ".join("a." + c.strip() for c in _ACCOUNT_COLUMNS.split(","))}
                FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, id)
                JOIN credit_accounts a ON a.tenant_id = w.tenant_id AND a.id = w.id
                ORDER BY a.tenant_id, a.id FOR UPDATE OF a""",
            (tenants, ids),
        )
        now_cur = await conn.execute(
            "SELECT set_config('feint.now', clock_timestamp()::text, true)::timestamptz AS now"
        )
        customer_keys = (tenants, ids)
        grants_cur = await conn.execute(
            """SELECT g.* FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, account_id)
               JOIN credit_grants g ON g.tenant_id = w.tenant_id AND g.account_id = w.account_id
               WHERE g.live""",
            customer_keys,
        )
        hold_tenants, hold_ids = _pairs(plan.holds)
        holds_cur = await conn.execute(
            """SELECT h.* FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, id)
               JOIN credit_holds h ON h.tenant_id = w.tenant_id AND h.id = w.id
               UNION ALL
               SELECT h.* FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, debit_account_id)
               JOIN credit_holds h ON h.tenant_id = w.tenant_id AND h.debit_account_id = w.debit_account_id
               WHERE h.state = 'pending' AND h.expires_at <= current_setting('feint.now')::timestamptz""",
            (hold_tenants, hold_ids, *customer_keys),
        )
        next_cur = await conn.execute(
            """SELECT h.tenant_id, h.debit_account_id, min(h.expires_at) AS next
               FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, debit_account_id)
               JOIN credit_holds h ON h.tenant_id = w.tenant_id AND h.debit_account_id = w.debit_account_id
               WHERE h.state = 'pending' AND h.expires_at > current_setting('feint.now')::timestamptz
               GROUP BY 1, 2""",
            customer_keys,
        )
        transfers_cur = fingerprints_cur = idempotency_cur = None
        if plan.transfers:
            transfers_cur = await conn.execute(
                """SELECT t.* FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, id)
                   JOIN credit_transfers t ON t.tenant_id = w.tenant_id AND t.id = w.id""",
                _pairs(plan.transfers),
            )
        if plan.fingerprints:
            fingerprints_cur = await conn.execute(
                """SELECT p.* FROM unnest(%b::uuid[], %b::bytea[]) AS w(tenant_id, fingerprint)
                   JOIN credit_payment_methods p ON p.tenant_id = w.tenant_id AND p.fingerprint = w.fingerprint""",
                _pairs(plan.fingerprints),
            )
        if plan.idempotency:
            idempotency_cur = await conn.execute(
                """SELECT i.tenant_id, i.key, i.request_hash, i.status, i.response
                   FROM unnest(%b::uuid[], %b::text[]) AS w(tenant_id, key)
                   JOIN credit_idempotency i ON i.tenant_id = w.tenant_id AND i.key = w.key
                   WHERE i.expires_at > current_setting('feint.now')::timestamptz""",
                _pairs(plan.idempotency),
            )
    now_row = await now_cur.fetchone()
    if now_row is None:  # pragma: no cover - SELECT without FROM returns one row
        raise psycopg.DataError("no clock")
    book = Book(now=now_row["now"])
    for row in await accounts_cur.fetchall():
        book.load_account(account_from_row(row))
    for key in book.accounts:
        book.grants[key] = []
    for row in await grants_cur.fetchall():
        book.grants.setdefault((row["tenant_id"], row["account_id"]), []).append(grant_from_row(row))
    for row in await holds_cur.fetchall():
        book.holds.setdefault((row["tenant_id"], row["id"]), hold_from_row(row))
    next_hold = {(r["tenant_id"], r["debit_account_id"]): r["next"] for r in await next_cur.fetchall()}
    if transfers_cur is not None:
        for row in await transfers_cur.fetchall():
            book.transfers[(row["tenant_id"], row["id"])] = transfer_from_row(row)
    if fingerprints_cur is not None:
        for row in await fingerprints_cur.fetchall():
            method = payment_method_from_row(row)
            book.payment_methods[(method.tenant_id, method.fingerprint)] = method
    stored: dict[tuple[UUID, str], StoredResponse] = {}
    if idempotency_cur is not None:
        for row in await idempotency_cur.fetchall():
            stored[(row["tenant_id"], row["key"])] = StoredResponse(
                request_hash=bytes(row["request_hash"]), status=row["status"], response=bytes(row["response"])
            )
    return Loaded(book=book, idempotency=stored, next_hold_expiry=next_hold)


async def rollback(conn: Conn) -> None:
    await conn.execute("ROLLBACK")


async def write_and_commit(
    conn: Conn,
    book: Book,
    *,
    batch_id: UUID,
    audit: Sequence[AuditAppend],
    idempotency: Sequence[IdempotencyRow],
    retention_seconds: int,
) -> None:
    """Round trip 2: every change of the book, the audit entries, the idempotency records, COMMIT."""
    async with _round_trip(conn, pipelined=pipelined_write(book, audit)):
        new_account_keys = {a.key for a in book.new_accounts}
        if book.new_accounts:
            accounts = book.new_accounts
            await conn.execute(
                f"""INSERT INTO credit_accounts ({_ACCOUNT_COLUMNS})
                    SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::boolean[], %b::bigint[],
                                         %b::bytea[], %b::bigint[], %b::bigint[], %b::integer[], %b::bigint[],
                                         %b::timestamptz[])""",
                (
                    [a.tenant_id for a in accounts],
                    [a.id for a in accounts],
                    [a.kind.value for a in accounts],
                    [a.code for a in accounts],
                    [a.no_overdraft for a in accounts],
                    [a.overdraft_limit for a in accounts],
                    [a.metadata for a in accounts],
                    [a.posted for a in accounts],
                    [a.pending for a in accounts],
                    [a.holds_pending for a in accounts],
                    [a.version for a in accounts],
                    [a.created_at for a in accounts],
                ),
            )
            await conn.execute(
                "INSERT INTO credit_audit_heads (tenant_id) SELECT DISTINCT unnest(%b::uuid[]) ON CONFLICT DO NOTHING",
                (sorted({a.tenant_id for a in accounts}),),
            )
        changed = [a for k, a in sorted(book.changed_accounts.items()) if k not in new_account_keys]
        if changed:
            await conn.execute(
                """UPDATE credit_accounts a SET posted = v.posted, pending = v.pending,
                          holds_pending = v.holds_pending, version = v.version
                   FROM unnest(%b::uuid[], %b::uuid[], %b::bigint[], %b::bigint[], %b::integer[], %b::bigint[])
                        AS v(tenant_id, id, posted, pending, holds_pending, version)
                   WHERE a.tenant_id = v.tenant_id AND a.id = v.id""",
                (
                    [a.tenant_id for a in changed],
                    [a.id for a in changed],
                    [a.posted for a in changed],
                    [a.pending for a in changed],
                    [a.holds_pending for a in changed],
                    [a.version for a in changed],
                ),
            )
        await _write_grants(conn, book)
        await _write_holds(conn, book)
        if book.new_transfers:
            await _insert_transfers(conn, book.new_transfers, batch_id=batch_id)
        if book.new_payment_methods:
            methods = book.new_payment_methods
            await conn.execute(
                """INSERT INTO credit_payment_methods (tenant_id, id, last4, brand, fingerprint, sealed, created_at)
                   SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::text[], %b::bytea[], %b::bytea[],
                                        %b::timestamptz[])""",
                (
                    [m.tenant_id for m in methods],
                    [m.id for m in methods],
                    [m.last4 for m in methods],
                    [m.brand for m in methods],
                    [m.fingerprint for m in methods],
                    [m.sealed for m in methods],
                    [m.created_at for m in methods],
                ),
            )
        if idempotency:
            # The advisory lock on each key is held, and no live record exists: an expired one is replaced.
            await conn.execute(
                """INSERT INTO credit_idempotency (tenant_id, key, request_hash, status, response, created_at,
                                                  expires_at)
                   SELECT v.tenant_id, v.key, v.request_hash, v.status, v.response,
                          current_setting('feint.now')::timestamptz,
                          current_setting('feint.now')::timestamptz + make_interval(secs => %s)
                   FROM unnest(%b::uuid[], %b::text[], %b::bytea[], %b::smallint[], %b::bytea[])
                        AS v(tenant_id, key, request_hash, status, response)
                   ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash = excluded.request_hash,
                       status = excluded.status, response = excluded.response, created_at = excluded.created_at,
                       expires_at = excluded.expires_at""",
                (
                    retention_seconds,
                    [r.tenant_id for r in idempotency],
                    [r.key for r in idempotency],
                    [r.request_hash for r in idempotency],
                    [r.status for r in idempotency],
                    [r.response for r in idempotency],
                ),
            )
        for entry in sorted(audit, key=lambda e: e.tenant_id):
            await conn.execute(
                """WITH head AS (
                       UPDATE credit_audit_heads SET seq = seq + 1, hash = sha256(hash || %(body)b)
                       WHERE tenant_id = %(tenant)b RETURNING seq, hash)
                   INSERT INTO credit_audit (tenant_id, seq, batch_id, hash, body, operations)
                   SELECT %(tenant)b, head.seq, %(batch)b, head.hash, %(body)b, %(ops)b FROM head""",
                {"tenant": entry.tenant_id, "batch": entry.batch_id, "body": entry.body, "ops": entry.operations},
            )
        await conn.execute("COMMIT")


async def _write_grants(conn: Conn, book: Book) -> None:
    new_keys = {(g.tenant_id, g.id) for g in book.new_grants}
    if book.new_grants:
        grants = book.new_grants
        await conn.execute(
            """INSERT INTO credit_grants (tenant_id, id, account_id, amount, remaining, held, priority, expires_at,
                                          transfer_id, created_at)
               SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::uuid[], %b::bigint[], %b::bigint[], %b::bigint[],
                                    %b::smallint[], %b::timestamptz[], %b::uuid[], %b::timestamptz[])""",
            (
                [g.tenant_id for g in grants],
                [g.id for g in grants],
                [g.account_id for g in grants],
                [g.amount for g in grants],
                [g.remaining for g in grants],
                [g.held for g in grants],
                [g.priority for g in grants],
                [g.expires_at for g in grants],
                [g.transfer_id for g in grants],
                [g.created_at for g in grants],
            ),
        )
    changed = [g for k, g in book.changed_grants.items() if k not in new_keys]
    if changed:
        await conn.execute(
            """UPDATE credit_grants g SET remaining = v.remaining, held = v.held
               FROM unnest(%b::uuid[], %b::uuid[], %b::bigint[], %b::bigint[]) AS v(tenant_id, id, remaining, held)
               WHERE g.tenant_id = v.tenant_id AND g.id = v.id""",
            (
                [g.tenant_id for g in changed],
                [g.id for g in changed],
                [g.remaining for g in changed],
                [g.held for g in changed],
            ),
        )


async def _write_holds(conn: Conn, book: Book) -> None:
    new_keys = {(h.tenant_id, h.id) for h in book.new_holds}
    if book.new_holds:
        holds = book.new_holds
        await conn.execute(
            """INSERT INTO credit_holds (tenant_id, id, debit_account_id, credit_account_id, amount, state, expires_at,
                                         allocations, captured_amount, transfer_id, metadata, created_at, resolved_at)
               SELECT t, i, d, c, a, s, e, al::jsonb, ca, tr, m, cr, r
               FROM unnest(%b::uuid[], %b::uuid[], %b::uuid[], %b::uuid[], %b::bigint[], %b::text[],
                           %b::timestamptz[], %b::text[], %b::bigint[], %b::uuid[], %b::bytea[], %b::timestamptz[],
                           %b::timestamptz[]) AS v(t, i, d, c, a, s, e, al, ca, tr, m, cr, r)""",
            (
                [h.tenant_id for h in holds],
                [h.id for h in holds],
                [h.debit_account_id for h in holds],
                [h.credit_account_id for h in holds],
                [h.amount for h in holds],
                [h.state.value for h in holds],
                [h.expires_at for h in holds],
                [_allocations_json(h.allocations) for h in holds],
                [h.captured_amount for h in holds],
                [h.transfer_id for h in holds],
                [h.metadata for h in holds],
                [h.created_at for h in holds],
                [h.resolved_at for h in holds],
            ),
        )
    changed = [h for k, h in book.changed_holds.items() if k not in new_keys]
    if changed:
        await conn.execute(
            """UPDATE credit_holds h SET state = v.state, captured_amount = v.captured_amount,
                      transfer_id = v.transfer_id, resolved_at = v.resolved_at
               FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::bigint[], %b::uuid[], %b::timestamptz[])
                    AS v(tenant_id, id, state, captured_amount, transfer_id, resolved_at)
               WHERE h.tenant_id = v.tenant_id AND h.id = v.id""",
            (
                [h.tenant_id for h in changed],
                [h.id for h in changed],
                [h.state.value for h in changed],
                [h.captured_amount for h in changed],
                [h.transfer_id for h in changed],
                [h.resolved_at for h in changed],
            ),
        )


async def _insert_transfers(conn: Conn, transfers: Sequence[Transfer], *, batch_id: UUID) -> None:
    # unnest yields rows in array order, so the identity column numbers transfers in apply order.
    await conn.execute(
        """INSERT INTO credit_transfers (tenant_id, id, kind, debit_account_id, credit_account_id, amount, hold_id,
                                         grant_id, debit_balance, credit_balance, metadata, posted_at, batch_id)
           SELECT v.*, %b::uuid
           FROM unnest(%b::uuid[], %b::uuid[], %b::text[], %b::uuid[], %b::uuid[], %b::bigint[], %b::uuid[],
                       %b::uuid[], %b::bigint[], %b::bigint[], %b::bytea[], %b::timestamptz[]) AS v""",
        (
            batch_id,
            [t.tenant_id for t in transfers],
            [t.id for t in transfers],
            [t.kind.value for t in transfers],
            [t.debit_account_id for t in transfers],
            [t.credit_account_id for t in transfers],
            [t.amount for t in transfers],
            [t.hold_id for t in transfers],
            [t.grant_id for t in transfers],
            [t.debit_balance for t in transfers],
            [t.credit_balance for t in transfers],
            [t.metadata for t in transfers],
            [t.posted_at for t in transfers],
        ),
    )


# --- discovery (before locking) ------------------------------------------------------------


async def account_codes(conn: Conn, keys: Iterable[AccountKey]) -> dict[AccountKey, str]:
    """Credit type of accounts (immutable, so it may be read before their locks are taken)."""
    tenants, ids = _pairs(keys)
    cur = await conn.execute(
        """SELECT a.tenant_id, a.id, a.code FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, id)
           JOIN credit_accounts a ON a.tenant_id = w.tenant_id AND a.id = w.id""",
        (tenants, ids),
    )
    return {(r["tenant_id"], r["id"]): r["code"] for r in await cur.fetchall()}


async def hold_accounts(conn: Conn, keys: Iterable[ObjectKey]) -> dict[ObjectKey, tuple[UUID, UUID]]:
    """(debit, credit) account of holds (immutable, so read before the locks are taken)."""
    tenants, ids = _pairs(keys)
    cur = await conn.execute(
        """SELECT h.tenant_id, h.id, h.debit_account_id, h.credit_account_id
           FROM unnest(%b::uuid[], %b::uuid[]) AS w(tenant_id, id)
           JOIN credit_holds h ON h.tenant_id = w.tenant_id AND h.id = w.id""",
        (tenants, ids),
    )
    return {(r["tenant_id"], r["id"]): (r["debit_account_id"], r["credit_account_id"]) for r in await cur.fetchall()}
