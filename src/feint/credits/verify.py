"""Audit verification: recompute every tenant's chain and cross-check the ledger against it.

For each tenant, in sequence order: each entry must verify (`feint.credits.audit.check_entry`:
sequence, Merkle root over its operations, canonical body, chained hash); every transfer an
entry records must exist in ``credit_transfers`` exactly as recorded and in the same batch.
After the last entry: the chain head must equal it, the tenant's balances must sum to zero and
the number of transfers must equal the number the chain records (a transfer inserted behind
the service's back is counted but not in the chain). The first failing entry is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
from prometheus_client import Counter

from feint.credits import audit, postings
from feint.credits.store import reads
from feint.credits.store.reads import AUDIT_PAGE_ROWS
from feint.platform.db import Database


@dataclass
class Report:
    tenants: int = 0
    entries_checked: int = 0
    transfers_checked: int = 0
    first_broken: audit.Break | None = None
    problems: list[str] = field(default_factory=list)
    recorded_transfers: dict[UUID, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.first_broken is None and not self.problems

    def body(self) -> dict[str, Any]:
        broken = self.first_broken
        return {
            "ok": self.ok,
            "tenants": self.tenants,
            "entries_checked": self.entries_checked,
            "transfers_checked": self.transfers_checked,
            "problems": self.problems,
            "first_broken": None
            if broken is None
            else {"tenant_id": broken.tenant_id, "seq": broken.seq, "reason": broken.reason},
        }


VERIFICATIONS = Counter("feint_credits_audit_verify_total", "Audit-chain verifications by result.", ["result"])


async def verify(db: Database, *, tenant_id: UUID | None) -> Report:
    """Verify one tenant's chain, or every tenant's (operator); stops at the first broken entry.

    Counted by result (``ok``, ``broken``, ``error``) for the ledger's audit alert."""
    try:
        report = await _verify(db, tenant_id=tenant_id)
    except Exception:
        VERIFICATIONS.labels("error").inc()
        raise
    VERIFICATIONS.labels("ok" if report.ok else "broken").inc()
    return report


async def _verify(db: Database, *, tenant_id: UUID | None) -> Report:
    report = Report()
    async with db.connection() as conn:
        heads = await reads.audit_tenants(conn, tenant_id=tenant_id)
        for tenant, head_seq, head_hash in heads:
            report.tenants += 1
            recorded = await _verify_tenant(conn, tenant, report)
            if report.first_broken is not None:
                return report
            last_seq, last_hash = recorded
            if (last_seq, last_hash) != (head_seq, head_hash):
                report.problems.append(
                    f"tenant {tenant}: chain head (entry {head_seq}) does not match the last entry ({last_seq})"
                )
            total, transfers = await reads.tenant_totals(conn, tenant_id=tenant)
            if total != 0:
                report.problems.append(f"tenant {tenant}: balances sum to {total}, not 0")
            in_chain = report.recorded_transfers.get(tenant, 0)
            if transfers != in_chain:
                report.problems.append(f"tenant {tenant}: {transfers} transfers stored, {in_chain} in the audit chain")
    return report


async def _verify_tenant(conn: Any, tenant: UUID, report: Report) -> tuple[int, bytes]:
    previous = audit.GENESIS_HASH
    seq = 0
    report.recorded_transfers[tenant] = 0
    while True:
        page = await reads.audit_page(conn, tenant_id=tenant, after_seq=seq, limit=AUDIT_PAGE_ROWS)
        if not page:
            return seq, previous
        recorded: dict[UUID, tuple[dict[str, Any], audit.StoredEntry]] = {}
        for entry in page:
            for record in _records(entry):
                if record.get("op") == "transfer":
                    recorded[UUID(str(record["id"]))] = (record, entry)
        stored = await reads.transfers_by_id(conn, tenant_id=tenant, ids=list(recorded))
        for entry in page:
            reason = audit.check_entry(entry, previous=previous, expected_seq=seq + 1)
            if reason is None:
                reason = _check_transfers(entry, recorded, stored, report)
            if reason is not None:
                report.first_broken = audit.Break(tenant_id=tenant, seq=entry.seq, reason=reason)
                return seq, previous
            previous, seq = entry.hash, entry.seq
            report.entries_checked += 1
        report.recorded_transfers[tenant] += len(recorded)


def _records(entry: audit.StoredEntry) -> list[dict[str, Any]]:
    try:
        records = orjson.loads(entry.operations)
    except orjson.JSONDecodeError:
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _check_transfers(
    entry: audit.StoredEntry,
    recorded: dict[UUID, tuple[dict[str, Any], audit.StoredEntry]],
    stored: dict[UUID, tuple[Any, UUID]],
    report: Report,
) -> str | None:
    for transfer_id, (record, owner) in recorded.items():
        if owner is not entry:
            continue
        found = stored.get(transfer_id)
        if found is None:
            return f"transfer {transfer_id} is recorded but missing from the ledger"
        transfer, batch_id = found
        if batch_id != entry.batch_id or postings.transfer_record(transfer) != record:
            return f"transfer {transfer_id} differs from its audit record"
        report.transfers_checked += 1
    return None
