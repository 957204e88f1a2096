"""Errors of the credits ledger; each carries the data a client needs to act on it.

    FeintError
    ├── BadRequest
    │   ├── TenantRequired (400 tenant-required)
    │   └── ValidationFailed
    │       └── InvalidOperation (422 invalid-operation): same account twice, system account, past expiry
    ├── NotFound
    │   ├── AccountNotFound (404 account-not-found)
    │   ├── HoldNotFound (404 hold-not-found)
    │   └── PaymentMethodNotFound (404 payment-method-not-found)
    ├── Conflict
    │   ├── InsufficientFunds (409 insufficient-funds, with ``available``)
    │   ├── CodesDiffer (409 codes-differ)
    │   ├── HoldAlreadyCaptured / HoldAlreadyVoided / HoldExpired (409)
    │   ├── CaptureExceedsHold (409 capture-exceeds-hold)
    │   ├── ExistsWithDifferentFields (409 exists-with-different-fields, with ``fields``)
    │   ├── LimitReached (409 limit-reached, with ``limit``)
    │   └── BalanceOverflow (409 balance-overflow)
    └── (platform) IdempotencyKeyReused, InvariantViolated

`error_from_stored` rebuilds an error from its stored problem members so that an idempotent
replay of a failed request raises the same error the first attempt did.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from feint import errors as platform_errors
from feint.errors import BadRequest, Conflict, FeintError, NotFound, ValidationFailed


class TenantRequired(BadRequest):
    slug, title = "tenant-required", "Tenant required"

    def __init__(self) -> None:
        super().__init__("an operator key must name the tenant with the Feint-Tenant header on this route")


class InvalidOperation(ValidationFailed):
    """Well-formed input that breaks a ledger rule; ``errors`` names the field."""

    slug, title = "invalid-operation", "Invalid operation"

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail, errors=[{"field": field, "problem": detail}])


class AccountNotFound(NotFound):
    slug, title = "account-not-found", "Account not found"

    def __init__(self, *, account_id: UUID, field: str = "account_id") -> None:
        # Another tenant's account is "not found" too: the answer never says whether an id exists.
        super().__init__(f"no account {account_id}", account_id=str(account_id), field=field)


class HoldNotFound(NotFound):
    slug, title = "hold-not-found", "Hold not found"

    def __init__(self, *, hold_id: UUID) -> None:
        super().__init__(f"no hold {hold_id}", hold_id=str(hold_id))


class PaymentMethodNotFound(NotFound):
    slug, title = "payment-method-not-found", "Payment method not found"

    def __init__(self, *, payment_method_id: UUID) -> None:
        super().__init__(f"no payment method {payment_method_id}", payment_method_id=str(payment_method_id))


class InsufficientFunds(Conflict):
    slug, title = "insufficient-funds", "Insufficient funds"

    def __init__(self, *, account_id: UUID, available: int, amount: int) -> None:
        super().__init__(
            f"account {account_id} has {available} available, {amount} needed",
            account_id=str(account_id),
            available=available,
        )
        self.account_id = account_id
        self.available = available


class CodesDiffer(Conflict):
    slug, title = "codes-differ", "Accounts hold different credit types"

    def __init__(self, *, debit_code: str, credit_code: str) -> None:
        super().__init__(
            f"cannot move credits of code {debit_code!r} into an account of code {credit_code!r}",
            debit_code=debit_code,
            credit_code=credit_code,
        )


class HoldAlreadyCaptured(Conflict):
    slug, title = "hold-already-captured", "Hold already captured"

    def __init__(self, *, hold_id: UUID) -> None:
        super().__init__(f"hold {hold_id} was already captured", hold_id=str(hold_id))


class HoldAlreadyVoided(Conflict):
    slug, title = "hold-already-voided", "Hold already voided"

    def __init__(self, *, hold_id: UUID) -> None:
        super().__init__(f"hold {hold_id} was already voided", hold_id=str(hold_id))


class HoldExpired(Conflict):
    slug, title = "hold-expired", "Hold expired"

    def __init__(self, *, hold_id: UUID) -> None:
        super().__init__(f"hold {hold_id} expired before it was resolved", hold_id=str(hold_id))


class CaptureExceedsHold(Conflict):
    slug, title = "capture-exceeds-hold", "Capture exceeds the hold"

    def __init__(self, *, hold_id: UUID, held: int, amount: int) -> None:
        super().__init__(f"hold {hold_id} holds {held}; cannot capture {amount}", hold_id=str(hold_id), held=held)


class ExistsWithDifferentFields(Conflict):
    """A client-supplied id names an existing object whose fields differ (TigerBeetle's
    ``exists_with_different_*``); the same fields would have answered with the object."""

    slug, title = "exists-with-different-fields", "Exists with different fields"

    def __init__(self, *, what: str, object_id: UUID, fields: list[str]) -> None:
        super().__init__(
            f"{what} {object_id} exists with different {', '.join(fields)}", id=str(object_id), fields=fields
        )


class LimitReached(Conflict):
    slug, title = "limit-reached", "Limit reached"

    def __init__(self, detail: str, *, limit: int) -> None:
        super().__init__(detail, limit=limit)


class BalanceOverflow(Conflict):
    slug, title = "balance-overflow", "Balance would overflow"

    def __init__(self, *, account_id: UUID) -> None:
        super().__init__(f"account {account_id} would leave the signed 64-bit range", account_id=str(account_id))


def _error_classes() -> dict[str, type[FeintError]]:
    found: dict[str, type[FeintError]] = {}
    pending: list[type[FeintError]] = [FeintError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.slug, cls)
        pending.extend(cls.__subclasses__())
    return found


def stored_problem(exc: FeintError) -> dict[str, Any]:
    """The members an idempotency record keeps of a failed request."""
    return {"slug": exc.slug, "detail": exc.detail, "extensions": exc.extensions}


def error_from_stored(stored: dict[str, Any]) -> FeintError:
    """The error a stored failure stands for, of its original class (so status and slug match)."""
    cls = _error_classes().get(str(stored.get("slug")), platform_errors.Conflict)
    exc = cls.__new__(cls)
    FeintError.__init__(exc, str(stored.get("detail", "")), **dict(stored.get("extensions") or {}))
    return exc
