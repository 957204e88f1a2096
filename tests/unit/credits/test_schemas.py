"""Input validation and answer shapes of the credits API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from feint.credits import schemas
from feint.credits.errors import InsufficientFunds
from feint.credits.models import AMOUNT_MAX, BATCH_OPERATIONS_MAX, METADATA_BYTES_MAX, Balance, BatchMode, HoldState
from tests.unit.credits.helpers import NOW, TENANT, account, grant

pytestmark = pytest.mark.unit
A, B = str(uuid.uuid4()), str(uuid.uuid4())


def fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


@pytest.mark.parametrize("amount", [0, -1, 1.0, 5.5, "5", True, AMOUNT_MAX + 1, None, 10**30])
def test_amount_is_a_strict_positive_int64(amount: Any) -> None:
    """Zero, negatives, floats, strings, booleans and out-of-range amounts are refused by name."""
    with pytest.raises(ValidationError) as caught:
        schemas.TransferIn.model_validate({"debit_account_id": A, "credit_account_id": B, "amount": amount})
    assert fields(caught.value) == {"amount"}


def test_amount_bounds_accepted() -> None:
    """1 and 2**63-1 are valid amounts."""
    for amount in (1, AMOUNT_MAX):
        schemas.TransferIn.model_validate({"debit_account_id": A, "credit_account_id": B, "amount": amount})


def test_unknown_fields_are_refused() -> None:
    """Every input model forbids fields it does not know."""
    with pytest.raises(ValidationError) as caught:
        schemas.AccountIn.model_validate({"code": "x", "colour": "red"})
    assert fields(caught.value) == {"colour"}


@pytest.mark.parametrize(
    "metadata",
    [
        {"blob": "x" * METADATA_BYTES_MAX},
        {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}},
        {"n": float("nan")},
        {"n": [float("inf")]},
        {"a": 58120545792830586880},  # beyond 64 bits: found by schemathesis (500 before)
        {"a": [-(2**63) - 1]},
        {"a": "\udb8d"},  # a lone surrogate
        {"\udb8d": 1},
        {"a": {"b": "nul \x00 inside"}},
    ],
)
def test_metadata_is_bounded(metadata: dict[str, Any]) -> None:
    """Metadata larger than the limit, nested too deep or with non-finite numbers is refused."""
    with pytest.raises(ValidationError) as caught:
        schemas.AccountIn.model_validate({"code": "x", "metadata": metadata})
    assert fields(caught.value) == {"metadata"}


def test_card_number_validation_never_echoes_the_number() -> None:
    """A bad card number is refused by name without repeating it."""
    for bad in ("4242424242424241", "12345", "4242-4242-4242-424x"):
        with pytest.raises(ValidationError) as caught:
            schemas.PaymentMethodIn.model_validate({"card_number": bad, "expiry": "12/29", "holder": "Ada"})
        messages = " ".join(str(e["msg"]) for e in caught.value.errors())
        assert bad not in messages and "4242" not in messages
    with pytest.raises(ValidationError) as caught:
        schemas.PaymentMethodIn.model_validate({"card_number": "4242424242424242", "expiry": "13/29", "holder": "A"})
    assert fields(caught.value) == {"expiry"}
    ok = schemas.PaymentMethodIn.model_validate(
        {"card_number": "4242 4242 4242 4242", "expiry": "01/30", "holder": "A"}
    )
    assert ok.card_number == "4242424242424242"


def test_batch_operations_are_discriminated_and_bounded() -> None:
    """Batch operations name their kind; an empty batch is refused; grants are flagged."""
    body = schemas.BatchIn.model_validate(
        {
            "mode": "independent",
            "operations": [
                {"op": "transfer", "debit_account_id": A, "credit_account_id": B, "amount": 1},
                {"op": "hold", "debit_account_id": A, "credit_account_id": B, "amount": 1, "timeout_seconds": 5},
                {"op": "capture", "hold_id": A},
                {"op": "void", "hold_id": A},
                {"op": "grant", "account_id": A, "amount": 3},
            ],
        }
    )
    assert body.mode is BatchMode.INDEPENDENT and body.grants
    ops = body.to_domain(TENANT)
    assert [type(op).__name__ for op in ops] == ["PostTransfer", "PlaceHold", "CaptureHold", "VoidHold", "IssueGrant"]
    with pytest.raises(ValidationError):
        schemas.BatchIn.model_validate({"operations": []})
    with pytest.raises(ValidationError) as caught:
        schemas.BatchIn.model_validate(
            {"operations": [{"op": "transfer", "debit_account_id": A, "credit_account_id": B, "amount": 0}]}
        )
    assert fields(caught.value) == {"operations.0.transfer.amount"}


def test_request_hash_is_keyed_and_canonical() -> None:
    """The same body in another key order hashes the same; another body or key differently."""
    one = schemas.TransferIn.model_validate(
        {"debit_account_id": A, "credit_account_id": B, "amount": 1, "metadata": {"x": 1, "y": 2}}
    )
    two = schemas.TransferIn.model_validate(
        {"metadata": {"y": 2, "x": 1}, "amount": 1, "credit_account_id": B, "debit_account_id": A}
    )
    three = schemas.TransferIn.model_validate({"debit_account_id": A, "credit_account_id": B, "amount": 2})
    key = b"k" * 32
    assert schemas.request_hash("POST", "/v1/transfers", one, key=key) == schemas.request_hash(
        "POST", "/v1/transfers", two, key=key
    )
    assert schemas.request_hash("POST", "/v1/transfers", one, key=key) != schemas.request_hash(
        "POST", "/v1/transfers", three, key=key
    )
    assert schemas.request_hash("POST", "/p", None, key=key) != schemas.request_hash("POST", "/p", None, key=b"j" * 32)


def test_rendered_bodies_match_the_documented_models() -> None:
    """Every body the service renders validates against its OpenAPI model."""
    acct = account(posted=10)
    g = grant(acct, 10, expires_in=60)
    body = schemas.account_body(acct, Balance(posted=10, pending=0, expired=0, available=10), [g])
    schemas.AccountOut.model_validate(body)
    from feint.credits.models import Hold, Transfer, TransferKind

    t = Transfer(
        tenant_id=TENANT,
        id=uuid.uuid4(),
        kind=TransferKind.GRANT,
        debit_account_id=uuid.uuid4(),
        credit_account_id=acct.id,
        amount=10,
        hold_id=None,
        grant_id=g.id,
        debit_balance=-10,
        credit_balance=10,
        metadata=b'{"k":"v"}',
        posted_at=NOW,
    )
    schemas.TransferOut.model_validate(schemas.transfer_body(t))
    schemas.GrantIssuedOut.model_validate(schemas.grant_issued_body(g, t))
    entry = schemas.entry_body(acct.id, t)
    assert (entry["amount"], entry["balance"]) == (10, 10)
    schemas.EntryOut.model_validate(entry)
    debit_entry = schemas.entry_body(t.debit_account_id, t)
    assert (debit_entry["amount"], debit_entry["balance"]) == (-10, -10)
    h = Hold(
        tenant_id=TENANT,
        id=uuid.uuid4(),
        debit_account_id=acct.id,
        credit_account_id=uuid.uuid4(),
        amount=3,
        state=HoldState.PENDING,
        expires_at=datetime(2031, 1, 1, tzinfo=UTC),
        allocations=(),
        captured_amount=None,
        transfer_id=None,
        metadata=b"{}",
        created_at=NOW,
        resolved_at=None,
    )
    schemas.HoldOut.model_validate(schemas.hold_body(h))
    problem = schemas.problem_body(InsufficientFunds(account_id=acct.id, available=1, amount=2))
    assert problem["type"] == "/problems/insufficient-funds" and problem["available"] == 1


def test_metadata_errors_name_the_place_inside_metadata() -> None:
    """The 422 says where in the metadata the bad value is, and 64-bit edges are accepted."""
    with pytest.raises(ValidationError) as caught:
        schemas.AccountIn.model_validate({"code": "x", "metadata": {"order": {"lines": [1, 2**64]}}})
    assert "metadata.order.lines[1]: integer outside the signed 64-bit range" in str(caught.value)
    ok = schemas.AccountIn.model_validate({"code": "x", "metadata": {"a": 2**63 - 1, "b": -(2**63), "c": "é"}})
    assert ok.metadata["a"] == 2**63 - 1


def _op(**fields: Any) -> dict[str, Any]:
    return {"op": "transfer", "debit_account_id": A, "credit_account_id": B, "amount": 5, **fields}


_PLAIN_BODIES = [
    {"operations": [_op()]},
    {"mode": "independent", "operations": [_op(), _op(amount=AMOUNT_MAX)], "results": "all"},
    {"mode": "atomic", "operations": [_op(metadata={}), _op(metadata={"z": [1, 2.5, None], "a": {"b": "é"}}), _op()]},
    {"operations": [_op(), _op(metadata={"n": 1})], "results": "failures"},
]
_NOT_PLAIN = [
    [],
    {"operations": []},
    {"operations": [_op(id=A)]},  # a client id: the general path
    {"operations": [_op(amount=0)]},
    {"operations": [_op(amount=True)]},
    {"operations": [_op(amount=1.0)]},
    {"operations": [_op(amount=AMOUNT_MAX + 1)]},
    {"operations": [_op(debit_account_id=A.upper())]},  # valid, but another spelling: BatchIn decides
    {"operations": [_op(credit_account_id=A.replace("-", ""))]},
    {"operations": [_op(credit_account_id="not-a-uuid")]},
    {"operations": [_op(metadata=None)]},
    {"operations": [_op(metadata={"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}}})]},
    {"operations": [_op(extra=1)]},
    {"operations": [{"op": "void", "hold_id": A}]},
    {"operations": [_op()], "mode": "both"},
    {"operations": [_op()], "results": "some"},
    {"operations": [_op()], "other": 1},
]


@pytest.mark.parametrize("body", _PLAIN_BODIES)
def test_plain_batches_are_read_as_batch_in_reads_them(body: dict[str, Any]) -> None:
    """The fast path's columns, mode, results and request hash are BatchIn's, field for field."""
    plain = schemas.plain_transfer_batch(body)
    model = schemas.BatchIn.model_validate(body)
    assert plain is not None
    ops = model.to_domain(uuid.uuid4())
    assert (plain.mode, plain.everything) == (model.mode, model.results == "all")
    assert plain.debits == [str(op.debit_account_id) for op in ops]  # type: ignore[union-attr]
    assert plain.credits == [str(op.credit_account_id) for op in ops]  # type: ignore[union-attr]
    assert plain.amounts == [op.amount for op in ops]  # type: ignore[union-attr]
    assert (plain.metadata or [b"{}"] * len(ops)) == [op.metadata for op in ops]  # type: ignore[union-attr]
    key = b"k" * 32
    assert schemas.request_hash_of("POST", "/v1/batches", body, key=key) == schemas.request_hash(
        "POST", "/v1/batches", model, key=key
    )


@pytest.mark.parametrize("body", _NOT_PLAIN)
def test_anything_else_is_left_to_batch_in(body: Any) -> None:
    assert schemas.plain_transfer_batch(body) is None


def test_a_batch_of_the_largest_size_is_plain_and_one_more_is_not() -> None:
    assert schemas.plain_transfer_batch({"operations": [_op()] * BATCH_OPERATIONS_MAX}) is not None
    assert schemas.plain_transfer_batch({"operations": [_op()] * (BATCH_OPERATIONS_MAX + 1)}) is None
