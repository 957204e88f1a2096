"""psycopg 3 against asyncpg for the ledger's posting call (``credit_post_transfers``, migration 0008).

Both drivers make the same calls on a database of their own: micro-batches of ``--batch``
transfers between random accounts, ``--concurrency`` connections at once, for ``--seconds`` each,
alternated twice (psycopg, asyncpg, psycopg, asyncpg) so that the shared machine's load drifts
over both alike. Printed per driver: calls/s, transfers/s, and the client's CPU per call (this
process's user + system time ÷ calls: what the service pays to encode the arrays and decode the
rows; the server's time is the same for both). psycopg runs as the service does: binary
parameters and results, the statement prepared (``prepare=True``); one statement per call, so
pipeline mode has nothing to overlap within a call. asyncpg: a prepared statement, binary by
protocol. asyncpg is not a dependency of Feint: install it next to the bench
(``pip install --target /tmp/apg-site asyncpg`` and ``PYTHONPATH=/tmp/apg-site``).

Usage: ``FEINT_DATABASE_URL=postgresql://... python bench/credits/drivers.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from feint.platform import migrations

TYPES = (
    "bigint[] uuid[] uuid[] uuid[] uuid[] bigint[] bytea[] boolean[] integer[] integer[] uuid[] text[] bytea[] "
    "text boolean integer integer"
)
CALL = "SELECT * FROM credit_post_transfers({})"
SETUP_ACCOUNTS = """
INSERT INTO tenants (id, name) VALUES (%(t)s, 'bench');
INSERT INTO credit_audit_heads (tenant_id) VALUES (%(t)s);
INSERT INTO credit_accounts (tenant_id, id, kind, code, no_overdraft, metadata, posted, version, created_at)
SELECT %(t)s, gen_random_uuid(), 'customer', 'api-calls', true, '{}', 1000000000000, 1, now()
FROM generate_series(1, %(n)s);
INSERT INTO credit_accounts (tenant_id, id, kind, code, no_overdraft, metadata, posted, version, created_at)
VALUES (%(t)s, gen_random_uuid(), 'issuance', 'api-calls', false, '{}', -1000000000000 * %(n)s, 1, now());
"""


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def arguments(tenant: uuid.UUID, ids: list[uuid.UUID], rng: random.Random, size: int) -> list[Any]:
    pairs = [rng.sample(ids, 2) for _ in range(size)]
    return [
        [],
        [tenant] * size,
        [uuid.uuid4() for _ in range(size)],
        [d for d, _ in pairs],
        [c for _, c in pairs],
        [1] * size,
        [b"{}"] * size,
        [False] * size,
        [None] * size,
        list(range(1, size + 1)),
        [tenant] * size,
        [None] * size,
        [None] * size,
        None,
        False,
        86_400,
        64,
    ]


async def measure(
    name: str, make: Callable[[], Awaitable[Callable[[list[Any]], Awaitable[int]]]], args: argparse.Namespace, data: Any
) -> dict[str, float]:
    tenant, ids = data
    calls = await asyncio.gather(*(make() for _ in range(args.concurrency)))
    done = 0
    stop = time.perf_counter() + args.seconds

    async def worker(call: Callable[[list[Any]], Awaitable[int]], seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            rows = await call(arguments(tenant, ids, rng, args.batch))
            if rows < args.batch:
                raise RuntimeError(f"{name}: {rows} rows")
            done += 1

    cpu0, wall0 = cpu(), time.perf_counter()
    await asyncio.gather(*(worker(c, n) for n, c in enumerate(calls)))
    wall, used = time.perf_counter() - wall0, cpu() - cpu0
    return {"calls": done / wall, "transfers": done * args.batch / wall, "cpu_us": used / max(done, 1) * 1e6}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=16, help="transfers per call (a micro-batch)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=4_000)
    args = parser.parse_args()
    base = os.environ.get("FEINT_DATABASE_URL")
    if not base:
        sys.exit("set FEINT_DATABASE_URL")
    name = "feint_bench_drivers"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urllib.parse.urlsplit(base)
    url = urllib.parse.urlunsplit(parts._replace(path="/" + name))  # a URL: asyncpg takes no key=value string
    migrations.migrate(url)
    tenant = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP_ACCOUNTS.replace("%(t)s", f"'{tenant}'").replace("%(n)s", str(args.accounts)))
        ids = [r[0] for r in conn.execute("SELECT id FROM credit_accounts WHERE kind = 'customer'").fetchall()]
    types = TYPES.split()
    call_psycopg = CALL.format(", ".join(f"%b::{t}" for t in types))
    call_asyncpg = CALL.format(", ".join(f"${n}::{t}" for n, t in enumerate(types, start=1)))

    async def psycopg_call() -> Callable[[list[Any]], Awaitable[int]]:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        cur = conn.cursor(row_factory=tuple_row)

        async def call(params: list[Any]) -> int:
            await cur.execute(call_psycopg, params, binary=True, prepare=True)
            return len(await cur.fetchall())

        return call

    async def asyncpg_call() -> Callable[[list[Any]], Awaitable[int]]:
        import asyncpg

        conn = await asyncpg.connect(url)
        statement = await conn.prepare(call_asyncpg)

        async def call(params: list[Any]) -> int:
            return len(await statement.fetch(*params))

        return call

    drivers: list[tuple[str, Callable[[], Awaitable[Callable[[list[Any]], Awaitable[int]]]]]] = [
        ("psycopg", psycopg_call)
    ]
    try:
        import asyncpg  # noqa: F401

        drivers.append(("asyncpg", asyncpg_call))
    except ImportError:
        print("asyncpg is not installed: only psycopg is measured (see the module docstring)")
    print(f"load average {os.getloadavg()[0]:.1f}; {args.batch} transfers per call, {args.concurrency} connections")
    for _ in range(2):
        for label, make in drivers:
            figures = await measure(label, make, args, (tenant, ids))
            print(
                f"{label:8s} {figures['calls']:8,.0f} calls/s {figures['transfers']:9,.0f} transfers/s "
                f"client CPU {figures['cpu_us']:6,.0f} us per call ({figures['cpu_us'] / args.batch:5.1f} per transfer)"
            )
    print(f"load average {os.getloadavg()[0]:.1f}")
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    asyncio.run(main())
