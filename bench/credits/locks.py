"""Lock strategies for a transfer on PostgreSQL, measured: conditional UPDATE vs SELECT … FOR UPDATE.

Each strategy moves 1 unit between two random accounts of a table ``(id, balance)`` with no
overdraft, one transaction per transfer, from N concurrent clients (psycopg async, pipeline mode):

- ``for_update``: BEGIN; SELECT both rows ORDER BY id FOR UPDATE (round trip 1); check the
  balance in the client; UPDATE both + INSERT the transfer + COMMIT (round trip 2). The ledger's way.
- ``conditional``: BEGIN; the two UPDATEs in id order, the debit one ``WHERE balance >= amount``
  (round trip 1, to read its row count); INSERT + COMMIT, or ROLLBACK (round trip 2).
- ``for_update_batch16``: ``for_update`` with 16 transfers per transaction (one lock statement
  for all their accounts, one UPDATE, one INSERT): the ledger's micro-batching.
- ``conditional_cte``: one autocommit statement: ``WITH debit AS (UPDATE … WHERE balance >= amount
  RETURNING …), credit AS (UPDATE … WHERE EXISTS (SELECT FROM debit)) INSERT … WHERE EXISTS …``
  (1 round trip; PostgreSQL does not order the CTEs' row locks, so deadlocks are retried).

Usage: ``python bench/credits/locks.py`` (FEINT_DATABASE_URL or the embedded PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import psycopg.errors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench

Strategy = Callable[[psycopg.AsyncConnection[tuple[object, ...]], int, int], Awaitable[bool]]
SCHEMA = """
CREATE TABLE acc (id integer PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE xfer (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, debit integer NOT NULL,
                   credit integer NOT NULL, amount bigint NOT NULL);
"""


async def for_update(conn: psycopg.AsyncConnection[tuple[object, ...]], debit: int, credit: int) -> bool:
    async with conn.pipeline() as p:
        await conn.execute("BEGIN")
        cur = await conn.execute(
            "SELECT id, balance FROM acc WHERE id = ANY(%s) ORDER BY id FOR UPDATE", ([debit, credit],)
        )
        await p.sync()
        balances = dict(await cur.fetchall())  # type: ignore[arg-type]
        if balances[debit] < 1:
            await conn.execute("ROLLBACK")
            return False
        await conn.execute(
            "UPDATE acc SET balance = balance + v.d FROM unnest(%s::int[], %s::bigint[]) AS v(id, d) "
            "WHERE acc.id = v.id",
            ([debit, credit], [-1, 1]),
        )
        await conn.execute("INSERT INTO xfer (debit, credit, amount) VALUES (%s, %s, 1)", (debit, credit))
        await conn.execute("COMMIT")
    return True


async def conditional(conn: psycopg.AsyncConnection[tuple[object, ...]], debit: int, credit: int) -> bool:
    async with conn.pipeline() as p:
        await conn.execute("BEGIN")
        checks = []
        for account in sorted((debit, credit)):
            if account == debit:
                checks.append(
                    await conn.execute("UPDATE acc SET balance = balance - 1 WHERE id = %s AND balance >= 1", (debit,))
                )
            else:
                await conn.execute("UPDATE acc SET balance = balance + 1 WHERE id = %s", (credit,))
        await p.sync()
        if checks[0].rowcount != 1:
            await conn.execute("ROLLBACK")
            return False
        await conn.execute("INSERT INTO xfer (debit, credit, amount) VALUES (%s, %s, 1)", (debit, credit))
        await conn.execute("COMMIT")
    return True


async def conditional_cte(conn: psycopg.AsyncConnection[tuple[object, ...]], debit: int, credit: int) -> bool:
    cur = await conn.execute(
        """WITH d AS (UPDATE acc SET balance = balance - 1 WHERE id = %(d)s AND balance >= 1 RETURNING id),
                c AS (UPDATE acc SET balance = balance + 1 WHERE id = %(c)s AND EXISTS (SELECT FROM d) RETURNING id)
           INSERT INTO xfer (debit, credit, amount) SELECT %(d)s, %(c)s, 1 WHERE EXISTS (SELECT FROM c)""",
        {"d": debit, "c": credit},
    )
    return cur.rowcount == 1


BATCH_TRANSFERS = 16


async def for_update_batch(conn: psycopg.AsyncConnection[tuple[object, ...]], debit: int, credit: int) -> bool:
    """What the ledger's micro-batcher does: BATCH_TRANSFERS transfers under one lock round trip."""
    rng = random.Random(debit * 7919 + credit)
    pairs = [(debit, credit)] + [tuple(rng.sample(range(1, ACCOUNTS[0] + 1), 2)) for _ in range(BATCH_TRANSFERS - 1)]
    ids = sorted({a for pair in pairs for a in pair})
    async with conn.pipeline() as p:
        await conn.execute("BEGIN")
        cur = await conn.execute("SELECT id, balance FROM acc WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
        await p.sync()
        balances: dict[int, int] = dict(await cur.fetchall())  # type: ignore[arg-type]
        moved = []
        for d, c in pairs:
            if balances[d] >= 1:
                balances[d] -= 1
                balances[c] += 1
                moved.append((d, c))
        await conn.execute(
            "UPDATE acc SET balance = v.b FROM unnest(%s::int[], %s::bigint[]) AS v(id, b) WHERE acc.id = v.id",
            (list(balances), list(balances.values())),
        )
        await conn.execute(
            "INSERT INTO xfer (debit, credit, amount) SELECT d, c, 1 FROM unnest(%s::int[], %s::int[]) AS v(d, c)",
            ([d for d, _ in moved], [c for _, c in moved]),
        )
        await conn.execute("COMMIT")
    return bool(moved)


ACCOUNTS = [10_000]  # the account count of the running measurement (for_update_batch draws from it)
STRATEGIES: dict[str, Strategy] = {
    "for_update": for_update,
    "conditional": conditional,
    "conditional_cte": conditional_cte,
    "for_update_batch16": for_update_batch,
}


async def measure(
    url: str, strategy: Strategy, *, clients: int, accounts: int, seconds: float
) -> tuple[float, int, float]:
    """(transfers per second, deadlocks retried, p99 ms)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as setup:
        await setup.execute("TRUNCATE acc, xfer")
        await setup.execute("INSERT INTO acc SELECT g, 1000000 FROM generate_series(1, %s) g", (accounts,))
    done = 0
    deadlocks = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(number: int) -> None:
        nonlocal done, deadlocks
        rng = random.Random(number)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while time.perf_counter() < deadline:
                debit, credit = rng.sample(range(1, accounts + 1), 2)
                started = time.perf_counter()
                try:
                    if await strategy(conn, debit, credit):
                        done += BATCH_TRANSFERS if strategy is for_update_batch else 1
                        latencies.append(time.perf_counter() - started)
                except psycopg.errors.DeadlockDetected:
                    deadlocks += 1
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        await conn.execute("ROLLBACK")

    await asyncio.gather(*(client(n) for n in range(clients)))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0
    return done / seconds, deadlocks, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per configuration (noise)")
    args = parser.parse_args()
    with bench.postgres() as admin, bench.scratch_database(admin, "feint_locks") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA)
        for accounts in (10_000, 20):
            ACCOUNTS[0] = accounts
            for clients in (16, 64):
                for name, strategy in STRATEGIES.items():
                    rates, deadlocks, p99s = [], 0, []
                    for _ in range(args.rounds):
                        rate, dead, p99 = asyncio.run(
                            measure(url, strategy, clients=clients, accounts=accounts, seconds=args.seconds)
                        )
                        rates.append(rate)
                        deadlocks += dead
                        p99s.append(p99)
                    print(
                        f"{accounts:>6} accounts {clients:>3} clients {name:<16} {max(rates):>8,.0f} transfers/s "
                        f"(rounds {', '.join(f'{r:,.0f}' for r in rates)}) p99 {min(p99s):.1f} ms, "
                        f"{deadlocks} deadlocks",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
