"""`feint serve NAME --workers N`: N processes on one port, each serving, all stopped by one SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx
import psutil
import pytest

from tests.conftest import free_port, service_env

pytestmark = pytest.mark.e2e
START_SECONDS_MAX = 60
# /metrics requests this worker answered before (its own registry): counts repeat across workers.
_SEEN = re.compile(r'^feint_http_requests_total\{[^}]*route="/metrics"[^}]*\} ([0-9.e+]+)$', re.M)


def _start_two_workers(
    clean_db: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], int, IO[bytes]]:
    """`feint serve credits --workers 2` on a free port, its output in a named log file."""
    env = service_env(clean_db, tmp_path, FEINT_REDIS_URL=redis_url, FEINT_REDIS_KEY_PREFIX=redis_prefix)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="feint-workers-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "feint", "serve", "credits", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, port, log


def test_workers_share_one_port_and_stop_on_sigterm(
    clean_db: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Two workers listen on the port, fresh connections reach both, SIGTERM stops all with exit 0."""
    proc, port, log = _start_two_workers(clean_db, redis_url, redis_prefix, tmp_path)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + START_SECONDS_MAX
        while True:
            workers = parent.children()
            listening = [
                w for w in workers if any(c.laddr.port == port and c.status == "LISTEN" for c in w.net_connections())
            ]
            if len(listening) == 2:
                break
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            assert time.monotonic() < deadline, Path(log.name).read_text()[-2000:]
            time.sleep(0.2)
        assert not any(c.status == "LISTEN" for c in parent.net_connections())  # the supervisor takes none
        seen = []
        for _ in range(40):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:  # a new connection each time
                response = client.get("/metrics")
            assert response.status_code == 200
            found = _SEEN.search(response.text)
            seen.append(float(found.group(1)) if found else 0.0)
        assert len(set(seen)) < len(seen)  # one process would count 0, 1, 2, …: both workers answered
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_stop_when_their_supervisor_is_killed(
    clean_db: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """kill -9 of the supervisor: its workers notice, drain and exit instead of serving on unsupervised."""
    proc, port, log = _start_two_workers(clean_db, redis_url, redis_prefix, tmp_path)
    workers: list[psutil.Process] = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + START_SECONDS_MAX
        while not (len(workers) == 2 and _healthy(port)):
            workers = parent.children()
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()[-2000:]
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    gone, alive = psutil.wait_procs(workers, timeout=START_SECONDS_MAX)
    assert not alive, Path(log.name).read_text()[-2000:]
    assert len(gone) == 2 and "supervisor_gone" in Path(log.name).read_text()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_workers_without_redis_refused(clean_db: str, tmp_path: Path) -> None:
    """More than one worker without Redis exits 2 naming FEINT_REDIS_URL (limits would be per process)."""
    env = service_env(clean_db, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "feint", "serve", "credits", "--port", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "FEINT_REDIS_URL" in result.stderr


def test_worker_whose_supervisor_died_before_it_started_stops(
    clean_db: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """A worker told a supervisor pid that is not its parent (the supervisor died while it was
    starting, so it was reparented) stops instead of serving unsupervised: the race CI hit when
    the supervisor was killed before the second worker had finished starting."""
    env = service_env(clean_db, tmp_path, FEINT_REDIS_URL=redis_url, FEINT_REDIS_KEY_PREFIX=redis_prefix)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs: the worker's parent is this test, never it
    port = free_port()
    command = [sys.executable, "-m", "feint", "serve", "credits", "--port", str(port), "--workers", "1"]
    result = subprocess.run(
        [*command, "--supervisor", str(gone.pid)],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_SECONDS_MAX,
        check=False,
    )
    assert result.returncode in (0, -signal.SIGTERM), result.stderr[-2000:]
    assert "supervisor_gone" in result.stdout + result.stderr
    assert not _healthy(port)
