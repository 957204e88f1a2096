"""API models of the credits service (input validation, OpenAPI) and the bodies it answers with.

Input models forbid unknown fields; amounts are strict integers 1…2**63-1 (``5.0``, ``"5"``,
``true`` and ``0`` are all 422 naming the field); metadata is a JSON object of at most
METADATA_BYTES_MAX bytes and METADATA_DEPTH_MAX levels. Answers are rendered as plain dicts by
the ``*_body`` functions (fast: no model round trip on the hot path); the ``*Out`` models
document them in the OpenAPI and a test checks the two agree.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from feint.credits.models import (
    AMOUNT_MAX,
    BATCH_OPERATIONS_MAX,
    CODE_PATTERN,
    HOLD_TIMEOUT_SECONDS_MAX,
    METADATA_BYTES_MAX,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Account,
    Balance,
    BatchMode,
    CaptureHold,
    CreateAccount,
    Grant,
    Hold,
    IssueGrant,
    Operation,
    PaymentMethod,
    PlaceHold,
    PostTransfer,
    Transfer,
    VoidHold,
)
from feint.credits.payments import CARD_DIGITS_MAX, CARD_DIGITS_MIN, HOLDER_LENGTH_MAX, CardDetails, luhn_valid
from feint.errors import FeintError

METADATA_DEPTH_MAX = 8
_EXPIRY = re.compile(r"^(0[1-9]|1[0-2])/[0-9]{2}$")

Amount = Annotated[int, Field(strict=True, gt=0, le=AMOUNT_MAX, description="Credits: an integer 1 to 2**63-1.")]
Limit = Annotated[int, Field(strict=True, ge=0, le=AMOUNT_MAX)]
Priority = Annotated[int, Field(strict=True, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="0 burns first.")]
Timeout = Annotated[
    int, Field(strict=True, gt=0, le=HOLD_TIMEOUT_SECONDS_MAX, description="Seconds until the hold expires.")
]
Code = Annotated[str, Field(pattern=CODE_PATTERN, description="Credit type, e.g. `api-calls`.")]

ACCOUNT_ID = "0b7f6a80-3c1d-4e7a-9a54-2f1e7d3c9b10"
OTHER_ID = "6f9c2d14-8b3e-4a51-b7c0-1d2e3f4a5b6c"
HOLD_ID = "2a4b6c8d-1e3f-4a5b-8c7d-9e0f1a2b3c4d"


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check_text(text: str, where: str) -> None:
    # Lone UTF-16 surrogates cannot be encoded as UTF-8, and PostgreSQL's jsonb refuses NUL.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: text with a lone surrogate (not valid Unicode)") from None
    if "\x00" in text:
        raise ValueError(f"{where}: text with a NUL character")


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    def walk(node: Any, depth: int, where: str) -> None:
        if depth > METADATA_DEPTH_MAX:
            raise ValueError(f"{where}: nested deeper than {METADATA_DEPTH_MAX} levels")
        if isinstance(node, dict):
            for key, item in node.items():
                _check_text(key, f"{where} key {key!r}"[:200])
                walk(item, depth + 1, f"{where}.{key}"[:200])
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, depth + 1, f"{where}[{index}]"[:200])
        elif isinstance(node, bool) or node is None:
            return
        elif isinstance(node, int) and not INT64_MIN <= node <= INT64_MAX:
            raise ValueError(f"{where}: integer outside the signed 64-bit range")
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{where}: numbers must be finite")
        elif isinstance(node, str):
            _check_text(node, where)

    walk(value, 1, "metadata")
    if len(orjson.dumps(value)) > METADATA_BYTES_MAX:
        raise ValueError(f"larger than {METADATA_BYTES_MAX} bytes as JSON")
    return value


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("metadata", check_fields=False)
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_metadata(value)

    def metadata_bytes(self) -> bytes:
        return canonical_metadata(getattr(self, "metadata", {}))


def canonical_metadata(value: dict[str, Any]) -> bytes:
    if not value:
        return b"{}"  # most operations carry none; skip the encoder
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class AccountIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"code": "api-calls", "metadata": {"customer": "c-1042"}},
                {"id": ACCOUNT_ID, "code": "api-calls", "no_overdraft": True, "overdraft_limit": 500},
            ]
        },
    )
    id: UUID | None = Field(None, description="Client-chosen id (not a version-5 UUID); same id and fields: 200.")
    code: Code
    no_overdraft: bool = True
    overdraft_limit: Limit | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_domain(self, tenant_id: UUID) -> CreateAccount:
        return CreateAccount(
            tenant_id=tenant_id,
            id=self.id or uuid.uuid4(),
            code=self.code,
            no_overdraft=self.no_overdraft,
            overdraft_limit=self.overdraft_limit,
            metadata=self.metadata_bytes(),
            id_supplied=self.id is not None,
        )


class GrantIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"account_id": ACCOUNT_ID, "amount": 10_000, "expires_at": "2030-01-01T00:00:00Z", "priority": 10},
            ]
        },
    )
    account_id: UUID
    amount: Amount
    expires_at: AwareDatetime | None = None
    priority: Priority = PRIORITY_DEFAULT
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_domain(self, tenant_id: UUID) -> IssueGrant:
        return IssueGrant(
            tenant_id=tenant_id,
            id=uuid.uuid4(),
            transfer_id=uuid.uuid4(),
            account_id=self.account_id,
            amount=self.amount,
            priority=self.priority,
            expires_at=self.expires_at,
            metadata=self.metadata_bytes(),
        )


class TransferIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "debit_account_id": ACCOUNT_ID,
                    "credit_account_id": OTHER_ID,
                    "amount": 25,
                    "metadata": {"order": "o-77"},
                },
            ]
        },
    )
    id: UUID | None = Field(None, description="Client id: same id and fields answer 200 with the transfer.")
    debit_account_id: UUID
    credit_account_id: UUID
    amount: Amount
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_domain(self, tenant_id: UUID) -> PostTransfer:
        return PostTransfer(
            tenant_id=tenant_id,
            id=self.id or uuid.uuid4(),
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount=self.amount,
            metadata=self.metadata_bytes(),
            id_supplied=self.id is not None,
        )


class HoldIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"debit_account_id": ACCOUNT_ID, "credit_account_id": OTHER_ID, "amount": 100, "timeout_seconds": 300},
            ]
        },
    )
    id: UUID | None = None
    debit_account_id: UUID
    credit_account_id: UUID
    amount: Amount
    timeout_seconds: Timeout
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_domain(self, tenant_id: UUID) -> PlaceHold:
        return PlaceHold(
            tenant_id=tenant_id,
            id=self.id or uuid.uuid4(),
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount=self.amount,
            timeout_seconds=self.timeout_seconds,
            metadata=self.metadata_bytes(),
            id_supplied=self.id is not None,
        )


class CaptureIn(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"amount": 60}]})
    amount: Amount | None = Field(None, description="Part to capture (the rest is released); default: all.")

    def to_domain(self, tenant_id: UUID, hold_id: UUID) -> CaptureHold:
        return CaptureHold(tenant_id=tenant_id, hold_id=hold_id, transfer_id=uuid.uuid4(), amount=self.amount)


class TransferOp(TransferIn):
    op: Literal["transfer"]


class HoldOp(HoldIn):
    op: Literal["hold"]


class CaptureOp(_In):
    op: Literal["capture"]
    hold_id: UUID
    amount: Amount | None = None

    def to_domain(self, tenant_id: UUID) -> CaptureHold:
        return CaptureHold(tenant_id=tenant_id, hold_id=self.hold_id, transfer_id=uuid.uuid4(), amount=self.amount)


class VoidOp(_In):
    op: Literal["void"]
    hold_id: UUID

    def to_domain(self, tenant_id: UUID) -> VoidHold:
        return VoidHold(tenant_id=tenant_id, hold_id=self.hold_id)


class GrantOp(GrantIn):
    op: Literal["grant"]


BatchOperation = Annotated[TransferOp | HoldOp | CaptureOp | VoidOp | GrantOp, Field(discriminator="op")]


class BatchIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "mode": "atomic",
                    "operations": [
                        {"op": "transfer", "debit_account_id": ACCOUNT_ID, "credit_account_id": OTHER_ID, "amount": 5},
                        {
                            "op": "hold",
                            "debit_account_id": ACCOUNT_ID,
                            "credit_account_id": OTHER_ID,
                            "amount": 7,
                            "timeout_seconds": 60,
                        },
                        {"op": "capture", "hold_id": HOLD_ID, "amount": 3},
                    ],
                }
            ]
        },
    )
    mode: BatchMode = BatchMode.ATOMIC
    operations: list[BatchOperation] = Field(min_length=1, max_length=BATCH_OPERATIONS_MAX)
    results: Literal["failures", "all"] = Field(
        "failures",
        description="`failures` (default, TigerBeetle's convention): `results` lists only the operations "
        "that failed; `all`: one entry per operation, in order.",
    )

    def to_domain(self, tenant_id: UUID) -> list[Operation]:
        return [op.to_domain(tenant_id) for op in self.operations]

    @property
    def grants(self) -> bool:
        return any(isinstance(op, GrantOp) for op in self.operations)


class PaymentMethodIn(_In):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"card_number": "4242424242424242", "expiry": "12/29", "holder": "Ada Lovelace"},
            ]
        },
    )
    card_number: str = Field(description="Digits only (spaces and dashes are ignored); never stored.")
    expiry: str = Field(description="MM/YY")
    holder: str = Field(min_length=1, max_length=HOLDER_LENGTH_MAX)

    @field_validator("card_number")
    @classmethod
    def _card(cls, value: str) -> str:
        # Messages never repeat the number: validation errors may be logged.
        digits = value.replace(" ", "").replace("-", "")
        if not digits.isdigit() or not CARD_DIGITS_MIN <= len(digits) <= CARD_DIGITS_MAX:
            raise ValueError(f"must be {CARD_DIGITS_MIN} to {CARD_DIGITS_MAX} digits")
        if not luhn_valid(digits):
            raise ValueError("fails the Luhn check")
        return digits

    @field_validator("expiry")
    @classmethod
    def _expiry(cls, value: str) -> str:
        if not _EXPIRY.match(value):
            raise ValueError("must be MM/YY")
        return value


# --- answers --------------------------------------------------------------------------------


class GrantOut(BaseModel):
    id: UUID
    account_id: UUID
    amount: int
    remaining: int
    held: int
    priority: int
    expires_at: datetime | None
    transfer_id: UUID
    created_at: datetime


class AccountOut(BaseModel):
    id: UUID
    code: str
    kind: str
    no_overdraft: bool
    overdraft_limit: int | None
    metadata: dict[str, Any]
    posted: int = Field(description="Credits minus debits posted.")
    pending: int = Field(description="Held by pending holds.")
    expired: int = Field(description="Expired grant remainders the sweeper has not moved yet.")
    available: int | None = Field(description="posted - pending - expired (+ overdraft_limit); null: no limit.")
    version: int
    created_at: datetime
    grants: list[GrantOut] = Field(description="Grants with credits left or held, in burn order (first 100).")


class TransferOut(BaseModel):
    id: UUID
    kind: str
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    hold_id: UUID | None
    grant_id: UUID | None
    debit_balance: int
    credit_balance: int
    metadata: dict[str, Any]
    posted_at: datetime


class GrantIssuedOut(GrantOut):
    transfer: TransferOut


class HoldOut(BaseModel):
    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    state: str
    expires_at: datetime
    captured_amount: int | None
    transfer_id: UUID | None
    metadata: dict[str, Any]
    created_at: datetime
    resolved_at: datetime | None


class EntryOut(BaseModel):
    transfer_id: UUID
    kind: str
    amount: int = Field(description="Signed change to this account: negative for a debit.")
    balance: int = Field(description="Posted balance after this entry (running balance).")
    counterparty_account_id: UUID
    hold_id: UUID | None
    grant_id: UUID | None
    metadata: dict[str, Any]
    posted_at: datetime


class EntriesOut(BaseModel):
    account_id: UUID
    as_of: datetime | None
    balance: int = Field(description="Posted balance at as_of (now when absent).")
    entries: list[EntryOut]
    next_cursor: str | None


class AccountsOut(BaseModel):
    accounts: list[AccountOut]
    next_cursor: str | None


class BatchResult(BaseModel):
    index: int = Field(description="Position of the operation in the request's `operations`, from 0.")
    status: int = Field(description="The status the operation alone would have had: 201/200, or the error's.")
    result: dict[str, Any] | None = Field(
        None, description="A success (only with `results: all`): what the single route answers, e.g. the transfer."
    )
    error: dict[str, Any] | None = Field(
        None,
        description="A failure: the problem document's members (`type`, `title`, `status`, `detail` and the "
        "error's own, e.g. `account_id` and `available`), as the single route answers it.",
    )


class BatchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "mode": "independent",
                    "operations": 8190,
                    "failed": 1,
                    "results": [
                        {
                            "index": 17,
                            "status": 409,
                            "error": {
                                "type": "/problems/insufficient-funds",
                                "title": "Insufficient funds",
                                "status": 409,
                                "detail": f"account {ACCOUNT_ID} has 3 available, 5 needed",
                                "account_id": ACCOUNT_ID,
                                "available": 3,
                            },
                        }
                    ],
                }
            ]
        }
    )
    mode: str
    operations: int = Field(description="Operations in the request.")
    failed: int = Field(description="Operations that failed (an atomic batch that fails answers with an error).")
    results: list[BatchResult] = Field(
        description="Per operation, by `index`: only the failed ones unless the request asked `results: all`."
    )


class PaymentMethodOut(BaseModel):
    id: UUID
    last4: str
    brand: str
    fingerprint: str = Field(description="Keyed fingerprint (hex): equal for the same card within a tenant.")
    created_at: datetime
    expiry: str | None = Field(None, description="Only on GET (decrypted).")
    holder: str | None = Field(None, description="Only on GET (decrypted).")


class AuditBreakOut(BaseModel):
    tenant_id: UUID
    seq: int
    reason: str


class AuditReportOut(BaseModel):
    ok: bool
    tenants: int
    entries_checked: int
    transfers_checked: int
    first_broken: AuditBreakOut | None
    problems: list[str]


def _meta(raw: bytes) -> Any:
    return orjson.loads(raw)


def grant_body(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "account_id": grant.account_id,
        "amount": grant.amount,
        "remaining": grant.remaining,
        "held": grant.held,
        "priority": grant.priority,
        "expires_at": grant.expires_at,
        "transfer_id": grant.transfer_id,
        "created_at": grant.created_at,
    }


def account_body(account: Account, balance: Balance, grants: list[Grant]) -> dict[str, Any]:
    return {
        "id": account.id,
        "code": account.code,
        "kind": account.kind.value,
        "no_overdraft": account.no_overdraft,
        "overdraft_limit": account.overdraft_limit,
        "metadata": _meta(account.metadata),
        "posted": balance.posted,
        "pending": balance.pending,
        "expired": balance.expired,
        "available": balance.available,
        "version": account.version,
        "created_at": account.created_at,
        "grants": [grant_body(g) for g in grants],
    }


def transfer_body(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": transfer.id,
        "kind": transfer.kind.value,
        "debit_account_id": transfer.debit_account_id,
        "credit_account_id": transfer.credit_account_id,
        "amount": transfer.amount,
        "hold_id": transfer.hold_id,
        "grant_id": transfer.grant_id,
        "debit_balance": transfer.debit_balance,
        "credit_balance": transfer.credit_balance,
        "metadata": _meta(transfer.metadata),
        "posted_at": transfer.posted_at,
    }


def grant_issued_body(grant: Grant, transfer: Transfer) -> dict[str, Any]:
    return {**grant_body(grant), "transfer": transfer_body(transfer)}


def hold_body(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "debit_account_id": hold.debit_account_id,
        "credit_account_id": hold.credit_account_id,
        "amount": hold.amount,
        "state": hold.state.value,
        "expires_at": hold.expires_at,
        "captured_amount": hold.captured_amount,
        "transfer_id": hold.transfer_id,
        "metadata": _meta(hold.metadata),
        "created_at": hold.created_at,
        "resolved_at": hold.resolved_at,
    }


def entry_body(account_id: UUID, transfer: Transfer) -> dict[str, Any]:
    debit = transfer.debit_account_id == account_id
    return {
        "transfer_id": transfer.id,
        "kind": transfer.kind.value,
        "amount": -transfer.amount if debit else transfer.amount,
        "balance": transfer.debit_balance if debit else transfer.credit_balance,
        "counterparty_account_id": transfer.credit_account_id if debit else transfer.debit_account_id,
        "hold_id": transfer.hold_id,
        "grant_id": transfer.grant_id,
        "metadata": _meta(transfer.metadata),
        "posted_at": transfer.posted_at,
    }


def payment_method_body(method: PaymentMethod, details: CardDetails | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": method.id,
        "last4": method.last4,
        "brand": method.brand,
        "fingerprint": method.fingerprint.hex(),
        "created_at": method.created_at,
    }
    if details is not None:
        body.update(expiry=details.expiry, holder=details.holder)
    return body


def problem_body(exc: FeintError) -> dict[str, Any]:
    """An error as a member of a batch result (the HTTP error responses come from the platform)."""
    return {
        "type": "/problems/" + exc.slug,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        **exc.extensions,
    }


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)


def request_hash(method: str, path: str, body: BaseModel | None, *, key: bytes) -> bytes:
    """What makes two requests "the same" for an Idempotency-Key: method, path and the body as
    canonical JSON (the fields the client sent, after validation). Keyed (HMAC-SHA-256), since a
    body may hold a card number and a plain hash of one is brute-forced in minutes."""
    return request_hash_of(
        method, path, None if body is None else body.model_dump(mode="json", exclude_unset=True), key=key
    )


def request_hash_of(method: str, path: str, body: Any, *, key: bytes) -> bytes:
    """`request_hash` of a body already in its validated JSON form (what ``model_dump`` gives)."""
    payload = {"method": method, "path": path, "body": body}
    return hmac.new(key, orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), hashlib.sha256).digest()


# --- the batch endpoint's fast path -----------------------------------------------------------

_UUID_TEXT = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_LIST = re.compile(f"{_UUID_TEXT}(?:,{_UUID_TEXT})*")
_BATCH_KEYS = frozenset({"mode", "operations", "results"})
_TRANSFER_KEYS = frozenset({"op", "debit_account_id", "credit_account_id", "amount", "metadata"})
_MODES = {"atomic": BatchMode.ATOMIC, "independent": BatchMode.INDEPENDENT}


@dataclass(frozen=True, slots=True)
class PlainBatch:
    """A batch of transfers without client ids, as columns (see `plain_transfer_batch`)."""

    mode: BatchMode
    everything: bool
    debits: list[str]
    credits: list[str]
    amounts: list[int]
    metadata: list[bytes] | None  # None: no operation carries any


def plain_transfer_batch(data: Any) -> PlainBatch | None:
    """The body of ``POST /v1/batches`` (decoded JSON) as columns when it is the common case that
    `BatchIn` would accept as it is: only ``transfer`` operations, no client ``id``, account ids as
    canonical lowercase UUIDs, amounts JSON integers 1 to 2**63-1, metadata objects that pass
    `BatchIn`'s checks. Anything else (another operation, an id, another spelling of a UUID, any
    invalid field) is None: `BatchIn` then decides, and its answers (422 naming the field) stay the
    reference. Per operation this is a handful of dict look-ups instead of a model, a UUID object
    and a domain object; the UUIDs are checked by one regular expression over all of them."""
    if type(data) is not dict or not data.keys() <= _BATCH_KEYS:
        return None
    mode = _MODES.get(data.get("mode", "atomic")) if type(data.get("mode", "atomic")) is str else None
    results = data.get("results", "failures")
    operations = data.get("operations")
    if mode is None or results not in ("failures", "all") or type(results) is not str:
        return None
    if type(operations) is not list or not 0 < len(operations) <= BATCH_OPERATIONS_MAX:
        return None
    debits: list[str] = []
    credits: list[str] = []
    amounts: list[int] = []
    metadata: list[bytes] | None = None
    for index, op in enumerate(operations):
        if type(op) is not dict or op.get("op") != "transfer" or not op.keys() <= _TRANSFER_KEYS:
            return None
        debit, credit, amount = op.get("debit_account_id"), op.get("credit_account_id"), op.get("amount")
        if type(debit) is not str or type(credit) is not str or type(amount) is not int or not 0 < amount <= AMOUNT_MAX:
            return None
        debits.append(debit)
        credits.append(credit)
        amounts.append(amount)
        if "metadata" in op:
            value = op["metadata"]
            if type(value) is not dict:
                return None
            if value:
                try:
                    _check_metadata(value)
                except ValueError:
                    return None
                if metadata is None:
                    metadata = [b"{}"] * index
            if metadata is not None:
                metadata.append(canonical_metadata(value))
        elif metadata is not None:
            metadata.append(b"{}")
    if _UUID_LIST.fullmatch(",".join(debits)) is None or _UUID_LIST.fullmatch(",".join(credits)) is None:
        return None
    return PlainBatch(mode, results == "all", debits, credits, amounts, metadata)
