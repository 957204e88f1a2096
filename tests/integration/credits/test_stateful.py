"""Random operation sequences against the service and a small in-memory model, compared after every step."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from feint.credits.config import CreditsSettings
from feint.credits.engine import Idempotency
from feint.credits.models import (
    BatchMode,
    CaptureHold,
    CreateAccount,
    IssueGrant,
    PlaceHold,
    PostTransfer,
    VoidHold,
)
from feint.credits.service import Credits
from feint.errors import FeintError
from feint.platform.runtime import Platform, build
from feint.settings import Settings

pytestmark = pytest.mark.integration
T = TypeVar("T")
EXPIRIES = [None, timedelta(days=1), timedelta(days=2), timedelta(days=3)]


@dataclass
class Lot:
    id: str
    priority: int
    expires: datetime | None
    order: int
    remaining: int
    held: int = 0

    def key(self) -> tuple[int, bool, datetime, int]:
        return (self.priority, self.expires is None, self.expires or datetime.max.replace(tzinfo=UTC), self.order)


@dataclass
class ModelAccount:
    no_overdraft: bool
    posted: int = 0
    pending: int = 0
    lots: list[Lot] = field(default_factory=list)

    def available(self) -> int | None:
        return self.posted - self.pending if self.no_overdraft else None

    def take(self, amount: int, *, hold: bool) -> list[tuple[Lot | None, int]]:
        parts: list[tuple[Lot | None, int]] = []
        for lot in sorted(self.lots, key=Lot.key):
            if amount == 0:
                break
            used = min(lot.remaining, amount)
            if used:
                lot.remaining -= used
                lot.held += used if hold else 0
                parts.append((lot, used))
                amount -= used
        if amount:
            parts.append((None, amount))
        return parts


@dataclass
class ModelHold:
    debit: str
    credit: str
    amount: int
    parts: list[tuple[Lot | None, int]]
    state: str = "pending"


class Ledger(RuleBasedStateMachine):
    """The service and the model receive the same operations; their balances must agree."""

    accounts = Bundle("accounts")
    holds = Bundle("holds")

    def __init__(self, run: Callable[[Coroutine[Any, Any, Any]], Any], service: Credits, tenant: uuid.UUID) -> None:
        super().__init__()
        self.run = run
        self.service = service
        self.tenant = tenant
        self.model: dict[str, ModelAccount] = {}
        self.model_holds: dict[str, ModelHold] = {}
        self.lots = 0
        self.last_keyed: tuple[PostTransfer, Idempotency, bytes | str] | None = None

    def call(self, op: Any, idempotency: Idempotency | None = None) -> Any:
        try:
            return orjson.loads(self.run(self.service.one(op, idempotency=idempotency)).body)
        except FeintError as exc:
            return exc

    @initialize(target=accounts)
    def first_account(self) -> str:
        return self._open(no_overdraft=True)

    @rule(target=accounts, no_overdraft=st.booleans())
    def open_account(self, no_overdraft: bool) -> str:
        return self._open(no_overdraft=no_overdraft)

    def _open(self, *, no_overdraft: bool) -> str:
        body = self.call(CreateAccount(tenant_id=self.tenant, id=uuid.uuid4(), code="units", no_overdraft=no_overdraft))
        self.model[body["id"]] = ModelAccount(no_overdraft=no_overdraft)
        return str(body["id"])

    @rule(account=accounts, amount=st.integers(1, 100), priority=st.integers(0, 2), expiry=st.sampled_from(EXPIRIES))
    def grant(self, account: str, amount: int, priority: int, expiry: timedelta | None) -> None:
        expires = None if expiry is None else datetime.now(UTC) + expiry + timedelta(microseconds=self.lots)
        body = self.call(
            IssueGrant(
                tenant_id=self.tenant,
                id=uuid.uuid4(),
                transfer_id=uuid.uuid4(),
                account_id=uuid.UUID(account),
                amount=amount,
                priority=priority,
                expires_at=expires,
            )
        )
        self.lots += 1
        target = self.model[account]
        target.posted += amount
        target.lots.append(Lot(id=body["id"], priority=priority, expires=expires, order=self.lots, remaining=amount))

    def _expect_spend(self, debit: str, credit: str, amount: int, result: Any) -> bool:
        account = self.model[debit]
        if debit == credit:
            assert isinstance(result, FeintError) and result.slug == "invalid-operation"
            return False
        available = account.available()
        if available is not None and amount > available:
            assert isinstance(result, FeintError) and result.slug == "insufficient-funds", result
            assert result.extensions["available"] == max(available, 0)
            return False
        assert not isinstance(result, FeintError), result
        return True

    @rule(debit=accounts, credit=accounts, amount=st.integers(1, 150), keyed=st.booleans())
    def transfer(self, debit: str, credit: str, amount: int, keyed: bool) -> None:
        op = PostTransfer(
            tenant_id=self.tenant,
            id=uuid.uuid4(),
            debit_account_id=uuid.UUID(debit),
            credit_account_id=uuid.UUID(credit),
            amount=amount,
        )
        key = Idempotency(uuid.uuid4().hex, uuid.uuid4().bytes) if keyed else None
        result = self.call(op, key)
        if self._expect_spend(debit, credit, amount, result):
            self.model[debit].take(amount, hold=False)
            self.model[debit].posted -= amount
            self.model[credit].posted += amount
        if key is not None:
            self.last_keyed = (op, key, result if isinstance(result, dict) else result.slug)

    @rule()
    def retry_last_keyed(self) -> None:
        """A retried key answers exactly the first answer and changes nothing."""
        if self.last_keyed is None:
            return
        op, key, first = self.last_keyed
        again = self.call(
            PostTransfer(
                tenant_id=op.tenant_id,
                id=uuid.uuid4(),
                debit_account_id=op.debit_account_id,
                credit_account_id=op.credit_account_id,
                amount=op.amount,
            ),
            key,
        )
        assert (again if isinstance(again, dict) else again.slug) == first

    @rule(target=holds, debit=accounts, credit=accounts, amount=st.integers(1, 100))
    def hold(self, debit: str, credit: str, amount: int) -> str:
        op = PlaceHold(
            tenant_id=self.tenant,
            id=uuid.uuid4(),
            debit_account_id=uuid.UUID(debit),
            credit_account_id=uuid.UUID(credit),
            amount=amount,
            timeout_seconds=3600,
        )
        result = self.call(op)
        if self._expect_spend(debit, credit, amount, result):
            parts = self.model[debit].take(amount, hold=True)
            self.model[debit].pending += amount
            self.model_holds[str(op.id)] = ModelHold(debit=debit, credit=credit, amount=amount, parts=parts)
        return str(op.id)

    def _release(self, hold: ModelHold, consume: int) -> None:
        left = consume
        for lot, amount in hold.parts:
            spent = min(amount, left)
            left -= spent
            if lot is not None:
                lot.held -= amount
                lot.remaining += amount - spent
        self.model[hold.debit].pending -= hold.amount

    @rule(hold_id=holds, part=st.none() | st.integers(1, 120))
    def capture(self, hold_id: str, part: int | None) -> None:
        result = self.call(
            CaptureHold(tenant_id=self.tenant, hold_id=uuid.UUID(hold_id), transfer_id=uuid.uuid4(), amount=part)
        )
        hold = self.model_holds.get(hold_id)
        if hold is None:
            assert isinstance(result, FeintError) and result.slug == "hold-not-found"
            return
        if hold.state != "pending":
            assert isinstance(result, FeintError) and result.slug == f"hold-already-{hold.state}"
            return
        amount = hold.amount if part is None else part
        if amount > hold.amount:
            assert isinstance(result, FeintError) and result.slug == "capture-exceeds-hold"
            return
        assert result["state"] == "captured", result
        self._release(hold, amount)
        self.model[hold.debit].posted -= amount
        self.model[hold.credit].posted += amount
        hold.state = "captured"

    @rule(hold_id=holds)
    def void(self, hold_id: str) -> None:
        result = self.call(VoidHold(tenant_id=self.tenant, hold_id=uuid.UUID(hold_id)))
        hold = self.model_holds.get(hold_id)
        if hold is None or hold.state != "pending":
            assert isinstance(result, FeintError)
            return
        assert result["state"] == "voided"
        self._release(hold, 0)
        hold.state = "voided"

    @rule(
        debit=accounts,
        credit=accounts,
        amounts=st.lists(st.integers(1, 60), min_size=1, max_size=4),
        atomic=st.booleans(),
    )
    def batch(self, debit: str, credit: str, amounts: list[int], atomic: bool) -> None:
        ops = [
            PostTransfer(
                tenant_id=self.tenant,
                id=uuid.uuid4(),
                debit_account_id=uuid.UUID(debit),
                credit_account_id=uuid.UUID(credit),
                amount=a,
            )
            for a in amounts
        ]
        mode = BatchMode.ATOMIC if atomic else BatchMode.INDEPENDENT
        try:
            reply = orjson.loads(
                self.run(
                    self.service.batch(ops, tenant_id=self.tenant, mode=mode, idempotency=None, everything=True)
                ).body
            )
        except FeintError as exc:
            failed: FeintError | None = exc
        else:
            failed = None
        if failed is not None:
            assert atomic and failed.extensions["operation_index"] >= 0
            return  # nothing applied: the model stays as it is
        for amount, result in zip(amounts, reply["results"], strict=True):
            if result["status"] == 201:
                self.model[debit].take(amount, hold=False)
                self.model[debit].posted -= amount
                self.model[credit].posted += amount
            else:
                assert result["error"]["type"] in ("/problems/insufficient-funds", "/problems/invalid-operation")

    @invariant()
    def balances_agree(self) -> None:
        for account_id, expected in self.model.items():
            body = orjson.loads(self.run(self.service.account(tenant_id=self.tenant, account_id=uuid.UUID(account_id))))
            assert (body["posted"], body["pending"], body["available"]) == (
                expected.posted,
                expected.pending,
                expected.available(),
            ), account_id
            grants = {g["id"]: (g["remaining"], g["held"]) for g in body["grants"]}
            lots = {lot.id: (lot.remaining, lot.held) for lot in expected.lots if lot.remaining or lot.held}
            assert grants == lots
        assert self.run(self._tenant_sum()) == 0

    async def _tenant_sum(self) -> int:
        async with self.service.db.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(sum(posted), 0) AS s FROM credit_accounts WHERE tenant_id = %s", (self.tenant,)
            )
            row = await cur.fetchone()
        return int(row["s"]) if row else 0


def test_service_matches_the_model(clean_db: str, make_settings: Callable[..., Settings]) -> None:
    """After every step of random grants, transfers, holds, captures, voids, batches and retries, the
    service's balances and grant remainders equal the model's, and the tenant sums to zero."""
    loop = asyncio.new_event_loop()
    platform: Platform = build(make_settings(database_url=clean_db), database_url=clean_db)
    loop.run_until_complete(platform.open())
    service = Credits(platform, CreditsSettings(sweeper_interval_seconds=0, cache="memory"))

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(coro)

    def machine() -> Ledger:
        tenant = uuid.uuid4()
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, f"t-{tenant.hex[:12]}"))
        return Ledger(run, service, tenant)

    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
            ),
        )
        with psycopg.connect(clean_db) as conn:
            unbalanced = conn.execute(
                "SELECT tenant_id, sum(posted) FROM credit_accounts GROUP BY 1 HAVING sum(posted) <> 0"
            ).fetchall()
            negative = conn.execute(
                "SELECT count(*) FROM credit_accounts WHERE no_overdraft AND posted - pending < 0"
            ).fetchone()
        assert unbalanced == [] and negative == (0,)
    finally:
        run(service.stop())
        run(platform.close())
        loop.close()
