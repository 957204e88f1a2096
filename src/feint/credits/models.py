"""The ledger's data: accounts, grants, holds, transfers and the operations that change them.

Plain dataclasses with no I/O. Amounts are Python ints kept inside the signed 64-bit range that
PostgreSQL's ``bigint`` stores; never floats. Balances follow the credit-normal convention of a
customer account: ``posted`` is credits minus debits, so a customer's spendable credits are
positive and the issuance account of a tenant runs negative by everything it ever granted.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import overload
from uuid import UUID

AMOUNT_MAX = 2**63 - 1
BALANCE_MIN = -(2**63)
PRIORITY_MIN = 0
PRIORITY_MAX = 100
PRIORITY_DEFAULT = 50
HOLD_TIMEOUT_SECONDS_MAX = 30 * 24 * 3600
GRANTS_LIVE_PER_ACCOUNT_MAX = 1_000
HOLDS_PENDING_PER_ACCOUNT_MAX = 1_000
BATCH_OPERATIONS_MAX = 8_190
GRANTS_SHOWN_MAX = 100
METADATA_BYTES_MAX = 4_096
CODE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

# System accounts have ids derived from (tenant, code, kind), so any process can name them without
# a lookup; client-chosen account ids therefore may not be version-5 UUIDs.
SYSTEM_NAMESPACE = UUID("5f1c6b8e-6c1f-4d0a-9a53-4c7265646974")


class AccountKind(enum.StrEnum):
    CUSTOMER = "customer"
    ISSUANCE = "issuance"  # debited by every grant; runs negative by all credits ever issued
    CONSUMPTION = "consumption"  # credited by metered usage
    EXPIRY = "expiry"  # credited by the sweeper with the remainders of expired grants


SYSTEM_KINDS = (AccountKind.ISSUANCE, AccountKind.CONSUMPTION, AccountKind.EXPIRY)


class HoldState(enum.StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


class TransferKind(enum.StrEnum):
    TRANSFER = "transfer"
    GRANT = "grant"
    CAPTURE = "capture"
    EXPIRY = "expiry"


class BatchMode(enum.StrEnum):
    ATOMIC = "atomic"
    INDEPENDENT = "independent"


def system_account_id(tenant_id: UUID, code: str, kind: AccountKind) -> UUID:
    return uuid.uuid5(SYSTEM_NAMESPACE, f"{tenant_id}/{code}/{kind.value}")


AccountKey = tuple[UUID, UUID]  # (tenant id, account id)


@dataclass(slots=True)
class Account:
    tenant_id: UUID
    id: UUID
    kind: AccountKind
    code: str
    no_overdraft: bool
    overdraft_limit: int | None
    metadata: bytes  # canonical JSON
    posted: int
    pending: int
    holds_pending: int
    version: int
    created_at: datetime

    @property
    def key(self) -> AccountKey:
        return (self.tenant_id, self.id)


@dataclass(slots=True)
class Grant:
    """Credits issued to an account: a lot that spending burns down."""

    tenant_id: UUID
    id: UUID
    account_id: UUID
    amount: int
    remaining: int  # spendable part (not held, not consumed, not swept)
    held: int  # reserved by pending holds
    priority: int  # 0 burns first
    expires_at: datetime | None
    transfer_id: UUID
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Allocation:
    """Part of a hold reserved from one grant (``grant_id`` None: from ungranted credits)."""

    grant_id: UUID | None
    amount: int
    expires_at: datetime | None


@dataclass(slots=True)
class Hold:
    tenant_id: UUID
    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    state: HoldState
    expires_at: datetime
    allocations: tuple[Allocation, ...]
    captured_amount: int | None
    transfer_id: UUID | None
    metadata: bytes
    created_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class Transfer:
    tenant_id: UUID
    id: UUID
    kind: TransferKind
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    hold_id: UUID | None
    grant_id: UUID | None
    debit_balance: int  # posted balance of the debit account after this transfer
    credit_balance: int
    metadata: bytes
    posted_at: datetime


@dataclass(frozen=True, slots=True)
class Entry:
    """One side of a transfer: the signed change it made to one account's posted balance."""

    account_id: UUID
    amount: int


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    tenant_id: UUID
    id: UUID
    last4: str
    brand: str
    fingerprint: bytes
    sealed: bytes
    created_at: datetime


# --- operations (what a request asks for) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateAccount:
    tenant_id: UUID
    id: UUID
    code: str
    no_overdraft: bool = True
    overdraft_limit: int | None = None
    metadata: bytes = b"{}"
    id_supplied: bool = False  # a client-chosen id: look it up (and lock its name) first


