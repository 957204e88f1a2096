"""The posting rules, on plain data: what every operation must and must not do."""

from __future__ import annotations

import copy
import uuid
from datetime import timedelta

import pytest

from feint.credits import book as balances
from feint.credits import rules
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
    BATCH_OPERATIONS_MAX,
    GRANTS_LIVE_PER_ACCOUNT_MAX,
    HOLDS_PENDING_PER_ACCOUNT_MAX,
    AccountKind,
    BatchMode,
    CaptureHold,
    CreateAccount,
    ExpireHold,
    HoldState,
    IssueGrant,
    PlaceHold,
    PostTransfer,
    RecordPaymentMethod,
    SweepGrant,
    Transfer,
    TransferKind,
    VoidHold,
)
from feint.errors import FeintError, InvariantViolated, ValidationFailed
from tests.unit.credits.helpers import CODE, NOW, TENANT, account, book, grant, system

pytestmark = pytest.mark.unit


def transfer(debit: uuid.UUID, credit: uuid.UUID, amount: int, **extra: object) -> PostTransfer:
    return PostTransfer(
        tenant_id=TENANT, id=uuid.uuid4(), debit_account_id=debit, credit_account_id=credit, amount=amount, **extra
    )  # type: ignore[arg-type]


def hold(debit: uuid.UUID, credit: uuid.UUID, amount: int, timeout: int = 60) -> PlaceHold:
    return PlaceHold(
        tenant_id=TENANT,
        id=uuid.uuid4(),
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        timeout_seconds=timeout,
    )


def snapshot(b: object) -> object:
    return copy.deepcopy(b)


def test_transfer_entries_sum_to_zero() -> None:
    """A transfer moves posted balance from debit to credit and its two entries cancel out."""
    a, b = account(posted=100), account()
    bk = book(a, b)
    moved = rules.apply(bk, transfer(a.id, b.id, 40)).value
    assert isinstance(moved, Transfer)
    debit, credit = balances.entries(moved)
    assert debit.amount + credit.amount == 0
    assert (a.posted, b.posted) == (60, 40)
    assert (moved.debit_balance, moved.credit_balance) == (60, 40)
    balances.check_book(bk)


def test_insufficient_funds_names_available_and_changes_nothing() -> None:
    """An overdraft is refused with the available amount and leaves the book as it was."""
    a, b = account(posted=10, pending=3), account()
    bk = book(a, b)
    before = snapshot(bk)
    with pytest.raises(InsufficientFunds) as caught:
        rules.apply(bk, transfer(a.id, b.id, 8))
    assert caught.value.available == 7
    assert caught.value.extensions["available"] == 7
    assert bk == before


def test_burn_order_priority_then_soonest_expiry_then_age() -> None:
    """Grants burn by priority (0 first), then soonest expiry, never-expiring last, then oldest."""
    a = account(posted=60)
    never = grant(a, 10, priority=5)
    late = grant(a, 10, priority=5, expires_in=7200)
    soon = grant(a, 10, priority=5, expires_in=3600)
    urgent = grant(a, 10, priority=1)
    old = grant(a, 10, priority=9, age=0)
    young = grant(a, 10, priority=9, age=10)
    order = balances.burn_order([never, late, soon, urgent, young, old], NOW)
    assert order == [urgent, soon, late, never, old, young]


def test_spending_burns_grants_in_order_then_ungranted_credits() -> None:
    """A transfer takes from grants in burn order and only then from credits that came by transfer."""
    a, b = account(posted=50), account()
    first = grant(a, 10, priority=0)
    second = grant(a, 15, priority=1)
    bk = book(a, b, grants=[second, first])
    rules.apply(bk, transfer(a.id, b.id, 20))
    assert (first.remaining, second.remaining) == (0, 5)
    rules.apply(bk, transfer(a.id, b.id, 20))
    assert second.remaining == 0
    assert a.posted == 10  # the ungranted 25 paid the last 15


def test_expired_grant_stops_counting_at_its_instant() -> None:
    """A grant is spendable up to, not including, its expiry instant; the sweeper is not needed."""
    a = account(posted=100)
    g = grant(a, 100, expires_in=0)  # expires exactly now
    bal = balances.balance(a, [g], NOW)
    assert (bal.posted, bal.expired, bal.available) == (100, 100, 0)
    just_before = balances.balance(a, [g], NOW - timedelta(microseconds=1))
    assert just_before.available == 100
    sink = account()
    with pytest.raises(InsufficientFunds):
        rules.apply(book(a, sink, grants=[g]), transfer(a.id, sink.id, 1))


