"""The shadow service as processes: `feint serve shadow`, `feint rules …`, and jobs across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from feint.shadow.versions import STARTER_FOLDER
from tests.conftest import SERVICE_START_SECONDS_MAX, free_port, running_service, service_env
from tests.integration.shadow import sigma

pytestmark = pytest.mark.e2e

WAIT_SECONDS_MAX = 60.0
TRAFFIC_LINES = 200_000


def feint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feint", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_service_installs_starter_and_serves_production(
    clean_db: str, tmp_path: Path, api_key: Callable[..., str]
) -> None:
    """A tenant's first request installs the shipped starter rules; pollers get 304 until production changes."""
    headers = {"authorization": f"Bearer {api_key(tenant='acme', scope='admin')}"}
    shipped = sorted(p.name for p in STARTER_FOLDER.glob("*.yml"))
    with running_service("shadow", service_env(clean_db, tmp_path)) as base:
        listed = httpx.get(f"{base}/v1/rulesets", headers=headers).json()["items"]
        assert [(r["name"], r["production"]) for r in listed] == [("starter", 1)]
        production = httpx.get(f"{base}/v1/rulesets/starter/production", headers=headers)
        assert production.status_code == 200
        assert sorted(d["name"] for d in production.json()["documents"]) == shipped
        cached = httpx.get(
            f"{base}/v1/rulesets/starter/production", headers={**headers, "if-none-match": production.headers["etag"]}
        )
        assert cached.status_code == 304


def test_rules_cli_and_service_share_the_repository(clean_db: str, tmp_path: Path, api_key: Callable[..., str]) -> None:
    """Versions imported and promoted with `feint rules` are what the service serves, and rollback is audited."""
    headers = {"authorization": f"Bearer {api_key(tenant='acme', scope='read')}"}
    env = service_env(clean_db, tmp_path, FEINT_TENANT="acme", USER="ops")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "sqli.yml").write_text(sigma.SQLI)
    imported = feint("rules", "import", str(rules), "--ruleset", "web", "-m", "first", env=env)
    assert imported.returncode == 0, imported.stderr
    for _ in range(3):
        assert feint("rules", "promote", "web@1", "--reason", "proven", env=env).returncode == 0
    (rules / "sqli.yml").write_text(sigma.SQLI_V2)
    diff = feint("rules", "diff", "web", str(rules), env=env)
    assert diff.returncode == 0 and "union all select" in diff.stdout
    feint("rules", "import", str(rules), "--ruleset", "web", "-m", "second", env=env)
    for _ in range(3):
        feint("rules", "promote", "web@2", env=env)
    rolled = feint("rules", "rollback", "web", "--to", "1", "--reason", "false positives", env=env)
    assert rolled.returncode == 0, rolled.stderr
    with running_service("shadow", env) as base:
        production = httpx.get(f"{base}/v1/rulesets/web/production", headers=headers).json()
        assert production["version"] == 1
        history = httpx.get(f"{base}/v1/rulesets/web/history?limit=1", headers=headers).json()["items"]
        assert history[0]["event"] == "rollback" and history[0]["actor"] == "cli:ops"
        assert history[0]["reason"] == "false positives"
    log = tmp_path / "decisions.jsonl"
    log.write_text(
        json.dumps({"id": "a", "cs-method": "GET", "cs-uri-stem": "/", "cs-uri-query": "id=1 union all select 2"})
        + "\n"
        + json.dumps({"id": "b", "cs-method": "GET", "cs-uri-stem": "/shop", "cs-uri-query": ""})
        + "\n"
    )
    out = tmp_path / "report.json"
    evaluated = feint(
        "shadow", "evaluate", "--production", "web@1", "--candidate", "web@2", "--traffic", str(log), "--out", str(out),
        env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(out.read_text())
    assert report["dataset"]["rows"] == 2
    # Version 2's keyword ("union all select") matches the first request; version 1's does not.
    assert [r["hits"] for r in report["production"]["hits_per_rule"].values()] == [0]
    assert [r["hits"] for r in report["candidate"]["hits_per_rule"].values()] == [1]


@contextmanager
def shadow_process(env: dict[str, str], port: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`feint serve shadow` whose process the test controls (to kill it)."""
    log = tempfile.NamedTemporaryFile(prefix="feint-shadow-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "feint", "serve", "shadow", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVICE_START_SECONDS_MAX
        while True:
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            try:
                if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, Path(log.name).read_text()[-2000:]
            time.sleep(0.1)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        os.unlink(log.name)


def _traffic(folder: Path) -> None:
    folder.mkdir(parents=True)
    line = '10.0.0.{} - - [10/Oct/2024:13:55:36 +0000] "GET /p/{}?q=1 HTTP/1.1" 200 512 "-" "Mozilla/5.0"\n'
    with (folder / "big.log").open("w") as out:
        for n in range(TRAFFIC_LINES):
            out.write(line.format(n % 250, n))


def _statuses(base: str, headers: dict[str, str], ids: list[str]) -> list[dict[str, Any]]:
    return [httpx.get(f"{base}/v1/evaluations/{i}", headers=headers).json() for i in ids]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_jobs_do_not_survive_a_stop(
    clean_db: str, tmp_path: Path, api_key: Callable[..., str], stop: signal.Signals
) -> None:
    """Jobs queued or running when the service stops (cleanly or killed) end 'failed: interrupted', never stuck."""
    headers = {"authorization": f"Bearer {api_key(tenant='acme', scope='write')}"}
    env = service_env(clean_db, tmp_path)
    _traffic(tmp_path / "datasets" / "acme")
    request = {
        "production": {"ruleset": "starter"},
        "candidate": {"documents": [sigma.SQLI]},
        "traffic": {"path": "big.log"},
    }
    port = free_port()
    with shadow_process(env, port) as (proc, base):
        ids = []
        for _ in range(3):
            accepted = httpx.post(f"{base}/v1/evaluations", json=request, headers=headers, timeout=30)
            assert accepted.status_code == 202, accepted.text
            ids.append(accepted.json()["id"])
        proc.send_signal(stop)
        proc.wait(timeout=30)
    with shadow_process(env, port) as (_, base):
        states = _statuses(base, headers, ids)
    assert all(s["status"] in ("succeeded", "failed") for s in states), states
    interrupted = [s for s in states if s["status"] == "failed"]
    assert interrupted and all(s["error"].startswith("interrupted") for s in interrupted)
