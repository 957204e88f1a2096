"""Where one batch's time goes: each stage of ``POST /v1/batches`` timed alone, in-process.

Stages, each with the client's CPU (this process) and the PostgreSQL backend's CPU (its
``/proc/<pid>/stat``, one pooled connection): decoding and validating the body as FastAPI does
(``json.loads`` + ``BatchIn``) and as the hot route does (orjson + ``plain_transfer_batch``), the
domain operations, the engine's call with operations as objects and as columns (``posting.run``:
arrays built, sent, the function, rows read back; every call must take the set-based path:
``feint.credits_set_based = require``), and then the statements inside the function
(``auto_explain`` of nested statements, sent to this client as LOG messages): what is left of the
function's time is PL/pgSQL itself (the per-transfer loop, assignments).

    FEINT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
    flock /work/wt/bench.lock .venv/bin/python bench/credits/batchprof.py --batches 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (this folder, added above)

from feint.credits import posting, schemas  # noqa: E402
from feint.credits.config import CreditsSettings  # noqa: E402
from feint.credits.engine import Job  # noqa: E402
from feint.credits.models import BatchMode, CreateAccount, Operation, TransferColumns  # noqa: E402
from feint.credits.service import Credits, _render_batch  # noqa: E402
from feint.platform import migrations  # noqa: E402
from feint.platform.runtime import build  # noqa: E402
from feint.settings import Settings  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Stages:
    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)

    @contextmanager
    def stage(self, name: str, backend: int | None = None) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        server = backend_cpu(backend) if backend else 0.0
        yield
        server = backend_cpu(backend) - server if backend else 0.0
        self.rows[name].append((time.perf_counter() - wall, time.process_time() - cpu, server))

    def print(self, per: int) -> None:
        """Means over the calls (the server's CPU is counted in clock ticks: a mean is exact, a median is not)."""
        print(f"{'stage':<52} {'wall ms':>9} {'client CPU ms':>14} {'server CPU ms':>14} {'µs/transfer':>12}")
        for name, rows in self.rows.items():
            wall, cpu, server = (sum(r[i] for r in rows) / len(rows) * 1000 for i in range(3))
            print(f"{name:<52} {wall:>9.2f} {cpu:>14.2f} {server:>14.2f} {(cpu + server) * 1000 / per:>12.1f}")


def batch_body(rng: random.Random, ids: list[str], size: int) -> bytes:
    ops = []
    for _ in range(size):
        debit, credit = rng.sample(ids, 2)
        ops.append({"op": "transfer", "debit_account_id": debit, "credit_account_id": credit, "amount": 1})
    return orjson.dumps({"mode": "independent", "operations": ops})


@contextmanager
def database(admin_url: str, *, keep: bool) -> Iterator[str]:
    if not keep:
        with bench.scratch_database(admin_url, "feint_prof") as url:
            yield url
        return
    name = f"feint_prof_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    print(f"database kept: {name}")
    yield bench.with_database(admin_url, name)


async def main(args: argparse.Namespace) -> None:
    with bench.postgres() as admin_url, database(admin_url, keep=args.keep) as url:
        migrations.migrate(url)
        tenant_name = f"prof-{uuid.uuid4().hex[:6]}"
        bench.api_key(url, tenant=tenant_name, scope="write")
        with psycopg.connect(url) as conn:
            tenant_id = conn.execute("SELECT id FROM tenants WHERE name = %s", (tenant_name,)).fetchone()[0]  # type: ignore[index]
        settings = Settings(env="test", master_key=bench.MASTER_KEY, redis_url=None, db_pool_size_max=1)
        platform = build(settings, database_url=url)
        await platform.open()
        service = Credits(platform, CreditsSettings(sweeper_interval_seconds=0, cache="off"))
        accounts = [
            CreateAccount(tenant_id=tenant_id, id=uuid.uuid4(), code="api-calls", metadata=b"{}")
            for _ in range(args.accounts)
        ]
        await service.run_quietly(accounts)
        ids = [str(a.id) for a in accounts]
        grants = schemas.BatchIn.model_validate(
            {"mode": "atomic", "operations": [{"op": "grant", "account_id": a, "amount": 10**12} for a in ids]}
        )
        await service.batch(grants.to_domain(tenant_id), tenant_id=tenant_id, mode=BatchMode.ATOMIC, idempotency=None)
        async with platform.db.connection() as conn:
            backend = (await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"]  # type: ignore[index]
        rng = random.Random(7)
        stages = Stages()
        async with platform.db.connection() as conn:  # the pool's one connection: the set-based path or an error
            await conn.execute("SET feint.credits_set_based = require")
        for _ in range(args.batches):
            body = batch_body(rng, ids, args.size)
            with stages.stage("FastAPI's decoding: json.loads + BatchIn"):
                model = schemas.BatchIn.model_validate(json.loads(body))
            with stages.stage("domain operations (to_domain)"):
                ops = model.to_domain(tenant_id)
            job = batch_job(tenant_id, ops, model.mode)
            with stages.stage("engine call, operations as objects", backend):
                committed, _ = await posting.run(platform.db, [job], retention_seconds=86_400)
            assert committed.outcomes[0].error is None
            body = batch_body(rng, ids, args.size)
            with stages.stage("hot path's decoding: orjson + plain_transfer_batch"):
                plain = schemas.plain_transfer_batch(orjson.loads(body))
            assert plain is not None
            columns = TransferColumns(tenant_id, plain.debits, plain.credits, plain.amounts, plain.metadata)
            job = batch_job(tenant_id, columns, plain.mode)
            with stages.stage("engine call, operations as columns", backend):
                committed, _ = await posting.run(platform.db, [job], retention_seconds=86_400)
            assert committed.outcomes[0].error is None
            if args.loop:  # the same call deciding one transfer at a time (migration 0008's loop)
                async with platform.db.connection() as conn:
                    await conn.execute("SET feint.credits_set_based = off")
                with stages.stage("engine call, columns, loop (set-based off)", backend):
                    committed, _ = await posting.run(platform.db, [job], retention_seconds=86_400)
                async with platform.db.connection() as conn:
                    await conn.execute("SET feint.credits_set_based = require")
        if args.explain:
            await explain(url, tenant_id, ids, rng, args.size, stages.print)
        stages.print(args.size)
        await platform.close()


def batch_job(tenant_id: Any, operations: Sequence[Operation], mode: BatchMode) -> Job:
    return Job(
        tenant_id=tenant_id, operations=operations, mode=mode, render=_render_batch(mode, everything=False), batch=True
    )


async def explain(
    url: str, tenant_id: Any, ids: list[str], rng: random.Random, size: int, _: Callable[..., Any]
) -> None:
    """auto_explain of one call: every statement inside the function with its time."""
    from feint.credits.store import transfers

    body = orjson.loads(batch_body(rng, ids, size))
    model = schemas.BatchIn.model_validate(body)
    ops = model.to_domain(tenant_id)
    messages: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: messages.append(d.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_analyze = on",
            "SET auto_explain.log_timing = off",
            "SET client_min_messages = log",
        ):
            await conn.execute(setting)
        started = time.perf_counter()
        await transfers.post_transfers(
            conn,
            locks=[],
            ops=ops,
            previous=[None] * len(ops),
            job_of=[1] * len(ops),
            jobs=[transfers.JobKey(tenant_id, None, None)],
            mode="independent",
            everything=False,
            retention_seconds=86_400,
            accounts_max=64,
        )
        total = (time.perf_counter() - started) * 1000
    print(f"auto_explain of one call ({total:.0f} ms wall with logging):")
    nested = 0.0
    for message in messages:
        found = re.search(r"duration: ([0-9.]+) ms\s+plan:\s*Query Text: (.*?)\n", message, re.S)
        if not found:
            continue
        ms, text = float(found.group(1)), " ".join(found.group(2).split())[:110]
        if "credit_post_transfers(" in text:
            print(f"  {ms:8.1f} ms  the call (all)")
            continue
        if ms >= 0.5:
            print(f"  {ms:8.1f} ms  {text}")
        nested += ms
    print(f"  {nested:8.1f} ms  statements inside, in all (the rest is PL/pgSQL itself)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--size", type=int, default=8_190)
    parser.add_argument("--accounts", type=int, default=4_000)
    parser.add_argument("--explain", action="store_true", help="auto_explain of one more call")
    parser.add_argument("--loop", action="store_true", help="also time each call with the set-based path off")
    parser.add_argument("--keep", action="store_true", help="keep the database (to experiment on; drop it after)")
    asyncio.run(main(parser.parse_args()))