def test_overdraft_flags() -> None:
    """no_overdraft with a limit may go down to -limit; without the flag there is no limit."""
    limited, free, sink = account(limit=30), account(no_overdraft=False), account()
    bk = book(limited, free, sink)
    rules.apply(bk, transfer(limited.id, sink.id, 30))
    with pytest.raises(InsufficientFunds) as caught:
        rules.apply(bk, transfer(limited.id, sink.id, 1))
    assert caught.value.available == 0
    rules.apply(bk, transfer(free.id, sink.id, 10**12))
    assert balances.balance(free, [], NOW).available is None
    balances.check_book(bk)


@pytest.mark.parametrize(
    ("debit_kind", "credit_kind", "field"),
    [
        (AccountKind.ISSUANCE, AccountKind.CUSTOMER, "debit_account_id"),
        (AccountKind.CONSUMPTION, AccountKind.CUSTOMER, "debit_account_id"),
        (AccountKind.CUSTOMER, AccountKind.ISSUANCE, "credit_account_id"),
        (AccountKind.CUSTOMER, AccountKind.EXPIRY, "credit_account_id"),
    ],
)
def test_system_accounts_cannot_be_misused(debit_kind: AccountKind, credit_kind: AccountKind, field: str) -> None:
    """A tenant never debits a system account (no minting) nor credits issuance or expiry."""
    bk = book(account(posted=10), system=CODE)
    debit = bk.accounts[(TENANT, system(debit_kind))] if debit_kind is not AccountKind.CUSTOMER else account(posted=10)
    credit = bk.accounts[(TENANT, system(credit_kind))] if credit_kind is not AccountKind.CUSTOMER else account()
    for item in (debit, credit):
        if item.key not in bk.accounts:
            bk.load_account(item)
    with pytest.raises(InvalidOperation) as caught:
        rules.apply(bk, transfer(debit.id, credit.id, 1))
    assert caught.value.errors[0]["field"] == field


def test_spending_into_consumption_is_allowed() -> None:
    """Metering is a transfer into the tenant's consumption account."""
    a = account(posted=5)
    bk = book(a)
    rules.apply(bk, transfer(a.id, system(AccountKind.CONSUMPTION), 5))
    assert bk.accounts[(TENANT, system(AccountKind.CONSUMPTION))].posted == 5


def test_same_account_codes_and_unknown_accounts() -> None:
    """Same account twice, different credit types and unknown ids are refused, naming the field."""
    a, b, other = account(posted=5), account(), account(code="storage")
    bk = book(a, b, other)
    with pytest.raises(InvalidOperation):
        rules.apply(bk, transfer(a.id, a.id, 1))
    with pytest.raises(CodesDiffer):
        rules.apply(bk, transfer(a.id, other.id, 1))
    with pytest.raises(AccountNotFound) as caught:
        rules.apply(bk, transfer(a.id, uuid.uuid4(), 1))
    assert caught.value.extensions["field"] == "credit_account_id"


def test_balance_overflow_is_refused() -> None:
    """No balance leaves the signed 64-bit range."""
    a, b = account(no_overdraft=False), account(posted=AMOUNT_MAX)
    with pytest.raises(BalanceOverflow):
        rules.apply(book(a, b), transfer(a.id, b.id, 1))


def test_hold_reserves_and_partial_capture_releases_the_rest_to_its_grants() -> None:
    """A hold raises pending on the debit only; a partial capture posts part, returns the rest."""
    a, b = account(posted=100), account()
    g = grant(a, 100, priority=0)
    bk = book(a, b, grants=[g])
    placed = rules.apply(bk, hold(a.id, b.id, 70)).value
    assert (a.pending, b.pending, b.posted, g.remaining, g.held) == (70, 0, 0, 30, 70)
    assert balances.balance(a, [g], NOW).available == 30
    captured = rules.apply(bk, CaptureHold(tenant_id=TENANT, hold_id=placed.id, transfer_id=uuid.uuid4(), amount=50))
    assert captured.value.state is HoldState.CAPTURED
    assert (a.posted, a.pending, b.posted, g.remaining, g.held) == (50, 0, 50, 50, 0)
    balances.check_book(bk)