@dataclass(frozen=True, slots=True)
class IssueGrant:
    tenant_id: UUID
    id: UUID
    transfer_id: UUID
    account_id: UUID
    amount: int
    priority: int = PRIORITY_DEFAULT
    expires_at: datetime | None = None
    metadata: bytes = b"{}"


@dataclass(frozen=True, slots=True)
class PostTransfer:
    tenant_id: UUID
    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    metadata: bytes = b"{}"
    id_supplied: bool = False  # a client-chosen id: look it up (and lock its name) first


@dataclass(frozen=True, slots=True)
class PlaceHold:
    tenant_id: UUID
    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    timeout_seconds: int
    metadata: bytes = b"{}"
    id_supplied: bool = False  # a client-chosen id: look it up (and lock its name) first


@dataclass(frozen=True, slots=True)
class CaptureHold:
    tenant_id: UUID
    hold_id: UUID
    transfer_id: UUID
    amount: int | None = None  # None: the whole hold


@dataclass(frozen=True, slots=True)
class VoidHold:
    tenant_id: UUID
    hold_id: UUID


@dataclass(frozen=True, slots=True)
class ExpireHold:
    """The sweeper's: release a pending hold whose timeout has passed (no-op otherwise)."""

    tenant_id: UUID
    hold_id: UUID


@dataclass(frozen=True, slots=True)
class SweepGrant:
    """The sweeper's: move an expired grant's remainder to the expiry account (no-op if none)."""

    tenant_id: UUID
    grant_id: UUID
    account_id: UUID
    code: str
    transfer_id: UUID


@dataclass(frozen=True, slots=True)
class RecordPaymentMethod:
    tenant_id: UUID
    id: UUID
    last4: str
    brand: str
    fingerprint: bytes
    sealed: bytes


class TransferColumns(Sequence[PostTransfer]):
    """A batch of transfers kept as columns (the batch endpoint's fast path; see `credits.fast`).

    The ids are canonical lowercase UUID strings, the amounts validated ints; no operation has a
    client id, so the database draws the transfers' ids. Posted by the database in one call
    (`posting.run`), it is never turned into objects; only the rules in Python (a fallback) read
    it as `PostTransfer` operations, made once, with fresh ids, when first asked for."""

    __slots__ = ("_ops", "amounts", "credits", "debits", "metadata", "tenant_id")

    def __init__(
        self, tenant_id: UUID, debits: list[str], credits: list[str], amounts: list[int], metadata: list[bytes] | None
    ) -> None:
        self.tenant_id = tenant_id
        self.debits = debits
        self.credits = credits
        self.amounts = amounts
        self.metadata = metadata  # None: every operation's is b"{}"
        self._ops: list[PostTransfer] | None = None

    def __len__(self) -> int:
        return len(self.amounts)

    @overload
    def __getitem__(self, index: int) -> PostTransfer: ...

    @overload
    def __getitem__(self, index: slice) -> list[PostTransfer]: ...

    def __getitem__(self, index: int | slice) -> PostTransfer | list[PostTransfer]:
        return self.operations()[index]

    def __iter__(self) -> Iterator[PostTransfer]:
        return iter(self.operations())

    def operations(self) -> list[PostTransfer]:
        if self._ops is None:
            metadata = self.metadata or [b"{}"] * len(self.amounts)
            self._ops = [
                PostTransfer(self.tenant_id, uuid.uuid4(), UUID(debit), UUID(credit), amount, meta)
                for debit, credit, amount, meta in zip(self.debits, self.credits, self.amounts, metadata, strict=True)
            ]
        return self._ops


Operation = (
    CreateAccount
    | IssueGrant
    | PostTransfer
    | PlaceHold
    | CaptureHold
    | VoidHold
    | ExpireHold
    | SweepGrant
    | RecordPaymentMethod
)


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one operation that succeeded: what it made and whether it already existed."""

    value: Account | Transfer | Hold | PaymentMethod | tuple[Grant, Transfer] | None
    created: bool = True


@dataclass(slots=True)
class Balance:
    """An account's balances at one instant."""

    posted: int
    pending: int
    expired: int  # expired grant remainders the sweeper has not moved yet
    available: int | None  # None: no limit (overdraft allowed)


@dataclass(slots=True)
class AuditTrail:
    """Operation records per tenant, in the order they were applied."""

    records: dict[UUID, list[dict[str, object]]] = field(default_factory=dict)

    def add(self, tenant_id: UUID, record: dict[str, object]) -> None:
        self.records.setdefault(tenant_id, []).append(record)
