"""The audit chain on the database: append-only rights, verification, tampering named."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import orjson
import psycopg
import pytest

from feint.credits.audit import canonical
from tests.integration.credits.conftest import Ledger

pytestmark = pytest.mark.integration


async def activity(ledger: Ledger) -> tuple[str, str]:
    a, b = await ledger.account(), await ledger.account()
    await ledger.grant(a["id"], 100)
    for amount in (1, 2, 3):
        assert (await ledger.transfer(a["id"], b["id"], amount)).status_code == 201
    return a["id"], b["id"]


def superuser(url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def tamper(url: str, statement: str, *params: object) -> None:
    """Change a row as a superuser who first switches the append-only triggers off."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(statement, params)


async def test_verify_passes_after_activity_and_needs_admin(ledger: Ledger) -> None:
    """A tenant admin verifies its chain; an operator without a tenant verifies every chain."""
    await activity(ledger)
    await ledger.client.post("/v1/accounts", json={"code": "api-calls"}, headers=ledger.other)
    r = await ledger.client.get("/v1/audit/verify", headers=ledger.admin)
    report = r.json()
    assert (report["ok"], report["tenants"], report["first_broken"], report["problems"]) == (True, 1, None, [])
    assert report["entries_checked"] >= 6 and report["transfers_checked"] == 4
    assert (await ledger.client.get("/v1/audit/verify", headers=ledger.write)).status_code == 403
    everyone = {k: v for k, v in ledger.operator.items() if k != "feint-tenant"}
    assert (await ledger.client.get("/v1/audit/verify", headers=everyone)).json()["tenants"] == 2


def test_audit_and_transfers_are_append_only(clean_db: str) -> None:
    """UPDATE and DELETE are refused on the audit log and the transfers, for the app role and even a superuser."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        for table in ("credit_audit", "credit_transfers"):
            for statement in (f"UPDATE {table} SET tenant_id = tenant_id", f"DELETE FROM {table}"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                    _insert_one_and(conn, table, statement)  # a row must exist for a row trigger to fire
        with conn.transaction():
            conn.execute("SET LOCAL ROLE feint_app")
            for table in ("credit_audit", "credit_transfers"):
                for statement in (
                    f"UPDATE {table} SET amount = 0 WHERE false"
                    if table == "credit_transfers"
                    else f"UPDATE {table} SET seq = 0 WHERE false",
                    f"DELETE FROM {table} WHERE false",
                    f"TRUNCATE {table}",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                        conn.execute(statement)


def _insert_one_and(conn: psycopg.Connection[tuple[object, ...]], table: str, statement: str) -> None:
    _insert_one(conn, table)
    conn.execute(statement)


def _insert_one(conn: psycopg.Connection[tuple[object, ...]], table: str) -> None:
    tenant = uuid.uuid4()
    if table == "credit_audit":
        conn.execute(
            "INSERT INTO credit_audit (tenant_id, seq, batch_id, hash, body, operations) "
            "VALUES (%s, 1, %s, %s, '\\x', '\\x')",
            (tenant, uuid.uuid4(), b"\x00" * 32),
        )
    else:
        conn.execute(
            "INSERT INTO credit_transfers (tenant_id, id, kind, debit_account_id, credit_account_id, amount, "
            "debit_balance, credit_balance, metadata, posted_at, batch_id) VALUES "
            "(%s, %s, 'transfer', %s, %s, 1, 0, 0, '\\x', now(), %s)",
            (tenant, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()),
        )


async def test_edited_operation_is_named(ledger: Ledger, clean_db: str) -> None:
    """A superuser who edits an operation inside a past entry is caught at that entry."""
    await activity(ledger)
    with psycopg.connect(clean_db) as conn:
        row = conn.execute(
            "SELECT seq, operations FROM credit_audit a JOIN tenants t ON t.id = a.tenant_id "
            "WHERE t.name = 'acme' ORDER BY seq LIMIT 1 OFFSET 3"
        ).fetchone()
    assert row is not None
    seq, operations = row
    records = orjson.loads(operations)
    records[0]["amount"] = records[0].get("amount", 0) + 1000
    tamper(
        clean_db,
        "UPDATE credit_audit SET operations = %s WHERE seq = %s AND "
        "tenant_id = (SELECT id FROM tenants WHERE name = 'acme')",
        canonical(records),
        seq,
    )
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert not report["ok"]
    assert report["first_broken"]["seq"] == seq
    assert "Merkle root" in report["first_broken"]["reason"]


async def test_rewritten_chain_is_named(ledger: Ledger, clean_db: str) -> None:
    """Recomputing a body and its hash does not help: the next entry's hash breaks."""
    await activity(ledger)
    tamper(clean_db, "UPDATE credit_audit SET hash = sha256(hash) WHERE seq = 2")
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert (report["ok"], report["first_broken"]["seq"]) == (False, 2)


