"""Shared steps of the posting rules: finding accounts, checking a pair, posting a transfer.

Every function here either checks (and raises a FeintError) or mutates the `Book`; the rules in
`feint.credits.rules` and `feint.credits.holds` call all the checks before the first mutation.
"""

from __future__ import annotations

from uuid import UUID

from feint.credits.book import (
    Book,
    balance,
    digest,
    entries,
    iso,
    str_or_none,
)
from feint.credits.errors import (
    AccountNotFound,
    BalanceOverflow,
    CodesDiffer,
    ExistsWithDifferentFields,
    InsufficientFunds,
    InvalidOperation,
)
from feint.credits.models import (
    AMOUNT_MAX,
    BALANCE_MIN,
    Account,
    AccountKind,
    Applied,
    Grant,
    Hold,
    HoldState,
    Transfer,
    TransferKind,
)
from feint.errors import InvariantViolated


def account_of(book: Book, tenant_id: UUID, account_id: UUID, *, field: str) -> Account:
    account = book.accounts.get((tenant_id, account_id))
    if account is None:
        raise AccountNotFound(account_id=account_id, field=field)
    return account


def check_pair(debit: Account, credit: Account) -> None:
    """Credits move from a customer account to a customer account or the consumption account."""
    if debit.id == credit.id:
        raise InvalidOperation("debit and credit accounts must differ", field="credit_account_id")
    if debit.kind is not AccountKind.CUSTOMER:
        raise InvalidOperation(f"a {debit.kind.value} account cannot be debited here", field="debit_account_id")
    if credit.kind not in (AccountKind.CUSTOMER, AccountKind.CONSUMPTION):
        raise InvalidOperation(f"a {credit.kind.value} account cannot be credited here", field="credit_account_id")
    if debit.code != credit.code:
        raise CodesDiffer(debit_code=debit.code, credit_code=credit.code)


def require_funds(book: Book, account: Account, amount: int) -> None:
    if not account.no_overdraft:
        return
    available = balance(account, book.grants.get(account.key, ()), book.now).available
    if available is None or available < amount:
        raise InsufficientFunds(account_id=account.id, available=max(available or 0, 0), amount=amount)


def check_range(account: Account, delta: int) -> None:
    if not BALANCE_MIN <= account.posted + delta <= AMOUNT_MAX:
        raise BalanceOverflow(account_id=account.id)


def post(
    book: Book,
    *,
    transfer_id: UUID,
    kind: TransferKind,
    debit: Account,
    credit: Account,
    amount: int,
    metadata: bytes,
    hold_id: UUID | None = None,
    grant_id: UUID | None = None,
) -> Transfer:
    debit.posted -= amount
    credit.posted += amount
    book.touch(debit)
    book.touch(credit)
    transfer = Transfer(
        tenant_id=debit.tenant_id,
        id=transfer_id,
        kind=kind,
        debit_account_id=debit.id,
        credit_account_id=credit.id,
        amount=amount,
        hold_id=hold_id,
        grant_id=grant_id,
        debit_balance=debit.posted,
        credit_balance=credit.posted,
        metadata=metadata,
        posted_at=book.now,
    )
    entries(transfer)
    book.new_transfers.append(transfer)
    book.transfers[(transfer.tenant_id, transfer.id)] = transfer
    book.audit.add(debit.tenant_id, transfer_record(transfer))
    return transfer


def transfer_record(transfer: Transfer) -> dict[str, object]:
    """A transfer as the audit chain records it (the verifier rebuilds it from the stored row)."""
    return {
        "op": "transfer",
        "id": str(transfer.id),
        "kind": transfer.kind.value,
        "debit": str(transfer.debit_account_id),
        "credit": str(transfer.credit_account_id),
        "amount": transfer.amount,
        "debit_balance": transfer.debit_balance,
        "credit_balance": transfer.credit_balance,
        "hold": str_or_none(transfer.hold_id),
        "grant": str_or_none(transfer.grant_id),
        "metadata": digest(transfer.metadata),
        "at": iso(transfer.posted_at),
    }


def change_grant(book: Book, grant: Grant, *, remaining: int, held: int) -> None:
    grant.remaining += remaining
    grant.held += held
    book.changed_grants[(grant.tenant_id, grant.id)] = grant


def grant_by_id(book: Book, account: Account, grant_id: UUID) -> Grant:
    for grant in book.grants.get(account.key, ()):
        if grant.id == grant_id:
            return grant
    raise InvariantViolated(f"grant {grant_id} of a hold on account {account.id} was not loaded")


def replayed(
    existing: Account | Transfer | Hold, *, what: str, object_id: UUID, pairs: dict[str, tuple[object, object]]
) -> Applied:
    """A client-chosen id seen again: the stored object when every field is the same, else the
    conflict naming the fields that differ (TigerBeetle's ``exists_with_different_*``)."""
    fields = [name for name, (old, new) in pairs.items() if old != new]
    if fields:
        raise ExistsWithDifferentFields(what=what, object_id=object_id, fields=fields)
    return Applied(existing, created=False)


def release(book: Book, hold: Hold, *, consume: int) -> None:
    """Resolve a hold's reservation: the first ``consume`` units (in burn order) are spent, the
    rest goes back to the grants it came from (or to ungranted credits)."""
    debit = account_of(book, hold.tenant_id, hold.debit_account_id, field="debit_account_id")
    left = consume
    for part in hold.allocations:
        spent = min(part.amount, left)
        left -= spent
        if part.grant_id is not None:
            change_grant(
                book, grant_by_id(book, debit, part.grant_id), remaining=part.amount - spent, held=-part.amount
            )
    debit.pending -= hold.amount
    debit.holds_pending -= 1
    book.touch(debit)


def resolve(book: Book, hold: Hold, state: HoldState) -> None:
    hold.state = state
    hold.resolved_at = book.now
    book.changed_holds[(hold.tenant_id, hold.id)] = hold
