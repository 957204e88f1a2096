"""The posting rules: pure functions over a `Book`, the working set one transaction loaded.

A store loads the rows an operation touches (locked), the rules decide and mutate the book, the
store writes back what changed. Nothing here does I/O or reads a clock: ``book.now`` is the
database's clock, taken after the locks were granted.

Every rule checks everything first and mutates only after (so a failed operation in an
``independent`` batch leaves no trace); what must always hold is checked again at the end
(`check_book`), raising `InvariantViolated`, never ``assert`` (``python -O`` strips those).
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from feint.credits.book import (
    Book,
    allocate,
    check_book,
    digest,
    is_live,
    iso,
)
from feint.credits.errors import (
    InvalidOperation,
    LimitReached,
)
from feint.credits.holds import capture_hold, expire_hold, place_hold, void_hold
from feint.credits.models import (
    GRANTS_LIVE_PER_ACCOUNT_MAX,
    SYSTEM_KINDS,
    Account,
    AccountKind,
    Applied,
    BatchMode,
    CaptureHold,
    CreateAccount,
    ExpireHold,
    Grant,
    HoldState,
    IssueGrant,
    Operation,
    PaymentMethod,
    PlaceHold,
    PostTransfer,
    RecordPaymentMethod,
    SweepGrant,
    TransferKind,
    VoidHold,
    system_account_id,
)
from feint.credits.postings import (
    account_of,
    change_grant,
    check_pair,
    check_range,
    grant_by_id,
    post,
    replayed,
    require_funds,
)
from feint.errors import FeintError, InvariantViolated

# --- the rules ----------------------------------------------------------------------------


def create_account(book: Book, op: CreateAccount) -> Applied:
    existing = book.accounts.get((op.tenant_id, op.id))
    if existing is not None:
        return replayed(
            existing,
            what="account",
            object_id=op.id,
            pairs={
                "kind": (existing.kind, AccountKind.CUSTOMER),
                "code": (existing.code, op.code),
                "no_overdraft": (existing.no_overdraft, op.no_overdraft),
                "overdraft_limit": (existing.overdraft_limit, op.overdraft_limit),
                "metadata": (existing.metadata, op.metadata),
            },
        )
    if op.id.version == 5:
        raise InvalidOperation("version-5 UUIDs are reserved for system accounts", field="id")
    if op.overdraft_limit is not None and not op.no_overdraft:
        raise InvalidOperation(
            "overdraft_limit needs no_overdraft (an account without it has no limit)", field="overdraft_limit"
        )
    account = _new_account(
        book,
        op.tenant_id,
        op.id,
        AccountKind.CUSTOMER,
        op.code,
        no_overdraft=op.no_overdraft,
        overdraft_limit=op.overdraft_limit,
        metadata=op.metadata,
    )
    for kind in SYSTEM_KINDS:
        key = (op.tenant_id, system_account_id(op.tenant_id, op.code, kind))
        if key not in book.accounts:
            _new_account(
                book, op.tenant_id, key[1], kind, op.code, no_overdraft=False, overdraft_limit=None, metadata=b"{}"
            )
    return Applied(account)


def _new_account(
    book: Book,
    tenant_id: UUID,
    account_id: UUID,
    kind: AccountKind,
    code: str,
    *,
    no_overdraft: bool,
    overdraft_limit: int | None,
    metadata: bytes,
) -> Account:
    account = Account(
        tenant_id=tenant_id,
        id=account_id,
        kind=kind,
        code=code,
        no_overdraft=no_overdraft,
        overdraft_limit=overdraft_limit,
        metadata=metadata,
        posted=0,
        pending=0,
        holds_pending=0,
        version=1,
        created_at=book.now,
    )
    book.accounts[account.key] = account
    book.opening[account.key] = 0
    book.new_accounts.append(account)
    book.grants.setdefault(account.key, [])
    book.audit.add(
        tenant_id,
        {
            "op": "account",
            "id": str(account_id),
            "kind": kind.value,
            "code": code,
            "no_overdraft": no_overdraft,
            "overdraft_limit": overdraft_limit,
            "metadata": digest(metadata),
            "at": iso(book.now),
        },
    )
    return account


def issue_grant(book: Book, op: IssueGrant) -> Applied:
    account = account_of(book, op.tenant_id, op.account_id, field="account_id")
    if account.kind is not AccountKind.CUSTOMER:
        raise InvalidOperation(
            f"grants go to customer accounts, not a {account.kind.value} account", field="account_id"
        )
    if op.expires_at is not None and op.expires_at <= book.now:
        raise InvalidOperation("expires_at is not in the future", field="expires_at")
    live = book.grants.setdefault(account.key, [])
    if len(live) >= GRANTS_LIVE_PER_ACCOUNT_MAX:
        raise LimitReached(
            f"account {account.id} has {len(live)} grants with credits left", limit=GRANTS_LIVE_PER_ACCOUNT_MAX
        )
    issuance = account_of(
        book, op.tenant_id, system_account_id(op.tenant_id, account.code, AccountKind.ISSUANCE), field="account_id"
    )
    check_range(account, op.amount)
    check_range(issuance, -op.amount)
    transfer = post(
        book,
        transfer_id=op.transfer_id,
        kind=TransferKind.GRANT,
        debit=issuance,
        credit=account,
        amount=op.amount,
        metadata=op.metadata,
        grant_id=op.id,
    )
    grant = Grant(
        tenant_id=op.tenant_id,
        id=op.id,
        account_id=account.id,
        amount=op.amount,
        remaining=op.amount,
        held=0,
        priority=op.priority,
        expires_at=op.expires_at,
        transfer_id=op.transfer_id,
        created_at=book.now,
    )
    live.append(grant)
    book.new_grants.append(grant)
    book.audit.add(
        op.tenant_id,
        {
            "op": "grant",
            "id": str(op.id),
            "account": str(account.id),
            "amount": op.amount,
            "priority": op.priority,
            "expires_at": iso(op.expires_at) if op.expires_at else None,
            "transfer": str(op.transfer_id),
        },
    )
    return Applied((grant, transfer))


def post_transfer(book: Book, op: PostTransfer) -> Applied:
    existing = book.transfers.get((op.tenant_id, op.id))
    if existing is not None:
        return replayed(
            existing,
            what="transfer",
            object_id=op.id,
            pairs={
                "kind": (existing.kind, TransferKind.TRANSFER),
                "debit_account_id": (existing.debit_account_id, op.debit_account_id),
                "credit_account_id": (existing.credit_account_id, op.credit_account_id),
                "amount": (existing.amount, op.amount),
                "metadata": (existing.metadata, op.metadata),
            },
        )
    debit = account_of(book, op.tenant_id, op.debit_account_id, field="debit_account_id")
    credit = account_of(book, op.tenant_id, op.credit_account_id, field="credit_account_id")
    check_pair(debit, credit)
    require_funds(book, debit, op.amount)
    check_range(debit, -op.amount)
    check_range(credit, op.amount)
    for part in allocate(book.grants.get(debit.key, ()), op.amount, book.now):
        if part.grant_id is not None:
            change_grant(book, grant_by_id(book, debit, part.grant_id), remaining=-part.amount, held=0)
    return Applied(
        post(
            book,
            transfer_id=op.id,
            kind=TransferKind.TRANSFER,
            debit=debit,
            credit=credit,
            amount=op.amount,
            metadata=op.metadata,
        )
    )


def sweep_grant(book: Book, op: SweepGrant) -> Applied:
    account = book.accounts.get((op.tenant_id, op.account_id))
    grant = next((g for g in book.grants.get((op.tenant_id, op.account_id), ()) if g.id == op.grant_id), None)
    if account is None or grant is None or grant.remaining == 0 or is_live(grant, book.now):
        return Applied(None, created=False)
    expiry = account_of(book, op.tenant_id, system_account_id(op.tenant_id, op.code, AccountKind.EXPIRY), field="code")
    amount = grant.remaining
    check_range(expiry, amount)
    change_grant(book, grant, remaining=-amount, held=0)
    return Applied(
        post(
            book,
            transfer_id=op.transfer_id,
            kind=TransferKind.EXPIRY,
            debit=account,
            credit=expiry,
            amount=amount,
            metadata=b"{}",
            grant_id=grant.id,
        )
    )


def record_payment_method(book: Book, op: RecordPaymentMethod) -> Applied:
    """A card seen before (same fingerprint in this tenant) answers with the method already on file."""
    existing = book.payment_methods.get((op.tenant_id, op.fingerprint))
    if existing is not None:
        return Applied(existing, created=False)
    method = PaymentMethod(
        tenant_id=op.tenant_id,
        id=op.id,
        last4=op.last4,
        brand=op.brand,
        fingerprint=op.fingerprint,
        sealed=op.sealed,
        created_at=book.now,
    )
    book.payment_methods[(op.tenant_id, method.fingerprint)] = method
    book.new_payment_methods.append(method)
    book.audit.add(
        op.tenant_id,
        {
            "op": "payment_method",
            "id": str(method.id),
            "last4": method.last4,
            "brand": method.brand,
            "fingerprint": method.fingerprint.hex(),
            "at": iso(book.now),
        },
    )
    return Applied(method)


def apply(book: Book, op: Operation) -> Applied:
    """Apply one operation; a FeintError means nothing of it was applied."""
    if isinstance(op, PostTransfer):
        return post_transfer(book, op)
    if isinstance(op, PlaceHold):
        return place_hold(book, op)
    if isinstance(op, CaptureHold):
        return capture_hold(book, op)
    if isinstance(op, VoidHold):
        return void_hold(book, op)
    if isinstance(op, IssueGrant):
        return issue_grant(book, op)
    if isinstance(op, CreateAccount):
        return create_account(book, op)
    if isinstance(op, ExpireHold):
        return expire_hold(book, op)
    if isinstance(op, SweepGrant):
        return sweep_grant(book, op)
    return record_payment_method(book, op)


def settle(book: Book) -> None:
    """Release every loaded pending hold whose timeout has passed (before any operation runs)."""
    for hold in list(book.holds.values()):
        if (
            hold.state is HoldState.PENDING
            and hold.expires_at <= book.now
            and (hold.tenant_id, hold.debit_account_id) in book.accounts
        ):
            expire_hold(book, ExpireHold(tenant_id=hold.tenant_id, hold_id=hold.id))


def apply_all(book: Book, operations: Sequence[Operation], *, mode: BatchMode) -> list[Applied | FeintError]:
    """Apply operations in order. ``atomic``: the first failure is raised with its
    ``operation_index`` (the caller rolls everything back); ``independent``: each failure is the
    result of its operation and the others still apply."""
    settle(book)
    results: list[Applied | FeintError] = []
    for index, op in enumerate(operations):
        try:
            results.append(apply(book, op))
        except InvariantViolated:
            raise
        except FeintError as exc:
            if mode is BatchMode.ATOMIC:
                exc.extensions["operation_index"] = index
                raise
            results.append(exc)
    check_book(book)
    return results