async def test_edited_transfer_is_named_at_its_entry(ledger: Ledger, clean_db: str) -> None:
    """A transfer changed behind the ledger's back no longer matches the entry that recorded it."""
    await activity(ledger)
    with psycopg.connect(clean_db) as conn:
        row = conn.execute("SELECT t.batch_id FROM credit_transfers t WHERE t.amount = 2").fetchone()
        assert row is not None
        entry = conn.execute("SELECT seq FROM credit_audit WHERE batch_id = %s", (row[0],)).fetchone()
    assert entry is not None
    tamper(clean_db, "UPDATE credit_transfers SET amount = 20 WHERE amount = 2")
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert report["first_broken"]["seq"] == entry[0]
    assert "differs from its audit record" in report["first_broken"]["reason"]


async def test_ledger_problems_beside_the_chain(ledger: Ledger, clean_db: str) -> None:
    """An unbalanced tenant, a forged transfer and a moved head are reported as problems."""
    a, b = await activity(ledger)
    tamper(clean_db, "UPDATE credit_accounts SET posted = posted + 1 WHERE id = %s", uuid.UUID(a))
    tamper(
        clean_db,
        "INSERT INTO credit_transfers (tenant_id, id, kind, debit_account_id, credit_account_id, amount, "
        "debit_balance, credit_balance, metadata, posted_at, batch_id) SELECT tenant_id, gen_random_uuid(), "
        "'transfer', %s, %s, 1, 0, 0, '\\x7b7d', now(), gen_random_uuid() FROM credit_accounts WHERE id = %s",
        uuid.UUID(a),
        uuid.UUID(b),
        uuid.UUID(a),
    )
    tamper(clean_db, "UPDATE credit_audit_heads SET seq = seq + 1")
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert not report["ok"] and report["first_broken"] is None
    text = " ".join(report["problems"])
    assert "sum to 1" in text and "in the audit chain" in text and "chain head" in text


async def test_deleted_transfer_is_named(ledger: Ledger, clean_db: str) -> None:
    """A transfer deleted by a superuser is named at the entry that recorded it."""
    await activity(ledger)
    tamper(clean_db, "DELETE FROM credit_transfers WHERE amount = 3")
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert "missing from the ledger" in report["first_broken"]["reason"]


async def test_unreadable_operations_are_named(ledger: Ledger, clean_db: str) -> None:
    """Operations that are not JSON any more break the chain at their entry."""
    await activity(ledger)
    tamper(clean_db, "UPDATE credit_audit SET operations = '\\x6e6f7065' WHERE seq = 3")
    tamper(clean_db, "UPDATE credit_audit SET operations = '\\x7b7d' WHERE seq = 4")
    report = (await ledger.client.get("/v1/audit/verify", headers=ledger.admin)).json()
    assert (report["first_broken"]["seq"], "not valid JSON" in report["first_broken"]["reason"]) == (3, True)