def test_hold_resolves_exactly_once() -> None:
    """A second capture or void, or one after expiry, gets a clear error."""
    a, b = account(posted=100), account()
    bk = book(a, b)
    first = rules.apply(bk, hold(a.id, b.id, 10)).value
    rules.apply(bk, CaptureHold(tenant_id=TENANT, hold_id=first.id, transfer_id=uuid.uuid4()))
    with pytest.raises(HoldAlreadyCaptured):
        rules.apply(bk, CaptureHold(tenant_id=TENANT, hold_id=first.id, transfer_id=uuid.uuid4()))
    with pytest.raises(HoldAlreadyCaptured):
        rules.apply(bk, VoidHold(tenant_id=TENANT, hold_id=first.id))
    second = rules.apply(bk, hold(a.id, b.id, 10)).value
    rules.apply(bk, VoidHold(tenant_id=TENANT, hold_id=second.id))
    with pytest.raises(HoldAlreadyVoided):
        rules.apply(bk, VoidHold(tenant_id=TENANT, hold_id=second.id))
    third = rules.apply(bk, hold(a.id, b.id, 10, timeout=5)).value
    bk.now = NOW + timedelta(seconds=5)
    with pytest.raises(HoldExpired):
        rules.apply(bk, CaptureHold(tenant_id=TENANT, hold_id=third.id, transfer_id=uuid.uuid4()))
    rules.settle(bk)
    assert third.state is HoldState.EXPIRED
    with pytest.raises(HoldExpired):
        rules.apply(bk, VoidHold(tenant_id=TENANT, hold_id=third.id))
    with pytest.raises(HoldNotFound):
        rules.apply(bk, VoidHold(tenant_id=TENANT, hold_id=uuid.uuid4()))
    assert (a.posted, a.pending, a.holds_pending) == (90, 0, 0)


def test_capture_more_than_held_is_refused() -> None:
    """A capture above the hold's amount changes nothing."""
    a, b = account(posted=100), account()
    bk = book(a, b)
    placed = rules.apply(bk, hold(a.id, b.id, 10)).value
    with pytest.raises(CaptureExceedsHold):
        rules.apply(bk, CaptureHold(tenant_id=TENANT, hold_id=placed.id, transfer_id=uuid.uuid4(), amount=11))
    assert placed.state is HoldState.PENDING


def test_released_hold_on_an_expired_grant_becomes_expired_remainder() -> None:
    """Credits reserved from a grant that expires meanwhile return as expired, not spendable."""
    a, b = account(posted=50), account()
    g = grant(a, 50, expires_in=10)
    bk = book(a, b, grants=[g])
    placed = rules.apply(bk, hold(a.id, b.id, 50, timeout=60)).value
    bk.now = NOW + timedelta(seconds=20)
    virtual = balances.balance(a, [g], bk.now, expired_holds=[])
    assert virtual.available == 0
    rules.apply(bk, VoidHold(tenant_id=TENANT, hold_id=placed.id))
    after = balances.balance(a, [g], bk.now)
    assert (after.pending, after.expired, after.available) == (0, 50, 0)
    swept = rules.apply(
        bk, SweepGrant(tenant_id=TENANT, grant_id=g.id, account_id=a.id, code=CODE, transfer_id=uuid.uuid4())
    ).value
    assert swept.kind is TransferKind.EXPIRY
    assert (a.posted, g.remaining, bk.accounts[(TENANT, system(AccountKind.EXPIRY))].posted) == (0, 0, 50)
    balances.check_book(bk)


def test_virtual_balance_releases_expired_holds() -> None:
    """A hold past its timeout no longer counts as pending, even before anything releases it."""
    a, b = account(posted=40), account()
    g = grant(a, 40, expires_in=10)
    bk = book(a, b, grants=[g])
    placed = rules.apply(bk, hold(a.id, b.id, 30, timeout=30)).value
    later = NOW + timedelta(seconds=60)
    bal = balances.balance(a, [g], later, expired_holds=[placed])
    # the grant expired meanwhile: its 10 left and the 30 coming back are both expired
    assert (bal.pending, bal.expired, bal.available) == (0, 40, 0)


