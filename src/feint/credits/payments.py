"""Payment data (PCI DSS): what is kept of a card, and how.

The full card number (PAN) is never stored or logged: a payment method keeps the last four
digits, the brand, and a keyed fingerprint, HMAC-SHA-256 under a secret derived from the master
key over (tenant, PAN), so the same card is recognised within a tenant while the fingerprint is
useless to anyone without the master key (a plain hash of a 16-digit PAN is brute-forced in
minutes). The other sensitive fields (expiry, holder) are sealed with AES-256-GCM through the
Tink data keyset, bound to the row by associated data.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from uuid import UUID

import orjson

from feint.credits.store.ledger import PAYMENT_SEALED
from feint.platform.crypto import Keyring
from feint.platform.secrets import derive

CARD_DIGITS_MIN = 12
CARD_DIGITS_MAX = 19
HOLDER_LENGTH_MAX = 128
FINGERPRINT_PURPOSE = "credits-card-fingerprint"


def luhn_valid(number: str) -> bool:
    """The Luhn (mod 10) check every card number satisfies."""
    if not number.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def brand(number: str) -> str:
    """The card brand from the issuer prefix (IIN ranges), ``unknown`` otherwise."""
    if number.startswith("4"):
        return "visa"
    two, four = int(number[:2]), int(number[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "mastercard"
    if two in (34, 37):
        return "amex"
    if number.startswith(("6011", "65")):
        return "discover"
    return "unknown"


def fingerprint(master_key: bytes, *, tenant_id: UUID, number: str) -> bytes:
    secret = derive(master_key, FINGERPRINT_PURPOSE)
    return hmac.new(secret, tenant_id.bytes + number.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class CardDetails:
    """The sealed part of a payment method."""

    expiry: str
    holder: str


def associated_data(*, tenant_id: UUID, method_id: UUID) -> bytes:
    return PAYMENT_SEALED.associated_data({"tenant_id": tenant_id, "id": method_id})


def seal(keyring: Keyring, details: CardDetails, *, tenant_id: UUID, method_id: UUID) -> bytes:
    plaintext = orjson.dumps({"expiry": details.expiry, "holder": details.holder})
    return keyring.encrypt(plaintext, associated_data=associated_data(tenant_id=tenant_id, method_id=method_id))


def unseal_json(plaintext: bytes) -> CardDetails:
    data = orjson.loads(plaintext)
    return CardDetails(expiry=str(data["expiry"]), holder=str(data["holder"]))
