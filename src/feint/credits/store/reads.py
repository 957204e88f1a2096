"""Read statements: balances, entries, listings, audit pages, sweeper candidates.

Each read is one statement, so it sees one snapshot (a balance and its grants always agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from feint.credits.audit import StoredEntry
from feint.credits.models import Account, Grant, Hold, PaymentMethod, Transfer
from feint.credits.store.ledger import (
    account_from_row,
    grant_from_row,
    hold_from_row,
    payment_method_from_row,
    transfer_from_row,
)
from feint.platform.db import Conn

ENTRIES_PAGE_MAX = 1_000
ACCOUNTS_PAGE_MAX = 200
AUDIT_PAGE_ROWS = 500


@dataclass(frozen=True)
class AccountSnapshot:
    """An account as of one instant of the database clock, with what its balance depends on."""

    account: Account
    grants: list[Grant]  # with credits left or held
    expired_holds: list[Hold]  # pending past their timeout, not yet released
    next_hold_expiry: datetime | None
    now: datetime


_GRANT_JSON = """jsonb_build_object('tenant_id', g.tenant_id, 'id', g.id, 'account_id', g.account_id,
    'amount', g.amount, 'remaining', g.remaining, 'held', g.held, 'priority', g.priority,
    'expires_at', g.expires_at, 'transfer_id', g.transfer_id, 'created_at', g.created_at)"""


async def account_snapshot(conn: Conn, *, tenant_id: UUID, account_id: UUID) -> AccountSnapshot | None:
    cur = await conn.execute(
        f"""SELECT a.*, c.now,
               (SELECT coalesce(jsonb_agg({_GRANT_JSON}), '[]'::jsonb) FROM credit_grants g
                WHERE g.tenant_id = a.tenant_id AND g.account_id = a.id AND g.live) AS grants,
               (SELECT coalesce(jsonb_agg(to_jsonb(h) - 'metadata'), '[]'::jsonb) FROM credit_holds h
                WHERE h.tenant_id = a.tenant_id AND h.debit_account_id = a.id AND h.state = 'pending'
                  AND h.expires_at <= c.now) AS expired_holds,
               (SELECT min(h.expires_at) FROM credit_holds h
                WHERE h.tenant_id = a.tenant_id AND h.debit_account_id = a.id AND h.state = 'pending'
                  AND h.expires_at > c.now) AS next_hold
           FROM credit_accounts a, (SELECT clock_timestamp() AS now) c
           WHERE a.tenant_id = %s AND a.id = %s""",
        (tenant_id, account_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return AccountSnapshot(
        account=account_from_row(row),
        grants=[grant_from_row(_typed_grant(g)) for g in row["grants"]],
        expired_holds=[hold_from_row(_typed_hold(h)) for h in row["expired_holds"]],
        next_hold_expiry=row["next_hold"],
        now=row["now"],
    )


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _typed_grant(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        **raw,
        "tenant_id": UUID(raw["tenant_id"]),
        "id": UUID(raw["id"]),
        "account_id": UUID(raw["account_id"]),
        "transfer_id": UUID(raw["transfer_id"]),
        "expires_at": _when(raw["expires_at"]),
        "created_at": _when(raw["created_at"]),
    }


def _typed_hold(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        **raw,
        "tenant_id": UUID(raw["tenant_id"]),
        "id": UUID(raw["id"]),
        "debit_account_id": UUID(raw["debit_account_id"]),
        "credit_account_id": UUID(raw["credit_account_id"]),
        "transfer_id": None,
        "expires_at": _when(raw["expires_at"]),
        "created_at": _when(raw["created_at"]),
        "resolved_at": None,
        "metadata": b"{}",
    }


async def entries(
    conn: Conn, *, tenant_id: UUID, account_id: UUID, before_seq: int | None, limit: int, as_of: datetime | None
) -> list[tuple[int, Transfer]]:
    """Transfers touching an account, newest first, with their sequence numbers (the cursor)."""
    side = """SELECT t.*, t.seq AS cursor FROM credit_transfers t
              WHERE t.tenant_id = %(t)s AND t.{col} = %(a)s
                AND (%(before)s::bigint IS NULL OR t.seq < %(before)s::bigint)
                AND (%(as_of)s::timestamptz IS NULL OR t.posted_at <= %(as_of)s::timestamptz)
              ORDER BY t.seq DESC LIMIT %(n)s"""
    cur = await conn.execute(
        f"({side.format(col='debit_account_id')}) UNION ALL ({side.format(col='credit_account_id')}) "
        "ORDER BY cursor DESC LIMIT %(n)s",
        {"t": tenant_id, "a": account_id, "before": before_seq, "as_of": as_of, "n": limit},
    )
    return [(row["cursor"], transfer_from_row(row)) for row in await cur.fetchall()]


async def balance_at(conn: Conn, *, tenant_id: UUID, account_id: UUID, as_of: datetime) -> int:
    """The posted balance after the last transfer at or before ``as_of`` (0 before the first)."""
    cur = await conn.execute(
        """SELECT balance FROM (
               (SELECT t.seq, t.debit_balance AS balance FROM credit_transfers t
                WHERE t.tenant_id = %(t)s AND t.debit_account_id = %(a)s AND t.posted_at <= %(as_of)s
                ORDER BY t.seq DESC LIMIT 1)
               UNION ALL
               (SELECT t.seq, t.credit_balance FROM credit_transfers t
                WHERE t.tenant_id = %(t)s AND t.credit_account_id = %(a)s AND t.posted_at <= %(as_of)s
                ORDER BY t.seq DESC LIMIT 1)) s
           ORDER BY seq DESC LIMIT 1""",
        {"t": tenant_id, "a": account_id, "as_of": as_of},
    )
    row = await cur.fetchone()
    return int(row["balance"]) if row else 0


async def list_accounts(
    conn: Conn, *, tenant_id: UUID, kind: str | None, code: str | None, after: UUID | None, limit: int
) -> list[Account]:
    cur = await conn.execute(
        """SELECT * FROM credit_accounts
           WHERE tenant_id = %(t)s AND (%(kind)s::text IS NULL OR kind = %(kind)s)
             AND (%(code)s::text IS NULL OR code = %(code)s) AND (%(after)s::uuid IS NULL OR id > %(after)s)
           ORDER BY id LIMIT %(n)s""",
        {"t": tenant_id, "kind": kind, "code": code, "after": after, "n": limit},
    )
    return [account_from_row(r) for r in await cur.fetchall()]


async def hold(conn: Conn, *, tenant_id: UUID, hold_id: UUID) -> Hold | None:
    cur = await conn.execute("SELECT * FROM credit_holds WHERE tenant_id = %s AND id = %s", (tenant_id, hold_id))
    row = await cur.fetchone()
    return hold_from_row(row) if row else None


async def payment_method(conn: Conn, *, tenant_id: UUID, method_id: UUID) -> PaymentMethod | None:
    cur = await conn.execute(
        "SELECT * FROM credit_payment_methods WHERE tenant_id = %s AND id = %s", (tenant_id, method_id)
    )
    row = await cur.fetchone()
    return payment_method_from_row(row) if row else None


# --- audit --------------------------------------------------------------------------------


async def audit_tenants(conn: Conn, *, tenant_id: UUID | None) -> list[tuple[UUID, int, bytes]]:
    """(tenant, head seq, head hash) of every chain, or of one tenant's."""
    cur = await conn.execute(
        """SELECT tenant_id, seq, hash FROM credit_audit_heads
           WHERE %(t)s::uuid IS NULL OR tenant_id = %(t)s ORDER BY tenant_id""",
        {"t": tenant_id},
    )
    return [(r["tenant_id"], int(r["seq"]), bytes(r["hash"])) for r in await cur.fetchall()]


