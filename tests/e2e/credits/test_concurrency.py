"""Three `feint serve credits` processes on one database, 64 concurrent clients, then the invariants."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import running_service, service_env

pytestmark = pytest.mark.e2e
PROCESSES = 3
CLIENTS = 64
OPERATIONS_PER_CLIENT = 25
ACCOUNTS_PER_TENANT = 8
GRANT = 500
_PEAK = re.compile(r'^feint_http_requests_in_flight_peak\{service="credits"\} ([0-9.e+]+)$', re.M)


class Recorder:
    def __init__(self) -> None:
        self.first: dict[str, tuple[int, bytes]] = {}
        self.mismatches: list[str] = []
        self.statuses: dict[int, int] = {}

    def keyed(self, key: str, response: httpx.Response) -> None:
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        seen = self.first.setdefault(key, (response.status_code, response.content))
        if seen != (response.status_code, response.content) and response.status_code != 409:
            self.mismatches.append(key)


async def client_loop(
    number: int, clients: list[httpx.AsyncClient], tenants: list[dict[str, Any]], recorder: Recorder
) -> None:
    rng = random.Random(number)
    holds: list[tuple[dict[str, Any], str]] = []
    for step in range(OPERATIONS_PER_CLIENT):
        tenant = rng.choice(tenants)
        headers = tenant["write"]
        debit, credit = rng.sample(tenant["accounts"], 2)
        key = f"c{number}-{step}"
        choice = rng.random()
        if choice < 0.55:
            body = {
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount": rng.randint(1, 60),
                "metadata": {"op": key},
            }
            sends = 2 if rng.random() < 0.3 else 1  # a retry with the same key, sometimes concurrently
            requests = [
                rng.choice(clients).post("/v1/transfers", json=body, headers={**headers, "idempotency-key": key})
                for _ in range(sends)
            ]
            if rng.random() < 0.5:
                answers = await asyncio.gather(*requests)
            else:
                answers = [await r for r in requests]
            for answer in answers:
                recorder.keyed(key, answer)
        elif choice < 0.8:
            body = {
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount": rng.randint(1, 40),
                "timeout_seconds": rng.choice([1, 600]),
                "metadata": {"op": key},
            }
            answer = await rng.choice(clients).post("/v1/holds", json=body, headers={**headers, "idempotency-key": key})
            recorder.keyed(key, answer)
            if answer.status_code == 201:
                holds.append((tenant, answer.json()["id"]))
        elif holds:
            tenant, hold_id = holds.pop(rng.randrange(len(holds)))
            action = rng.choice(["capture", "void"])
            body = {"amount": rng.randint(1, 5)} if action == "capture" and rng.random() < 0.5 else {}
            sends = 2 if rng.random() < 0.3 else 1
            for _ in range(sends):
                answer = await rng.choice(clients).post(
                    f"/v1/holds/{hold_id}/{action}", json=body, headers={**tenant["write"], "idempotency-key": key}
                )
                recorder.keyed(key, answer)


async def settled(url: str) -> None:
    """Wait (bounded) until no hold is pending past its timeout, so the checks below see a still ledger."""
    for _ in range(100):
        with psycopg.connect(url) as conn:
            # every short hold (1 s) must be released; the 600 s ones stay pending
            row = conn.execute(
                "SELECT count(*) FROM credit_holds WHERE state = 'pending' "
                "AND expires_at <= now() + interval '60 seconds'"
            ).fetchone()
        if row == (0,):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("expired holds were not released within 20 s")


def peak(metrics: str) -> float:
    found = _PEAK.search(metrics)
    return float(found.group(1)) if found else 0.0


async def test_three_processes_64_clients_keep_every_invariant(
    clean_db: str, api_key: Callable[..., str], redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Random transfers, holds and retried keys from 64 clients on 3 processes: each tenant sums to
    zero, no no-overdraft account goes below zero, nothing is applied twice, the audit chain verifies,
    the cache equals the database, and at least 32 requests were in flight at once."""
    operator = {"authorization": f"Bearer {api_key(scope='operator')}"}
    tenants = [
        {"name": name, "write": {"authorization": f"Bearer {api_key(tenant=name, scope='write')}"}}
        for name in ("acme", "globex")
    ]
    env = service_env(
        clean_db,
        tmp_path,
        FEINT_REDIS_URL=redis_url,
        FEINT_REDIS_KEY_PREFIX=redis_prefix + "e2e:",
        FEINT_RATE_LIMIT_PER_SECOND="1000000",
        FEINT_RATE_LIMIT_BURST="1000000",
        FEINT_DB_POOL_SIZE_MAX="8",
        FEINT_CREDITS_SWEEPER_INTERVAL_SECONDS="0.5",
    )
    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(running_service("credits", env)) for _ in range(PROCESSES)]
        limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS * 2)
        async with contextlib.AsyncExitStack() as clients_stack:
            clients = [
                await clients_stack.enter_async_context(httpx.AsyncClient(base_url=b, limits=limits, timeout=30.0))
                for b in bases
            ]
            for tenant in tenants:
                tenant["accounts"] = []
                for _ in range(ACCOUNTS_PER_TENANT):
                    made = await clients[0].post("/v1/accounts", json={"code": "api-calls"}, headers=tenant["write"])
                    tenant["accounts"].append(made.json()["id"])
                    granted = await clients[1].post(
                        "/v1/grants",
                        json={"account_id": made.json()["id"], "amount": GRANT},
                        headers={**operator, "feint-tenant": tenant["name"]},
                    )
                    assert granted.status_code == 201
            recorder = Recorder()
            await asyncio.gather(*(client_loop(n, clients, tenants, recorder) for n in range(CLIENTS)))
            assert recorder.mismatches == []
            assert set(recorder.statuses) <= {200, 201, 409}, recorder.statuses
            assert recorder.statuses.get(201, 0) > CLIENTS * OPERATIONS_PER_CLIENT // 4
            peaks = [peak((await c.get("/metrics")).text) for c in clients]
            assert sum(peaks) >= 32, peaks
            await settled(clean_db)  # holds of 1 s expire and the sweepers (every 0.5 s) release them
            verified = (await clients[2].get("/v1/audit/verify", headers=operator)).json()
            assert verified["ok"], verified
            assert verified["tenants"] == 2
            with psycopg.connect(clean_db) as conn:
                sums = conn.execute(
                    "SELECT t.name, sum(a.posted) FROM credit_accounts a JOIN tenants t "
                    "ON t.id = a.tenant_id GROUP BY 1"
                ).fetchall()
                negative = conn.execute(
                    "SELECT count(*) FROM credit_accounts WHERE no_overdraft AND (posted < 0 OR posted - pending < 0)"
                ).fetchone()
                twice = conn.execute(
                    "SELECT convert_from(metadata, 'UTF8'), count(*) FROM credit_transfers "
                    "WHERE kind IN ('transfer', 'capture') GROUP BY 1 HAVING count(*) > 1"
                ).fetchall()
                rows = conn.execute("SELECT tenant_id, id, posted, pending FROM credit_accounts").fetchall()
                holds_applied = conn.execute(
                    "SELECT count(*) FROM credit_holds h JOIN credit_transfers t "
                    "ON t.hold_id = h.id GROUP BY h.id HAVING count(*) > 1"
                ).fetchall()
            assert sorted(sums) == [("acme", 0), ("globex", 0)]
            assert negative == (0,)
            assert twice == [] and holds_applied == []
            by_tenant = {t["name"]: t for t in tenants}
            with psycopg.connect(clean_db) as conn:
                names = dict(conn.execute("SELECT id, name FROM tenants").fetchall())
            for tenant_id, account_id, posted, pending in rows:
                headers = by_tenant[names[tenant_id]]["write"]
                for client in clients:  # each process answers from the shared cache (or fills it)
                    body = (await client.get(f"/v1/accounts/{account_id}", headers=headers)).json()
                    assert (body["posted"], body["pending"]) == (posted, pending), (account_id, body)
            hits = 0.0
            for client in clients:
                text = (await client.get("/metrics")).text
                hits += sum(
                    float(m)
                    for m in re.findall(r'^feint_credits_cache_lookups_total\{result="hit"\} (\S+)$', text, re.M)
                )
            assert hits > 0
