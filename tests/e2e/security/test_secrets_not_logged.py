"""Secrets never reach the logs: API keys, card numbers, the master key and the database password.

The in-process check of card numbers is tests/integration/credits/test_payments.py; this one runs
the three services as processes with JSON logs at debug level and scans everything they write."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import TEST_MASTER_KEY, create_key, running_service, service_env

pytestmark = pytest.mark.e2e

DB_PASSWORD = "db-pw-" + uuid.uuid4().hex  # PostgreSQL here trusts local users, so any password connects
VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
AMEX = "378282246310005"


def spellings(number: str) -> set[str]:
    """A card number as digits, in groups of four with spaces and with dashes, and in Amex 4-6-5 groups."""
    fours = [number[i : i + 4] for i in range(0, len(number), 4)]
    amex = [number[:4], number[4:10], number[10:]]
    return {number, " ".join(fours), "-".join(fours), " ".join(amex), "-".join(amex)}


def with_password(url: str) -> str:
    parts = httpx.URL(url)
    if not parts.host:  # a socket URL (embedded server): no password to test
        return url
    return str(parts.copy_with(username=parts.username or "postgres", password=DB_PASSWORD))


def session(base: str, keys: dict[str, str], *, credits: bool) -> None:
    """Authenticated calls with good, made-up and misplaced keys, and errors that echo input."""
    good, fake = keys["admin"], keys["fake"]
    with httpx.Client(base_url=base, timeout=10.0) as client:
        auth = {"authorization": f"Bearer {good}"}
        assert client.get("/v1/whoami", headers=auth).status_code == 200
        assert client.get("/v1/whoami", headers={"authorization": f"Bearer {fake}"}).status_code == 401
        assert client.get(f"/v1/whoami?api_key={good}&key={fake}").status_code == 401
        assert client.get("/v1/whoami", headers={"x-api-key": good, "cookie": f"key={good}"}).status_code == 401
        assert client.get(f"/v1/{good}", headers=auth).status_code == 404
        assert client.get("/v1/whoami", headers={"authorization": f"Basic {good}"}).status_code == 401
        client.post("/v1/whoami", headers={"authorization": f"Bearer {keys['revoked']}"})
        for path in (f"/v1/accounts/{good}", f"/v1/rulesets/{good}", f"/v1/holds/{VISA}"):  # pasted in a path
            assert client.get(path).status_code in (401, 404)
        if not credits:
            return
        for number in (VISA, "5555 5555 5555 4444", "3782-822463-10005"):
            r = client.post(
                "/v1/payment-methods", headers=auth, json={"card_number": number, "expiry": "12/29", "holder": "A"}
            )
            assert r.status_code == 201, r.text
        bad = [
            {"card_number": VISA, "expiry": "4242 4242 4242 4242", "holder": "A"},
            {"card_number": "4242424242424241", "expiry": "12/29", "holder": "A"},  # bad Luhn
            {"card_number": VISA, "expiry": "12/29", "holder": "A", "cc": "5555-5555-5555-4444"},
            {"card_number": f"{VISA}x", "expiry": "12/29", "holder": "A"},
        ]
        for body in bad:
            assert client.post("/v1/payment-methods", headers=auth, json=body).status_code == 422
        unauthenticated = client.post("/v1/payment-methods", json={"card_number": AMEX, "expiry": "12/29"})
        assert unauthenticated.status_code == 401
        wrong = client.post(f"/v1/transfers?card={VISA}", headers=auth, content=f'{{"amount": {MASTERCARD}'.encode())
        assert wrong.status_code in (400, 422)


def test_no_secret_in_any_log_line(clean_db: str, tmp_path: Path) -> None:
    """A session on credits, shadow and camouflage writes no key, card number, master key or DB password."""
    keys = {
        "admin": create_key(clean_db, tenant="acme", scope="admin"),
        "revoked": create_key(clean_db, tenant="acme", scope="write"),
        "fake": "feint_" + uuid.uuid4().hex + uuid.uuid4().hex,
    }

    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL AND scope = 'write'")
    env = service_env(with_password(clean_db), tmp_path / "home", FEINT_LOG_LEVEL="debug")
    logs: list[str] = []
    for name in ("credits", "shadow", "camouflage"):
        with running_service(name, env, log_to=logs) as base:
            session(base, keys, credits=name == "credits")
    text = "\n".join(logs)
    assert len(logs) == 3 and "auth_failed" in text  # the processes did log the session
    secrets = {f"API key {k}": v for k, v in keys.items()}
    for number in (VISA, MASTERCARD, AMEX):
        secrets |= {f"card {s}": s for s in spellings(number)}
    secrets["master key"] = TEST_MASTER_KEY
    if DB_PASSWORD in env["FEINT_DATABASE_URL"]:
        secrets["database password"] = DB_PASSWORD
    found = [what for what, value in secrets.items() if value in text]
    assert not found, f"secrets in the logs: {found}"
    digits = re.findall(r"(?<!\d)\d{13,19}(?!\d)", text)
    assert not [d for d in digits if d in {VISA, MASTERCARD, AMEX}], digits
