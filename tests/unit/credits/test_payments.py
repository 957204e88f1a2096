"""What is kept of a card: Luhn check, brand, keyed fingerprint, sealing."""

from __future__ import annotations

import uuid

import pytest

from feint.credits.payments import CardDetails, associated_data, brand, fingerprint, luhn_valid, seal, unseal_json
from feint.platform.crypto import DecryptionFailed, Keyring

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("number", "valid", "name"),
    [
        ("4242424242424242", True, "visa"),
        ("5555555555554444", True, "mastercard"),
        ("2223003122003222", True, "mastercard"),
        ("378282246310005", True, "amex"),
        ("6011111111111117", True, "discover"),
        ("3530111333300000", True, "unknown"),
        ("4242424242424241", False, "visa"),
        ("42424242x4242424", False, "visa"),
    ],
)
def test_luhn_and_brand(number: str, valid: bool, name: str) -> None:
    """Known test card numbers pass the Luhn check and map to their brand."""
    assert luhn_valid(number) is valid
    assert brand(number) == name


def test_fingerprint_is_keyed_and_per_tenant() -> None:
    """Same card and tenant: same fingerprint; another tenant or master key: another one."""
    tenant = uuid.uuid4()
    one = fingerprint(b"k" * 32, tenant_id=tenant, number="4242424242424242")
    assert one == fingerprint(b"k" * 32, tenant_id=tenant, number="4242424242424242")
    assert one != fingerprint(b"k" * 32, tenant_id=uuid.uuid4(), number="4242424242424242")
    assert one != fingerprint(b"j" * 32, tenant_id=tenant, number="4242424242424242")
    assert b"4242" not in one


def test_sealed_details_open_only_in_their_row() -> None:
    """Expiry and holder are AES-GCM sealed and bound to (tenant, id)."""
    import tink
    from tink import aead

    ring = Keyring("t", tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM))
    tenant, method = uuid.uuid4(), uuid.uuid4()
    sealed = seal(ring, CardDetails(expiry="12/29", holder="Ada"), tenant_id=tenant, method_id=method)
    assert b"Ada" not in sealed
    opened = ring.decrypt(sealed, associated_data=associated_data(tenant_id=tenant, method_id=method))
    assert unseal_json(opened) == CardDetails(expiry="12/29", holder="Ada")
    with pytest.raises(DecryptionFailed):
        ring.decrypt(sealed, associated_data=associated_data(tenant_id=tenant, method_id=uuid.uuid4()))