async def audit_page(conn: Conn, *, tenant_id: UUID, after_seq: int, limit: int) -> list[StoredEntry]:
    cur = await conn.execute(
        """SELECT tenant_id, seq, batch_id, hash, body, operations, recorded_at FROM credit_audit
           WHERE tenant_id = %s AND seq > %s ORDER BY seq LIMIT %s""",
        (tenant_id, after_seq, limit),
    )
    return [
        StoredEntry(
            tenant_id=r["tenant_id"],
            seq=int(r["seq"]),
            batch_id=r["batch_id"],
            hash=bytes(r["hash"]),
            body=bytes(r["body"]),
            operations=bytes(r["operations"]),
            recorded_at=r["recorded_at"],
        )
        for r in await cur.fetchall()
    ]


async def transfers_by_id(conn: Conn, *, tenant_id: UUID, ids: list[UUID]) -> dict[UUID, tuple[Transfer, UUID]]:
    """Transfers with the batch each was committed in."""
    cur = await conn.execute(
        "SELECT * FROM credit_transfers WHERE tenant_id = %s AND id = ANY(%s::uuid[])", (tenant_id, ids)
    )
    return {r["id"]: (transfer_from_row(r), r["batch_id"]) for r in await cur.fetchall()}


async def tenant_totals(conn: Conn, *, tenant_id: UUID) -> tuple[int, int]:
    """(sum of all posted balances, number of transfers) of a tenant."""
    cur = await conn.execute(
        """SELECT (SELECT coalesce(sum(posted), 0) FROM credit_accounts WHERE tenant_id = %(t)s) AS total,
                  (SELECT count(*) FROM credit_transfers WHERE tenant_id = %(t)s) AS transfers""",
        {"t": tenant_id},
    )
    row = await cur.fetchone()
    return (int(row["total"]), int(row["transfers"])) if row else (0, 0)


# --- sweeper --------------------------------------------------------------------------------


async def expired_holds(conn: Conn, *, limit: int) -> list[tuple[UUID, UUID, UUID, UUID]]:
    """(tenant, hold, debit, credit) of pending holds past their timeout, oldest first."""
    cur = await conn.execute(
        """SELECT tenant_id, id, debit_account_id, credit_account_id FROM credit_holds
           WHERE state = 'pending' AND expires_at <= clock_timestamp() ORDER BY expires_at LIMIT %s""",
        (limit,),
    )
    return [(r["tenant_id"], r["id"], r["debit_account_id"], r["credit_account_id"]) for r in await cur.fetchall()]


async def expired_grants(conn: Conn, *, limit: int) -> list[tuple[UUID, UUID, UUID, str]]:
    """(tenant, grant, account, code) of expired grants with credits left, oldest first."""
    cur = await conn.execute(
        """SELECT g.tenant_id, g.id, g.account_id, a.code FROM credit_grants g
           JOIN credit_accounts a ON a.tenant_id = g.tenant_id AND a.id = g.account_id
           WHERE g.live AND g.remaining > 0 AND g.expires_at IS NOT NULL AND g.expires_at <= clock_timestamp()
           ORDER BY g.expires_at LIMIT %s""",
        (limit,),
    )
    return [(r["tenant_id"], r["id"], r["account_id"], r["code"]) for r in await cur.fetchall()]


async def purge_idempotency(conn: Conn, *, limit: int) -> int:
    """Delete up to ``limit`` idempotency records past their retention; returns how many."""
    cur = await conn.execute(
        """DELETE FROM credit_idempotency WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM credit_idempotency WHERE expires_at <= clock_timestamp() LIMIT %s))""",
        (limit,),
    )
    return cur.rowcount
