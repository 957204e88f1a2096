"""The working set of one transaction (`Book`) and the balance arithmetic (pure).

A `Book` holds the rows a transaction loaded (locked) and records what the rules change;
``book.now`` is the database's clock, taken after the locks were granted. The functions here say
what an account can spend at an instant: grants stop counting at their expiry, to the
microsecond, whether or not the sweeper has moved them yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from feint.credits.models import (
    BATCH_OPERATIONS_MAX,
    Account,
    AccountKey,
    Allocation,
    AuditTrail,
    Balance,
    Entry,
    Grant,
    Hold,
    Operation,
    PaymentMethod,
    Transfer,
    TransferColumns,
)
from feint.errors import InvariantViolated, ValidationFailed

ObjectKey = tuple[UUID, UUID]  # (tenant id, object id)


@dataclass
class Book:
    """What one transaction sees and changes. Loaded accounts are locked until commit."""

    now: datetime
    accounts: dict[AccountKey, Account] = field(default_factory=dict)
    grants: dict[AccountKey, list[Grant]] = field(default_factory=dict)  # live grants, per account
    holds: dict[ObjectKey, Hold] = field(default_factory=dict)
    transfers: dict[ObjectKey, Transfer] = field(default_factory=dict)  # existing, by client id
    payment_methods: dict[tuple[UUID, bytes], PaymentMethod] = field(default_factory=dict)  # by fingerprint
    # --- what changed ---
    opening: dict[AccountKey, int] = field(default_factory=dict)
    new_accounts: list[Account] = field(default_factory=list)
    changed_accounts: dict[AccountKey, Account] = field(default_factory=dict)
    new_grants: list[Grant] = field(default_factory=list)
    changed_grants: dict[ObjectKey, Grant] = field(default_factory=dict)
    new_holds: list[Hold] = field(default_factory=list)
    changed_holds: dict[ObjectKey, Hold] = field(default_factory=dict)
    new_transfers: list[Transfer] = field(default_factory=list)
    new_payment_methods: list[PaymentMethod] = field(default_factory=list)
    audit: AuditTrail = field(default_factory=AuditTrail)

    def load_account(self, account: Account) -> None:
        self.accounts[account.key] = account
        self.opening[account.key] = account.posted

    def touch(self, account: Account) -> None:
        account.version += 1
        if account.key not in self.opening:
            raise InvariantViolated(f"account {account.id} changed without being loaded")
        self.changed_accounts[account.key] = account

    @property
    def changed(self) -> bool:
        return bool(
            self.new_accounts
            or self.changed_accounts
            or self.new_holds
            or self.changed_holds
            or self.new_transfers
            or self.new_payment_methods
        )


# --- balances ------------------------------------------------------------------------------


def is_live(grant: Grant, now: datetime) -> bool:
    return grant.expires_at is None or grant.expires_at > now


def expired_remainder(grants: Iterable[Grant], now: datetime) -> int:
    """Credits of expired grants still on the account: no longer spendable, not yet swept."""
    return sum(g.remaining for g in grants if not is_live(g, now))


def balance(account: Account, grants: Sequence[Grant], now: datetime, *, expired_holds: Sequence[Hold] = ()) -> Balance:
    """Balances at ``now``; ``expired_holds`` (pending past their timeout) count as released,
    exactly as the sweeper or the next write will release them."""
    pending = account.pending
    expired = expired_remainder(grants, now)
    for hold in expired_holds:
        pending -= hold.amount
        expired += sum(
            a.amount
            for a in hold.allocations
            if a.grant_id is not None and a.expires_at is not None and a.expires_at <= now
        )
    available = None
    if account.no_overdraft:
        available = account.posted - pending - expired + (account.overdraft_limit or 0)
    return Balance(posted=account.posted, pending=pending, expired=expired, available=available)


def burn_order(grants: Iterable[Grant], now: datetime) -> list[Grant]:
    """Live grants with credits left, in the order spending uses them: priority (0 first), then
    soonest expiry (never-expiring last), then oldest."""
    live = [g for g in grants if g.remaining > 0 and is_live(g, now)]
    return sorted(
        live, key=lambda g: (g.priority, g.expires_at is None, g.expires_at or g.created_at, g.created_at, g.id)
    )


def allocate(grants: Iterable[Grant], amount: int, now: datetime) -> list[Allocation]:
    """Where ``amount`` comes from: grants in burn order, then (grant None) ungranted credits."""
    if amount <= 0:
        raise InvariantViolated(f"allocation of a non-positive amount {amount}")
    parts: list[Allocation] = []
    left = amount
    for grant in burn_order(grants, now):
        take = min(grant.remaining, left)
        parts.append(Allocation(grant_id=grant.id, amount=take, expires_at=grant.expires_at))
        left -= take
        if left == 0:
            break
    if left:
        parts.append(Allocation(grant_id=None, amount=left, expires_at=None))
    if sum(p.amount for p in parts) != amount:
        raise InvariantViolated("allocations must add up to the amount")
    return parts


def entries(transfer: Transfer) -> tuple[Entry, Entry]:
    """The two entries a transfer writes; they always sum to zero."""
    debit = Entry(account_id=transfer.debit_account_id, amount=-transfer.amount)
    credit = Entry(account_id=transfer.credit_account_id, amount=transfer.amount)
    if debit.amount + credit.amount != 0:
        raise InvariantViolated("entries of a transfer must sum to zero")
    return debit, credit


def validate_batch(operations: Sequence[Operation], *, tenant_id: UUID) -> None:
    """A batch is 1 to BATCH_OPERATIONS_MAX operations, all of one tenant."""
    if not 0 < len(operations) <= BATCH_OPERATIONS_MAX:
        raise ValidationFailed(
            f"a batch holds 1 to {BATCH_OPERATIONS_MAX} operations, not {len(operations)}",
            errors=[{"field": "body.operations", "problem": f"1 to {BATCH_OPERATIONS_MAX} operations"}],
        )
    if isinstance(operations, TransferColumns):  # one tenant by construction; not made into objects
        if operations.tenant_id != tenant_id:
            raise InvariantViolated("the operations belong to another tenant")
        return
    for index, op in enumerate(operations):
        if op.tenant_id != tenant_id:
            raise InvariantViolated(f"operation {index} belongs to another tenant")


def check_book(book: Book) -> None:
    """What must hold before a transaction commits; raises InvariantViolated otherwise."""
    per_tenant: dict[UUID, int] = {}
    for key, account in book.accounts.items():
        per_tenant[key[0]] = per_tenant.get(key[0], 0) + account.posted - book.opening.get(key, 0)
    for tenant_id, delta in per_tenant.items():
        if delta != 0:
            raise InvariantViolated(f"tenant {tenant_id}: debits and credits differ by {delta}")
    for account in book.changed_accounts.values():
        if account.pending < 0 or account.holds_pending < 0:
            raise InvariantViolated(f"account {account.id}: negative pending")
        if account.no_overdraft:
            available = balance(account, book.grants.get(account.key, ()), book.now).available
            if available is None or available < 0:
                raise InvariantViolated(f"account {account.id} would be overdrawn ({available})")
    for grant in book.changed_grants.values():
        if grant.remaining < 0 or grant.held < 0 or grant.remaining + grant.held > grant.amount:
            raise InvariantViolated(f"grant {grant.id}: remaining {grant.remaining}, held {grant.held}")


# --- canonical values -----------------------------------------------------------------------


def iso(moment: datetime) -> str:
    """A timestamp as the audit chain and the API write it: UTC, microseconds, ISO 8601."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def str_or_none(value: UUID | None) -> str | None:
    return None if value is None else str(value)