def test_sweep_and_expire_are_no_ops_when_nothing_is_due() -> None:
    """The sweeper's operations do nothing for live grants, empty grants and resolved holds."""
    a, b = account(posted=10), account()
    live = grant(a, 10, expires_in=60)
    bk = book(a, b, grants=[live])
    op = SweepGrant(tenant_id=TENANT, grant_id=live.id, account_id=a.id, code=CODE, transfer_id=uuid.uuid4())
    assert rules.apply(bk, op).value is None
    assert rules.apply(bk, ExpireHold(tenant_id=TENANT, hold_id=uuid.uuid4())).value is None
    placed = rules.apply(bk, hold(a.id, b.id, 5)).value
    assert rules.apply(bk, ExpireHold(tenant_id=TENANT, hold_id=placed.id)).value is None


def test_create_account_opens_system_accounts_once_and_is_idempotent_by_id() -> None:
    """A new code opens its three system accounts; the same id and fields answer the existing account."""
    bk = book(system=None)
    op = CreateAccount(tenant_id=TENANT, id=uuid.uuid4(), code="storage", metadata=b'{"a":1}')
    first = rules.apply(bk, op)
    assert first.created
    assert {a.kind for a in bk.new_accounts} == set(AccountKind)
    again = rules.apply(bk, op)
    assert not again.created
    second = rules.apply(bk, CreateAccount(tenant_id=TENANT, id=uuid.uuid4(), code="storage"))
    assert second.created
    assert len(bk.new_accounts) == 5
    with pytest.raises(ExistsWithDifferentFields) as caught:
        rules.apply(bk, CreateAccount(tenant_id=TENANT, id=op.id, code="storage", no_overdraft=False))
    assert caught.value.extensions["fields"] == ["no_overdraft", "metadata"]


def test_create_account_rejects_reserved_ids_and_meaningless_limits() -> None:
    """Version-5 ids are reserved for system accounts; an overdraft limit needs no_overdraft."""
    bk = book(system=None)
    with pytest.raises(InvalidOperation):
        rules.apply(bk, CreateAccount(tenant_id=TENANT, id=uuid.uuid5(uuid.NAMESPACE_DNS, "x"), code=CODE))
    with pytest.raises(InvalidOperation):
        rules.apply(
            bk, CreateAccount(tenant_id=TENANT, id=uuid.uuid4(), code=CODE, no_overdraft=False, overdraft_limit=5)
        )


def test_grants_come_from_issuance_and_only_to_customers() -> None:
    """A grant debits the issuance account; expiry must be in the future; limits hold."""
    a = account()
    bk = book(a)
    gid = uuid.uuid4()
    rules.apply(bk, IssueGrant(tenant_id=TENANT, id=gid, transfer_id=uuid.uuid4(), account_id=a.id, amount=25))
    assert bk.accounts[(TENANT, system(AccountKind.ISSUANCE))].posted == -25
    assert a.posted == 25
    with pytest.raises(InvalidOperation):
        rules.apply(
            bk,
            IssueGrant(
                tenant_id=TENANT, id=uuid.uuid4(), transfer_id=uuid.uuid4(), account_id=a.id, amount=1, expires_at=NOW
            ),
        )
    with pytest.raises(InvalidOperation):
        rules.apply(
            bk,
            IssueGrant(
                tenant_id=TENANT,
                id=uuid.uuid4(),
                transfer_id=uuid.uuid4(),
                account_id=system(AccountKind.EXPIRY),
                amount=1,
            ),
        )
    bk.grants[a.key].extend(grant(a, 1) for _ in range(GRANTS_LIVE_PER_ACCOUNT_MAX))
    with pytest.raises(LimitReached):
        rules.apply(
            bk, IssueGrant(tenant_id=TENANT, id=uuid.uuid4(), transfer_id=uuid.uuid4(), account_id=a.id, amount=1)
        )


def test_pending_holds_are_bounded() -> None:
    """An account holds at most HOLDS_PENDING_PER_ACCOUNT_MAX pending holds."""
    a, b = account(posted=10), account()
    a.holds_pending = HOLDS_PENDING_PER_ACCOUNT_MAX
    with pytest.raises(LimitReached):
        rules.apply(book(a, b), hold(a.id, b.id, 1))


