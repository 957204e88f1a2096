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
from datetime import timedelta
from uuid import UUID

from feint.credits.book import (
    Book,
    allocate,
    balance,
    check_book,
    digest,
    entries,
    is_live,
    iso,
    str_or_none,
)
from feint.credits.errors import (
    AccountNotFound,
    BalanceOverflow,
    CaptureExceedsHold,
    CodesDiffer,
    ExistsWithDifferentFields,
    HoldAlreadyCaptured,
    HoldAlreadyVoided,
    HoldExpired,
    HoldNotFound,
    InsufficientFunds,
    InvalidOperation,
    LimitReached,
)
from feint.credits.models import (
    AMOUNT_MAX,
    BALANCE_MIN,
    GRANTS_LIVE_PER_ACCOUNT_MAX,
    HOLD_TIMEOUT_SECONDS_MAX,
    HOLDS_PENDING_PER_ACCOUNT_MAX,
    SYSTEM_KINDS,
    Account,
    AccountKind,
    Applied,
    BatchMode,
    CaptureHold,
    CreateAccount,
    ExpireHold,
    Grant,
    Hold,
    HoldState,
    IssueGrant,
    Operation,
    PaymentMethod,
    PlaceHold,
    PostTransfer,
    RecordPaymentMethod,
    SweepGrant,
    Transfer,
    TransferKind,
    VoidHold,
    system_account_id,
)
from feint.errors import FeintError, InvariantViolated

# --- helpers shared by the rules ------------------------------------------------------------


def _account(book: Book, tenant_id: UUID, account_id: UUID, *, field: str) -> Account:
    account = book.accounts.get((tenant_id, account_id))
    if account is None:
        raise AccountNotFound(account_id=account_id, field=field)
    return account


def _check_pair(debit: Account, credit: Account) -> None:
    """Credits move from a customer account to a customer account or the consumption account."""
    if debit.id == credit.id:
        raise InvalidOperation("debit and credit accounts must differ", field="credit_account_id")
    if debit.kind is not AccountKind.CUSTOMER:
        raise InvalidOperation(f"a {debit.kind.value} account cannot be debited here", field="debit_account_id")
    if credit.kind not in (AccountKind.CUSTOMER, AccountKind.CONSUMPTION):
        raise InvalidOperation(f"a {credit.kind.value} account cannot be credited here", field="credit_account_id")
    if debit.code != credit.code:
        raise CodesDiffer(debit_code=debit.code, credit_code=credit.code)


def _require_funds(book: Book, account: Account, amount: int) -> None:
    if not account.no_overdraft:
        return
    available = balance(account, book.grants.get(account.key, ()), book.now).available
    if available is None or available < amount:
        raise InsufficientFunds(account_id=account.id, available=max(available or 0, 0), amount=amount)


def _check_range(account: Account, delta: int) -> None:
    if not BALANCE_MIN <= account.posted + delta <= AMOUNT_MAX:
        raise BalanceOverflow(account_id=account.id)


