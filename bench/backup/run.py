"""Backup benchmark: create and verify throughput (MB/s of database) and peak RSS, to a local S3 server.

Run by `make bench` (or `python bench/backup/run.py --gigabytes 5`). Uses ``FEINT_DATABASE_URL``
(a superuser URL: it creates and drops a scratch database) or the embedded PostgreSQL, and a
SeaweedFS started from the wheel on loopback.

The data: a fresh database, migrated (the credits ledger's tables, with a small real ledger so
that verify runs the audit chain), plus a bulk table shaped like ledger entries (uuid ids,
tenant, two accounts, amount, timestamp, a 32-hex memo) filled server-side by one
``INSERT … SELECT … FROM generate_series`` until ``pg_database_size`` reaches the target. The
bulk table is UNLOGGED so that filling it writes no WAL (minutes saved; pg_dump dumps its data
like any other table's).

Each phase runs in a child process of its own, which reports its own peak RSS
(``getrusage(RUSAGE_SELF)``; pg_dump/pg_restore are reported apart as ``RUSAGE_CHILDREN``).
Targets (2 cores): create >= 100 MB/s of database, peak RSS <= 256 MiB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from feint.platform import migrations  # noqa: E402

ROWS_PER_STEP = 2_000_000
TARGET_CREATE_MB_S = 100.0
TARGET_RSS_MIB = 256.0
BENCH_MASTER_KEY = base64.b64encode(b"\x42" * 32).decode()


def _child(phase: str, args: argparse.Namespace) -> None:
    """One measured phase (create or verify), in this process; prints one JSON line."""
    from feint.backup import keys as backup_keys
    from feint.backup import pipeline, verify
    from feint.backup.storage import S3Storage
    from feint.platform.crypto import LocalMasterKey

    storage = S3Storage(bucket="feint-bench", prefix=args.prefix, endpoint_url=args.endpoint)
    keyset = backup_keys.load(Path(args.keyset), LocalMasterKey(base64.b64decode(BENCH_MASTER_KEY)))
    started = time.monotonic()
    result: dict[str, object]
    if phase == "create":
        manifest = pipeline.create_backup(database_url=args.url, storage=storage, keys=keyset)
        result = {"id": manifest.id, "database_bytes": manifest.database_bytes, "dump_bytes": manifest.dump_bytes,
                  "stored_bytes": manifest.stored_bytes, "part_bytes": manifest.part_bytes}  # fmt: skip
    else:
        manifest = pipeline.catalog(storage).find("latest")
        report = verify.verify_backup(storage=storage, manifest=manifest, keys=keyset, server_url=args.url)
        result = {"ok": report.ok, "problems": report.problems[:5], "rows": report.rows,
                  "database_bytes": manifest.database_bytes}  # fmt: skip
    result["seconds"] = time.monotonic() - started
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["children_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def _fill(url: str, gigabytes: float) -> tuple[int, float]:
    target = int(gigabytes * 1e9)
    began = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """CREATE UNLOGGED TABLE bench_ledger_entries (
                 id uuid PRIMARY KEY, tenant_id uuid NOT NULL, debit_account uuid NOT NULL,
                 credit_account uuid NOT NULL, amount bigint NOT NULL, created_at timestamptz NOT NULL,
                 memo text NOT NULL)"""
        )
        start = 0
        while True:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
            print(f"  filled {size / 1e9:.2f} GB", file=sys.stderr, flush=True)
            if size >= target:
                return int(size), time.monotonic() - began
            conn.execute(
                """INSERT INTO bench_ledger_entries
                   SELECT md5(i::text)::uuid, md5((i %% 50)::text)::uuid, md5((i %% 100000)::text)::uuid,
                          md5((i %% 99991 + 7)::text)::uuid, (i * 7919) %% 1000000,
                          timestamptz '2026-01-01' + i * interval '1 millisecond', md5((i * 31)::text)
                   FROM generate_series(%s::bigint, %s::bigint) AS i""",
                (start, start + ROWS_PER_STEP - 1),
            )
            start += ROWS_PER_STEP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=5.0, help="Database size to generate (GB, 10^9).")
    parser.add_argument("--phase", choices=["create", "verify"], help=argparse.SUPPRESS)
    for hidden in ("--url", "--endpoint", "--prefix", "--keyset"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        _child(args.phase, args)
        return

    from feint.backup import keys as backup_keys
    from feint.backup.drill import LedgerWriter
    from feint.backup.seaweed import local_s3
    from feint.backup.storage import S3Storage
    from feint.backup.verify import MAINTENANCE_DATABASE, with_database
    from feint.platform.crypto import LocalMasterKey
    from feint.platform.serve import resolve_database
    from feint.settings import Settings

    os.environ["FEINT_MASTER_KEY"] = BENCH_MASTER_KEY
    settings = Settings(env="test", master_key=BENCH_MASTER_KEY, log_level="warning", log_format="json")
    server = resolve_database(settings)
    name = f"feint_bench_backup_{secrets.token_hex(3)}"
    admin = with_database(server.migration_url, MAINTENANCE_DATABASE)
    url = with_database(server.migration_url, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        migrations.migrate(url)
        writer = LedgerWriter(settings.model_copy(update={"database_url": url}), url)
        writer.open_accounts()
        writer.transfer(200)
        print(f"generating {args.gigabytes} GB (INSERT … generate_series, UNLOGGED bulk table) …", file=sys.stderr)
        size, fill_seconds = _fill(url, args.gigabytes)
        print(f"generated {size / 1e9:.2f} GB in {fill_seconds:.0f} s", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="feint-bench-") as folder, local_s3() as s3:
            keyset = Path(folder) / "keyset"
            backup_keys.generate(keyset, LocalMasterKey(base64.b64decode(BENCH_MASTER_KEY)))
            S3Storage(bucket="feint-bench", prefix="b", endpoint_url=s3.endpoint).ensure_bucket()
            results = {}
            for phase in ("create", "verify"):
                load_before = os.getloadavg()[0]
                out = subprocess.run(
                    [sys.executable, __file__, "--phase", phase, "--url", url, "--endpoint", s3.endpoint,
                     "--prefix", "b", "--keyset", str(keyset)],
                    check=True, capture_output=True, text=True, env={**os.environ, "FEINT_LOG_LEVEL": "warning"},
                ).stdout  # fmt: skip
                results[phase] = json.loads(out.strip().splitlines()[-1]) | {"load": load_before}
        create, verify_ = results["create"], results["verify"]
        mb = size / 1e6
        print(f"database: {mb:.0f} MB ({os.cpu_count()} cores; load average at start {create['load']:.2f})")
        print(
            f"create: {create['seconds']:.1f} s = {mb / create['seconds']:.1f} MB/s of database "
            f"(target >= {TARGET_CREATE_MB_S:.0f}); dump {create['dump_bytes'] / 1e6:.0f} MB, "
            f"stored {create['stored_bytes'] / 1e6:.0f} MB, parts of {create['part_bytes'] >> 20} MiB; "
            f"peak RSS {create['rss_mib']:.0f} MiB (target <= {TARGET_RSS_MIB:.0f}), "
            f"pg_dump {create['children_rss_mib']:.0f} MiB"
        )
        print(
            f"verify: {verify_['seconds']:.1f} s = {mb / verify_['seconds']:.1f} MB/s of database "
            f"(download, hash, decrypt, restore, count, audit); ok={verify_['ok']} rows={verify_['rows']}; "
            f"peak RSS {verify_['rss_mib']:.0f} MiB, pg_restore {verify_['children_rss_mib']:.0f} MiB; "
            f"load average at start {verify_['load']:.2f}"
        )
        if not verify_["ok"]:
            print(f"verify problems: {verify_['problems']}")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.stop()


if __name__ == "__main__":
    main()