def test_client_ids_answer_existing_or_name_differing_fields() -> None:
    """A transfer or hold id seen before answers the original when equal, else names the fields."""
    a, b = account(posted=100), account()
    bk = book(a, b)
    op = transfer(a.id, b.id, 5)
    rules.apply(bk, op)
    assert not rules.apply(bk, op).created
    with pytest.raises(ExistsWithDifferentFields) as caught:
        rules.apply(
            bk, PostTransfer(tenant_id=TENANT, id=op.id, debit_account_id=a.id, credit_account_id=b.id, amount=6)
        )
    assert caught.value.extensions["fields"] == ["amount"]
    placed = hold(a.id, b.id, 5)
    rules.apply(bk, placed)
    assert not rules.apply(bk, placed).created
    with pytest.raises(ExistsWithDifferentFields):
        rules.apply(
            bk,
            PlaceHold(
                tenant_id=TENANT,
                id=placed.id,
                debit_account_id=a.id,
                credit_account_id=b.id,
                amount=6,
                timeout_seconds=60,
            ),
        )
    with pytest.raises(InvalidOperation):
        rules.apply(
            bk,
            PlaceHold(
                tenant_id=TENANT,
                id=uuid.uuid4(),
                debit_account_id=a.id,
                credit_account_id=b.id,
                amount=1,
                timeout_seconds=0,
            ),
        )
    assert a.posted == 95


def test_atomic_batch_raises_with_the_failing_index_independent_keeps_going() -> None:
    """Atomic: the first failure is raised naming its index; independent: one result per operation."""
    a, b = account(posted=10), account()
    ops = [transfer(a.id, b.id, 4), transfer(a.id, b.id, 40), transfer(a.id, b.id, 4)]
    with pytest.raises(InsufficientFunds) as caught:
        rules.apply_all(book(a, b), ops, mode=BatchMode.ATOMIC)
    assert caught.value.extensions["operation_index"] == 1
    a2, b2 = account(posted=10), account()
    ops = [transfer(a2.id, b2.id, 4), transfer(a2.id, b2.id, 40), transfer(a2.id, b2.id, 4)]
    results = rules.apply_all(book(a2, b2), ops, mode=BatchMode.INDEPENDENT)
    assert [isinstance(r, FeintError) for r in results] == [False, True, False]
    assert a2.posted == 2


def test_validate_batch_bounds() -> None:
    """A batch holds 1 to BATCH_OPERATIONS_MAX operations of one tenant."""
    a, b = account(), account()
    with pytest.raises(ValidationFailed):
        balances.validate_batch([], tenant_id=TENANT)
    with pytest.raises(ValidationFailed):
        balances.validate_batch([transfer(a.id, b.id, 1)] * (BATCH_OPERATIONS_MAX + 1), tenant_id=TENANT)
    with pytest.raises(InvariantViolated):
        balances.validate_batch([transfer(a.id, b.id, 1)], tenant_id=uuid.uuid4())
    balances.validate_batch([transfer(a.id, b.id, 1)] * BATCH_OPERATIONS_MAX, tenant_id=TENANT)


def test_check_book_catches_broken_invariants() -> None:
    """Unbalanced books, overdrawn accounts and broken grants raise InvariantViolated."""
    a, b = account(posted=10), account()
    bk = book(a, b)
    a.posted -= 1
    with pytest.raises(InvariantViolated, match="differ by"):
        balances.check_book(bk)
    a.posted, b.posted = -5, 15
    bk.touch(a)
    with pytest.raises(InvariantViolated, match="overdrawn"):
        balances.check_book(bk)
    a.posted, b.posted, a.pending = 10, 0, -1
    with pytest.raises(InvariantViolated, match="pending"):
        balances.check_book(bk)
    a.pending = 0
    g = grant(a, 5, remaining=6)
    bk.changed_grants[(TENANT, g.id)] = g
    with pytest.raises(InvariantViolated, match="grant"):
        balances.check_book(bk)
    with pytest.raises(InvariantViolated):
        bk.touch(account())
    with pytest.raises(InvariantViolated):
        balances.allocate([], 0, NOW)


def test_payment_method_is_recognised_by_fingerprint() -> None:
    """A card seen before in the tenant answers the method on file."""
    bk = book(system=None)
    op = RecordPaymentMethod(
        tenant_id=TENANT, id=uuid.uuid4(), last4="4242", brand="visa", fingerprint=b"f" * 32, sealed=b"s"
    )
    assert rules.apply(bk, op).created
    again = rules.apply(
        bk,
        RecordPaymentMethod(
            tenant_id=TENANT, id=uuid.uuid4(), last4="4242", brand="visa", fingerprint=b"f" * 32, sealed=b"t"
        ),
    )
    assert not again.created
    assert again.value.id == op.id
    assert bk.audit.records[TENANT][0]["op"] == "payment_method"