def _post(
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


def _change_grant(book: Book, grant: Grant, *, remaining: int, held: int) -> None:
    grant.remaining += remaining
    grant.held += held
    book.changed_grants[(grant.tenant_id, grant.id)] = grant


def _grant_by_id(book: Book, account: Account, grant_id: UUID) -> Grant:
    for grant in book.grants.get(account.key, ()):
        if grant.id == grant_id:
            return grant
    raise InvariantViolated(f"grant {grant_id} of a hold on account {account.id} was not loaded")


def _release(book: Book, hold: Hold, *, consume: int) -> None:
    """Resolve a hold's reservation: the first ``consume`` units (in burn order) are spent, the
    rest goes back to the grants it came from (or to ungranted credits)."""
    debit = _account(book, hold.tenant_id, hold.debit_account_id, field="debit_account_id")
    left = consume
    for part in hold.allocations:
        spent = min(part.amount, left)
        left -= spent
        if part.grant_id is not None:
            _change_grant(
                book, _grant_by_id(book, debit, part.grant_id), remaining=part.amount - spent, held=-part.amount
            )
    debit.pending -= hold.amount
    debit.holds_pending -= 1
    book.touch(debit)


def _resolve(book: Book, hold: Hold, state: HoldState) -> None:
    hold.state = state
    hold.resolved_at = book.now
    book.changed_holds[(hold.tenant_id, hold.id)] = hold


def _differing(pairs: dict[str, tuple[object, object]]) -> list[str]:
    return [name for name, (old, new) in pairs.items() if old != new]


# --- the rules ----------------------------------------------------------------------------


def create_account(book: Book, op: CreateAccount) -> Applied:
    existing = book.accounts.get((op.tenant_id, op.id))
    if existing is not None:
        fields = _differing(
            {
                "kind": (existing.kind, AccountKind.CUSTOMER),
                "code": (existing.code, op.code),
                "no_overdraft": (existing.no_overdraft, op.no_overdraft),
                "overdraft_limit": (existing.overdraft_limit, op.overdraft_limit),
                "metadata": (existing.metadata, op.metadata),
            }
        )
        if fields:
            raise ExistsWithDifferentFields(what="account", object_id=op.id, fields=fields)
        return Applied(existing, created=False)
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
    account = _account(book, op.tenant_id, op.account_id, field="account_id")
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
    issuance = _account(
        book, op.tenant_id, system_account_id(op.tenant_id, account.code, AccountKind.ISSUANCE), field="account_id"
    )
    _check_range(account, op.amount)
    _check_range(issuance, -op.amount)
    transfer = _post(
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
        fields = _differing(
            {
                "kind": (existing.kind, TransferKind.TRANSFER),
                "debit_account_id": (existing.debit_account_id, op.debit_account_id),
                "credit_account_id": (existing.credit_account_id, op.credit_account_id),
                "amount": (existing.amount, op.amount),
                "metadata": (existing.metadata, op.metadata),
            }
        )
        if fields:
            raise ExistsWithDifferentFields(what="transfer", object_id=op.id, fields=fields)
        return Applied(existing, created=False)
    debit = _account(book, op.tenant_id, op.debit_account_id, field="debit_account_id")
    credit = _account(book, op.tenant_id, op.credit_account_id, field="credit_account_id")
    _check_pair(debit, credit)
    _require_funds(book, debit, op.amount)
    _check_range(debit, -op.amount)
    _check_range(credit, op.amount)
    for part in allocate(book.grants.get(debit.key, ()), op.amount, book.now):
        if part.grant_id is not None:
            _change_grant(book, _grant_by_id(book, debit, part.grant_id), remaining=-part.amount, held=0)
    return Applied(
        _post(
            book,
            transfer_id=op.id,
            kind=TransferKind.TRANSFER,
            debit=debit,
            credit=credit,
            amount=op.amount,
            metadata=op.metadata,
        )
    )


def place_hold(book: Book, op: PlaceHold) -> Applied:
    existing = book.holds.get((op.tenant_id, op.id))
    if existing is not None:
        fields = _differing(
            {
                "debit_account_id": (existing.debit_account_id, op.debit_account_id),
                "credit_account_id": (existing.credit_account_id, op.credit_account_id),
                "amount": (existing.amount, op.amount),
                "metadata": (existing.metadata, op.metadata),
            }
        )
        if fields:
            raise ExistsWithDifferentFields(what="hold", object_id=op.id, fields=fields)
        return Applied(existing, created=False)
    if not 0 < op.timeout_seconds <= HOLD_TIMEOUT_SECONDS_MAX:
        raise InvalidOperation(f"timeout_seconds must be 1 to {HOLD_TIMEOUT_SECONDS_MAX}", field="timeout_seconds")
    debit = _account(book, op.tenant_id, op.debit_account_id, field="debit_account_id")
    credit = _account(book, op.tenant_id, op.credit_account_id, field="credit_account_id")
    _check_pair(debit, credit)
    _require_funds(book, debit, op.amount)
    if debit.holds_pending >= HOLDS_PENDING_PER_ACCOUNT_MAX:
        raise LimitReached(
            f"account {debit.id} has {debit.holds_pending} pending holds", limit=HOLDS_PENDING_PER_ACCOUNT_MAX
        )
    if debit.pending + op.amount > AMOUNT_MAX:
        raise BalanceOverflow(account_id=debit.id)
    parts = tuple(allocate(book.grants.get(debit.key, ()), op.amount, book.now))
    for part in parts:
        if part.grant_id is not None:
            _change_grant(book, _grant_by_id(book, debit, part.grant_id), remaining=-part.amount, held=part.amount)
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


def _pending_hold(book: Book, tenant_id: UUID, hold_id: UUID) -> Hold:
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
    hold = _pending_hold(book, op.tenant_id, op.hold_id)
    amount = hold.amount if op.amount is None else op.amount
    if not 0 < amount <= hold.amount:
        raise CaptureExceedsHold(hold_id=hold.id, held=hold.amount, amount=amount)
    debit = _account(book, op.tenant_id, hold.debit_account_id, field="debit_account_id")
    credit = _account(book, op.tenant_id, hold.credit_account_id, field="credit_account_id")
    _check_range(credit, amount)
    _release(book, hold, consume=amount)
    transfer = _post(
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
    _resolve(book, hold, HoldState.CAPTURED)
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
    hold = _pending_hold(book, op.tenant_id, op.hold_id)
    _release(book, hold, consume=0)
    _resolve(book, hold, HoldState.VOIDED)
    book.audit.add(op.tenant_id, {"op": "hold.voided", "id": str(hold.id), "at": iso(book.now)})
    return Applied(hold)


def expire_hold(book: Book, op: ExpireHold) -> Applied:
    hold = book.holds.get((op.tenant_id, op.hold_id))
    if hold is None or hold.state is not HoldState.PENDING or hold.expires_at > book.now:
        return Applied(None, created=False)
    _release(book, hold, consume=0)
    _resolve(book, hold, HoldState.EXPIRED)
    book.audit.add(op.tenant_id, {"op": "hold.expired", "id": str(hold.id), "at": iso(book.now)})
    return Applied(hold)


def sweep_grant(book: Book, op: SweepGrant) -> Applied:
    account = book.accounts.get((op.tenant_id, op.account_id))
    grant = next((g for g in book.grants.get((op.tenant_id, op.account_id), ()) if g.id == op.grant_id), None)
    if account is None or grant is None or grant.remaining == 0 or is_live(grant, book.now):
        return Applied(None, created=False)
    expiry = _account(book, op.tenant_id, system_account_id(op.tenant_id, op.code, AccountKind.EXPIRY), field="code")
    amount = grant.remaining
    _check_range(expiry, amount)
    _change_grant(book, grant, remaining=-amount, held=0)
    return Applied(
        _post(
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
