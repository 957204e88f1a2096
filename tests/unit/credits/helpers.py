"""Builders for books in the pure rule tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

from feint.credits.book import Book
from feint.credits.models import Account, AccountKind, Grant, system_account_id

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
TENANT = UUID("11111111-1111-4111-8111-111111111111")
CODE = "api-calls"


def account(
    *,
    posted: int = 0,
    pending: int = 0,
    kind: AccountKind = AccountKind.CUSTOMER,
    code: str = CODE,
    no_overdraft: bool | None = None,
    limit: int | None = None,
    account_id: UUID | None = None,
) -> Account:
    if no_overdraft is None:
        no_overdraft = kind is AccountKind.CUSTOMER
    return Account(
        tenant_id=TENANT,
        id=account_id or uuid.uuid4(),
        kind=kind,
        code=code,
        no_overdraft=no_overdraft,
        overdraft_limit=limit,
        metadata=b"{}",
        posted=posted,
        pending=pending,
        holds_pending=0,
        version=1,
        created_at=NOW - timedelta(days=1),
    )


def grant(
    owner: Account,
    amount: int,
    *,
    remaining: int | None = None,
    priority: int = 50,
    expires_in: float | None = None,
    age: int = 0,
) -> Grant:
    return Grant(
        tenant_id=TENANT,
        id=uuid.uuid4(),
        account_id=owner.id,
        amount=amount,
        remaining=amount if remaining is None else remaining,
        held=0,
        priority=priority,
        expires_at=None if expires_in is None else NOW + timedelta(seconds=expires_in),
        transfer_id=uuid.uuid4(),
        created_at=NOW - timedelta(seconds=1000 - age),
    )


def book(*accounts: Account, grants: list[Grant] = (), now: datetime = NOW, system: str | None = CODE) -> Book:  # type: ignore[assignment]
    result = Book(now=now)
    for item in accounts:
        result.load_account(item)
        result.grants[item.key] = []
    if system is not None:
        for kind in (AccountKind.ISSUANCE, AccountKind.CONSUMPTION, AccountKind.EXPIRY):
            sys_account = account(kind=kind, code=system, account_id=system_account_id(TENANT, system, kind))
            result.load_account(sys_account)
            result.grants[sys_account.key] = []
    for item in grants:
        result.grants[(TENANT, item.account_id)].append(item)
    return result


def system(kind: AccountKind, code: str = CODE) -> UUID:
    return system_account_id(TENANT, code, kind)
