"""Two-phase transfers: place a hold, capture all or part of it, void it, or let it expire.

A hold reserves credits from specific grant lots when it is placed (its allocations), so a
grant that expires while credits are held does not take them back; resolving it spends the
first units in burn order and returns the rest to the lots they came from. It resolves exactly
once.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from feint.credits.book import (
    Book,
    allocate,
    digest,
    iso,
    str_or_none,
)
from feint.credits.errors import (
    BalanceOverflow,
    CaptureExceedsHold,
    HoldAlreadyCaptured,
    HoldAlreadyVoided,
    HoldExpired,
    HoldNotFound,
    InvalidOperation,
    LimitReached,
)
from feint.credits.models import (
    AMOUNT_MAX,
    HOLD_TIMEOUT_SECONDS_MAX,
    HOLDS_PENDING_PER_ACCOUNT_MAX,
    Applied,
    CaptureHold,
    ExpireHold,
    Hold,
    HoldState,
    PlaceHold,
    TransferKind,
    VoidHold,
)
from feint.credits.postings import (
    account_of,
    change_grant,
    check_pair,
    check_range,
    grant_by_id,
    post,
    release,
    replayed,
    require_funds,
    resolve,
)


def place_hold(book: Book, op: PlaceHold) -> Applied:
    existing = book.holds.get((op.tenant_id, op.id))
    if existing is not None:
        return replayed(
            existing,
            what="hold",
            object_id=op.id,
            pairs={
                "debit_account_id": (existing.debit_account_id, op.debit_account_id),
                "credit_account_id": (existing.credit_account_id, op.credit_account_id),
                "amount": (existing.amount, op.amount),
                "metadata": (existing.metadata, op.metadata),
            },
        )
    if not 0 < op.timeout_seconds <= HOLD_TIMEOUT_SECONDS_MAX:
        raise InvalidOperation(f"timeout_seconds must be 1 to {HOLD_TIMEOUT_SECONDS_MAX}", field="timeout_seconds")
    debit = account_of(book, op.tenant_id, op.debit_account_id, field="debit_account_id")
    credit = account_of(book, op.tenant_id, op.credit_account_id, field="credit_account_id")
    check_pair(debit, credit)
    require_funds(book, debit, op.amount)
    if debit.holds_pending >= HOLDS_PENDING_PER_ACCOUNT_MAX:
        raise LimitReached(
            f"account {debit.id} has {debit.holds_pending} pending holds", limit=HOLDS_PENDING_PER_ACCOUNT_MAX
        )
    if debit.pending + op.amount > AMOUNT_MAX:
        raise BalanceOverflow(account_id=debit.id)
    parts = tuple(allocate(book.grants.get(debit.key, ()), op.amount, book.now))
    for part in parts:
        if part.grant_id is not None:
            change_grant(book, grant_by_id(book, debit, part.grant_id), remaining=-part.amount, held=part.amount)
    debit.pending += op.amount
    debit.holds_pending += 1
    book.touch(debit)
    hold = Hold(
        tenant_id=op.tenant_id,
        id=op.id,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount=op.amount,
        state=HoldState.PENDING,
        expires_at=book.now + timedelta(seconds=op.timeout_seconds),
        allocations=parts,
        captured_amount=None,
        transfer_id=None,
        metadata=op.metadata,
        created_at=book.now,
        resolved_at=None,
    )
    book.holds[(hold.tenant_id, hold.id)] = hold
    book.new_holds.append(hold)
    book.audit.add(
        op.tenant_id,
        {
            "op": "hold",
            "id": str(hold.id),
            "debit": str(debit.id),
            "credit": str(credit.id),
            "amount": op.amount,
            "expires_at": iso(hold.expires_at),
            "allocations": [[str_or_none(p.grant_id), p.amount] for p in parts],
            "metadata": digest(op.metadata),
            "at": iso(book.now),
        },
    )
    return Applied(hold)


def pending_hold(book: Book, tenant_id: UUID, hold_id: UUID) -> Hold:
    hold = book.holds.get((tenant_id, hold_id))
    if hold is None:
        raise HoldNotFound(hold_id=hold_id)
    if hold.state is HoldState.CAPTURED:
        raise HoldAlreadyCaptured(hold_id=hold_id)
    if hold.state is HoldState.VOIDED:
        raise HoldAlreadyVoided(hold_id=hold_id)
    if hold.state is HoldState.EXPIRED or hold.expires_at <= book.now:
        raise HoldExpired(hold_id=hold_id)
    return hold


def capture_hold(book: Book, op: CaptureHold) -> Applied:
    hold = pending_hold(book, op.tenant_id, op.hold_id)
    amount = hold.amount if op.amount is None else op.amount
    if not 0 < amount <= hold.amount:
        raise CaptureExceedsHold(hold_id=hold.id, held=hold.amount, amount=amount)
    debit = account_of(book, op.tenant_id, hold.debit_account_id, field="debit_account_id")
    credit = account_of(book, op.tenant_id, hold.credit_account_id, field="credit_account_id")
    check_range(credit, amount)
    release(book, hold, consume=amount)
    transfer = post(
        book,
        transfer_id=op.transfer_id,
        kind=TransferKind.CAPTURE,
        debit=debit,
        credit=credit,
        amount=amount,
        metadata=hold.metadata,
        hold_id=hold.id,
    )
    hold.captured_amount = amount
    hold.transfer_id = transfer.id
    resolve(book, hold, HoldState.CAPTURED)
    book.audit.add(
        op.tenant_id,
        {
            "op": "hold.captured",
            "id": str(hold.id),
            "amount": amount,
            "transfer": str(transfer.id),
            "at": iso(book.now),
        },
    )
    return Applied(hold)


def void_hold(book: Book, op: VoidHold) -> Applied:
    hold = pending_hold(book, op.tenant_id, op.hold_id)
    release(book, hold, consume=0)
    resolve(book, hold, HoldState.VOIDED)
    book.audit.add(op.tenant_id, {"op": "hold.voided", "id": str(hold.id), "at": iso(book.now)})
    return Applied(hold)


def expire_hold(book: Book, op: ExpireHold) -> Applied:
    hold = book.holds.get((op.tenant_id, op.hold_id))
    if hold is None or hold.state is not HoldState.PENDING or hold.expires_at > book.now:
        return Applied(None, created=False)
    release(book, hold, consume=0)
    resolve(book, hold, HoldState.EXPIRED)
    book.audit.add(op.tenant_id, {"op": "hold.expired", "id": str(hold.id), "at": iso(book.now)})
    return Applied(hold)
