"""Point-in-time recovery with pgBackRest on a plain server: restore to a time between two writes.

A throwaway PostgreSQL 15 cluster of our own (initdb, a random port, a temporary folder, run as
the ``postgres`` user when we are root: PostgreSQL refuses to run as root) archives its WAL with
pgBackRest; after a full backup we write A, note the time, write B, then restore to that time:
A is there and B is not. The same steps are the runbook in docs/operations.md.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import free_port, require_or_skip
from tests.external.conftest import debian_tool

pytestmark = pytest.mark.external

PG_BIN = Path("/usr/lib/postgresql/15/bin")
STANZA = "drill"
COMMAND_SECONDS_MAX = 180
RECOVERY_SECONDS_MAX = 60


@dataclass
class Cluster:
    folder: Path
    port: int
    user: str | None  # run commands as this user (we are root), or as ourselves

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def config(self) -> Path:
        return self.folder / "pgbackrest.conf"

    def run(self, *args: str) -> str:
        command = ["runuser", "-u", self.user, "--", *args] if self.user else list(args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_SECONDS_MAX, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout

    def pg_ctl(self, action: str) -> None:
        self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", action)

    def backrest(self, *args: str) -> str:
        return self.run("pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args)

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.folder), port=self.port, user="postgres", dbname="postgres", autocommit=True
        )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """initdb + pgBackRest configuration; the server is stopped and the folder removed at the end."""
    debian_tool("pgbackrest", "pgbackrest")
    if not (PG_BIN / "initdb").exists():
        require_or_skip("initdb", f"{PG_BIN}/initdb is missing (postgresql-15)", env="FEINT_REQUIRE_EXTERNAL")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            require_or_skip("postgres user", "no postgres user to run PostgreSQL as", env="FEINT_REQUIRE_EXTERNAL")
    folder = Path(tempfile.mkdtemp(prefix="feint-pitr-"))
    if user:
        shutil.chown(folder, user=user, group=user)
    cluster = Cluster(folder=folder, port=free_port(), user=user)
    cluster.run(str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    archive = f"pgbackrest --config={cluster.config} --stanza={STANZA} archive-push %p"
    settings = {
        "port": str(cluster.port),
        "listen_addresses": "''",
        "unix_socket_directories": f"'{folder}'",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"'{archive}'",
        "max_wal_senders": "3",
    }
    with open(cluster.data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    config = (
        f"[global]\nrepo1-path={folder}/repo\nlog-path={folder}/log\nlock-path={folder}/lock\n"
        f"spool-path={folder}/spool\nstart-fast=y\nlog-level-console=warn\nrepo1-retention-full=2\n\n"
        f"[{STANZA}]\npg1-path={cluster.data}\npg1-port={cluster.port}\npg1-socket-path={folder}\n"
    )
    cluster.config.write_text(config)
    if user:
        for path in (cluster.config, cluster.data / "postgresql.conf"):
            shutil.chown(path, user=user, group=user)
    try:
        cluster.pg_ctl("start")
        yield cluster
    finally:
        subprocess.run(
            [*(["runuser", "-u", user, "--"] if user else []), str(PG_BIN / "pg_ctl"), "-D", str(cluster.data),
             "-m", "immediate", "stop"],
            capture_output=True, timeout=COMMAND_SECONDS_MAX, check=False,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def test_restore_to_a_time_between_two_writes(cluster: Cluster) -> None:
    """Full backup, write A, note the time, write B; restore to the time: A present, B absent."""
    cluster.backrest("stanza-create")
    cluster.backrest("check")
    cluster.backrest("--type=full", "backup")
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE drill (name text PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        conn.execute("INSERT INTO drill (name) VALUES ('A')")
        time.sleep(1.1)  # the recovery target must fall strictly between the two commits
        row = conn.execute("SELECT clock_timestamp()::text").fetchone()
        assert row is not None
        target = str(row[0])
        time.sleep(1.1)
        conn.execute("INSERT INTO drill (name) VALUES ('B')")
        conn.execute("SELECT pg_switch_wal()")  # close the segment so that it is archived now
    cluster.backrest("check")  # waits until the current WAL segment is in the repository
    cluster.pg_ctl("stop")
    cluster.backrest("--delta", "--type=time", f"--target={target}", "--target-action=promote", "restore")
    cluster.pg_ctl("start")
    deadline = time.monotonic() + RECOVERY_SECONDS_MAX
    with cluster.connect() as conn:
        while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
            assert time.monotonic() < deadline, "recovery did not finish"
            time.sleep(0.2)
        names = [r[0] for r in conn.execute("SELECT name FROM drill ORDER BY name").fetchall()]
    assert names == ["A"]
