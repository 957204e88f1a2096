"""Spending from a grant is a HOT update (migration 0010): no new index entries, no dead version
left for a vacuum while the grant still has credits; a grant used up leaves the live index."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.credits.conftest import Ledger

pytestmark = pytest.mark.integration


def _hot_and_all(cur: psycopg.Cursor[tuple[int, int]]) -> tuple[int, int]:
    cur.execute(
        "SELECT pg_stat_get_xact_tuples_hot_updated('credit_grants'::regclass),"
        " pg_stat_get_xact_tuples_updated('credit_grants'::regclass)"
    )
    row = cur.fetchone()
    assert row is not None
    return row[0], row[1]


async def test_spending_from_a_grant_is_a_hot_update(ledger: Ledger, clean_db: str) -> None:
    account = await ledger.account()
    grant = await ledger.grant(account["id"], 10)
    merchant = await ledger.account()
    r = await ledger.transfer(account["id"], merchant["id"], 3)
    assert r.status_code == 201, r.text
    balance = await ledger.balance(account["id"])
    assert [g["remaining"] for g in balance["grants"]] == [7]

    with psycopg.connect(clean_db) as conn, conn.cursor() as cur:
        # The shape of the ledger's UPDATE (store/ledger.py), on a grant that keeps credits: in place.
        update = """UPDATE credit_grants g SET remaining = v.remaining, held = v.held
                    FROM (VALUES (%s::uuid, %s::bigint, %s::bigint)) AS v(id, remaining, held)
                    WHERE g.id = v.id"""
        cur.execute(update, (grant["id"], 5, 2))
        assert _hot_and_all(cur) == (1, 1)
        cur.execute(update, (grant["id"], 0, 2))  # held only: still live
        assert _hot_and_all(cur) == (2, 2)
        cur.execute("SELECT live FROM credit_grants WHERE id = %s", (grant["id"],))
        assert cur.fetchone() == (True,)
        # Used up: `live` flips, so the version must leave the partial indexes (not HOT).
        cur.execute(update, (grant["id"], 0, 0))
        assert _hot_and_all(cur) == (2, 3)
        cur.execute("SELECT tenant_id FROM credit_grants WHERE id = %s", (grant["id"],))
        row = cur.fetchone()
        assert row is not None and row[0] is not None
        (tenant,) = row
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(
            "SELECT count(*) FROM credit_grants g WHERE g.tenant_id = %s AND g.account_id = %s AND g.live",
            (tenant, account["id"]),
        )
        assert cur.fetchone() == (0,)
        cur.execute(
            "EXPLAIN SELECT * FROM credit_grants g WHERE g.tenant_id = %s AND g.account_id = %s AND g.live",
            (tenant, account["id"]),
        )
        assert "credit_grants_live" in "\n".join(row[0] for row in cur.fetchall())
        conn.rollback()

        # The posting function reads live grants through the same predicate (its text rewritten).
        cur.execute("SELECT pg_get_functiondef('credit_post_transfers'::regproc)")
        row = cur.fetchone()
        assert row is not None
        assert row[0].count("g.live") == 2
        assert "g.remaining > 0 OR g.held > 0" not in row[0]
