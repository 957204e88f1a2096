"""Evaluation jobs over HTTP: inputs checked up front, bounded queue, progress, reports, interruption."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from feint.errors import DependencyUnavailable, ValidationFailed
from feint.platform.runtime import Platform
from feint.shadow import jobs, store
from feint.shadow.app import create
from feint.shadow.jobs import EvaluationJob, EvaluationResult, Progress
from tests.conftest import serve_app
from tests.integration.shadow import sigma
from tests.integration.shadow.conftest import new_version, runner_of

pytestmark = pytest.mark.integration

Keys = Callable[..., dict[str, str]]
WAIT_SECONDS_MAX = 15.0
TRAFFIC = '127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /?q=union+select HTTP/1.1" 200 12 "-" "curl/8"\n'
LABELS = "id,label\n1,1\n"


def report_of(job: EvaluationJob, progress: Progress) -> EvaluationResult:
    """A stand-in evaluator: reports progress and echoes what it was given."""
    progress(0.5)
    return EvaluationResult(
        report={
            "production": job.production.content_hash,
            "candidate": job.candidate.content_hash,
            "rules": [len(job.production.rules), len(job.candidate.rules)],
            "options": dict(job.options),
        },
        html="<!doctype html><title>report</title>",
    )


class Gate:
    """An evaluator that blocks until released, reporting progress while it waits."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, job: EvaluationJob, progress: Progress) -> EvaluationResult:
        self.started.set()
        while not self.release.wait(0.01):
            progress(0.25)
        return report_of(job, progress)


@pytest.fixture
def datasets(platform: Platform) -> Path:
    """acme's datasets folder with one log and one labels file."""
    folder = platform.settings.home_dir / "datasets" / "acme"
    folder.mkdir(parents=True)
    (folder / "access.log").write_text(TRAFFIC)
    (folder / "labels.csv").write_text(LABELS)
    return folder


def body(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "production": {"ruleset": "starter"},
        "candidate": {"documents": [sigma.SQLI]},
        "traffic": {"path": "access.log"},
        "labels": {"path": "labels.csv"},
        "options": {"objective": "f1"},
    }
    request.update(changes)
    return request


async def finished(client: httpx.AsyncClient, headers: dict[str, str], evaluation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while time.monotonic() < deadline:
        state: dict[str, Any] = (await client.get(f"/v1/evaluations/{evaluation_id}", headers=headers)).json()
        if state["status"] in ("succeeded", "failed"):
            return state
        await asyncio.sleep(0.02)
    raise AssertionError(f"evaluation {evaluation_id} did not finish")


async def until(predicate: Callable[[], Any]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_evaluation_runs_and_stores_report_with_input_hashes(
    platform: Platform, keys: Keys, datasets: Path
) -> None:
    """A job goes queued → running → succeeded; the report, page and every input's hash are kept."""
    runner_of(platform, evaluator=report_of)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        accepted = await client.post("/v1/evaluations", json=body(), headers=writer)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["status"] == "queued" and job["progress"] == 0 and job["created_by"].startswith("key:")
        done = await finished(client, writer, job["id"])
        assert done["status"] == "succeeded" and done["progress"] == 1 and done["error"] is None
        inputs = done["inputs"]
        assert inputs["traffic_sha256"] == hashlib.sha256(TRAFFIC.encode()).hexdigest()
        assert inputs["labels_sha256"] == hashlib.sha256(LABELS.encode()).hexdigest()
        assert inputs["production"]["ruleset"] == "starter" and inputs["production"]["version"] == 1
        assert inputs["candidate"]["inline"] is True and inputs["options"] == {"objective": "f1"}
        report = await client.get(f"/v1/evaluations/{job['id']}/report", headers=writer)
        assert report.status_code == 200
        assert report.json()["production"] == inputs["production"]["content_hash"]
        assert report.json()["candidate"] == inputs["candidate"]["content_hash"]
        page = await client.get(f"/v1/evaluations/{job['id']}/report.html", headers=writer)
        assert page.status_code == 200 and page.text.startswith("<!doctype html>")
        assert page.headers["content-type"].startswith("text/html")
        assert "sandbox" in page.headers["content-security-policy"]
        listed = (await client.get("/v1/evaluations", headers=writer)).json()["items"]
        assert [e["id"] for e in listed] == [job["id"]]
        reader = keys("acme", "read")
        assert (await client.post("/v1/evaluations", json=body(), headers=reader)).status_code == 403


async def test_stored_versions_by_number_and_uploaded_paths(platform: Platform, keys: Keys, datasets: Path) -> None:
    """Production and candidate may be stored versions by number; sub-folders of the datasets folder work."""
    runner_of(platform, evaluator=report_of)
    admin = keys("acme", "admin")
    (datasets / "day1").mkdir()
    (datasets / "day1" / "access.log").write_text(TRAFFIC)
    async with serve_app(create(platform)) as client:
        version = await new_version(client, admin, "web", sigma.SQLI, sigma.SCANNER)
        request = body(
            production={"ruleset": "starter", "version": 1},
            candidate={"ruleset": version["ruleset_id"], "version": version["version"]},
            traffic={"path": "day1/access.log"},
        )
        accepted = await client.post("/v1/evaluations", json=request, headers=admin)
        done = await finished(client, admin, accepted.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["inputs"]["candidate"]["content_hash"] == version["content_hash"]
        report = (await client.get(f"/v1/evaluations/{done['id']}/report", headers=admin)).json()
        assert report["rules"] == [1, 2]


@pytest.mark.parametrize(
    ("changes", "status", "needle"),
    [
        ({"traffic": {"path": "../../etc/passwd"}}, 422, "body.traffic.path"),
        ({"traffic": {"path": "/etc/passwd"}}, 422, "body.traffic.path"),
        ({"traffic": {"path": "missing.log"}}, 404, "dataset-not-found"),
        ({"traffic": {"dataset_id": str(uuid.UUID(int=7))}}, 404, "dataset-not-found"),
        ({"traffic": {"path": "access.log", "dataset_id": str(uuid.UUID(int=7))}}, 422, "exactly one"),
        ({"traffic": {}}, 422, "exactly one"),
        ({"labels": {"path": "../labels.csv"}}, 422, "body.labels.path"),
        ({"labels": {"path": "nope.csv"}}, 404, "dataset-not-found"),
        ({"production": {"ruleset": "ghost"}}, 404, "ruleset-not-found"),
        ({"production": {"ruleset": "starter", "version": 9}}, 404, "version-not-found"),
        ({"candidate": {"documents": ["title: ["]}}, 422, "rule-invalid"),
        ({"candidate": {"documents": [sigma.SQLI], "threshold": 50}}, 422, "not reachable"),
        ({"candidate": {"documents": [sigma.SQLI], "extra": 1}}, 422, "validation-failed"),
    ],
)
async def test_bad_inputs_refused_before_queueing(
    platform: Platform, keys: Keys, datasets: Path, changes: dict[str, Any], status: int, needle: str
) -> None:
    """Paths outside the tenant's folder, missing files, unknown versions and bad rules: refused, nothing queued."""
    runner_of(platform, evaluator=report_of)
    writer = keys("acme", "write")
    (datasets.parent / "labels.csv").write_text(LABELS)  # exists, but outside acme's folder
    async with serve_app(create(platform)) as client:
        response = await client.post("/v1/evaluations", json=body(**changes), headers=writer)
        assert response.status_code == status, response.text
        assert needle in response.text
        assert (await client.get("/v1/evaluations", headers=writer)).json()["items"] == []


async def test_production_default_needs_a_production_version(platform: Platform, keys: Keys, datasets: Path) -> None:
    """A stored rule set without a version number means its production version; none → 404."""
    runner_of(platform, evaluator=report_of)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        await new_version(client, writer, "web", sigma.SQLI)
        response = await client.post("/v1/evaluations", json=body(production={"ruleset": "web"}), headers=writer)
        assert response.status_code == 404 and response.json()["type"] == "/problems/no-production-version"


async def test_queue_is_bounded_and_concurrency_too(platform: Platform, keys: Keys, datasets: Path) -> None:
    """With one worker and a queue of one: one runs, one waits, the next is 429 with Retry-After."""
    gate = Gate()
    runner = runner_of(platform, evaluator=gate, workers=1, queue_max=1, progress_seconds=0.02)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        first = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        await until(gate.started.is_set)
        second = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        full = await client.post("/v1/evaluations", json=body(), headers=writer)
        assert full.status_code == 429 and full.json()["type"] == "/problems/evaluation-queue-full"
        assert int(full.headers["retry-after"]) > 0
        running = (await client.get(f"/v1/evaluations/{first['id']}", headers=writer)).json()
        assert running["status"] == "running" and running["started_at"] is not None
        await until(lambda: runner.free_slots == 0)
        queued = (await client.get(f"/v1/evaluations/{second['id']}", headers=writer)).json()
        assert queued["status"] == "queued"
        not_yet = await client.get(f"/v1/evaluations/{first['id']}/report", headers=writer)
        assert not_yet.status_code == 409 and not_yet.json()["evaluation_status"] == "running"
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        while (await client.get(f"/v1/evaluations/{first['id']}", headers=writer)).json()["progress"] != 0.25:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        gate.release.set()
        assert (await finished(client, writer, first["id"]))["status"] == "succeeded"
        assert (await finished(client, writer, second["id"]))["status"] == "succeeded"
        assert runner.free_slots == 1


async def test_stopping_the_service_interrupts_its_jobs(platform: Platform, keys: Keys, datasets: Path) -> None:
    """A clean stop fails the running and the queued jobs as interrupted; nothing stays 'running'."""
    gate = Gate()
    runner_of(platform, evaluator=gate, workers=1, queue_max=4)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        running = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        await until(gate.started.is_set)
        queued = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
    async with platform.db.connection() as conn:
        for job in (running, queued):
            row = await store.get_evaluation(
                conn, tenant_id=await _tenant(platform), evaluation_id=uuid.UUID(job["id"])
            )
            assert row is not None and row.status == "failed" and row.error == jobs.INTERRUPTED
            assert row.finished_at is not None


async def test_jobs_of_a_dead_process_fail_at_start_and_by_sweep(
    platform: Platform, keys: Keys, clean_db: str, datasets: Path
) -> None:
    """A job left running by a killed process is failed 'interrupted' when a runner starts, or by its sweep."""
    keys("acme", "write")
    tenant_id = await _tenant(platform)
    dead = _insert_orphan(clean_db, tenant_id, age_seconds=3600)
    runner_of(platform, evaluator=report_of, heartbeat_seconds=0.05, lease_seconds=0.5)
    async with serve_app(create(platform)) as client:
        state = (await client.get(f"/v1/evaluations/{dead}", headers=keys("acme", "read"))).json()
        assert state["status"] == "failed" and state["error"].startswith("interrupted")
        later = _insert_orphan(clean_db, tenant_id, age_seconds=0)
        deadline = time.monotonic() + WAIT_SECONDS_MAX
        while (await client.get(f"/v1/evaluations/{later}", headers=keys("acme", "read"))).json()["status"] != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_jobs_of_a_restarted_process_on_this_host_fail_at_once(
    platform: Platform, keys: Keys, clean_db: str
) -> None:
    """A job of a process on this host that is gone is failed at start, even with a fresh lease."""
    keys("acme", "write")
    tenant_id = await _tenant(platform)
    orphan = _insert_orphan(clean_db, tenant_id, age_seconds=0, runner=f"{socket.gethostname()}:{_dead_pid()}:x")
    elsewhere = _insert_orphan(clean_db, tenant_id, age_seconds=0, runner="other-host:1:x")
    runner_of(platform, evaluator=report_of)
    async with serve_app(create(platform)) as client:
        reader = keys("acme", "read")
        assert (await client.get(f"/v1/evaluations/{orphan}", headers=reader)).json()["status"] == "failed"
        assert (await client.get(f"/v1/evaluations/{elsewhere}", headers=reader)).json()["status"] == "running"


async def test_live_jobs_keep_their_lease(platform: Platform, keys: Keys, datasets: Path) -> None:
    """A running job outlives several lease periods because its runner renews the lease."""
    gate = Gate()
    runner_of(platform, evaluator=gate, workers=1, heartbeat_seconds=0.05, lease_seconds=0.3)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        job = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        await until(gate.started.is_set)
        await asyncio.sleep(1.0)
        assert (await client.get(f"/v1/evaluations/{job['id']}", headers=writer)).json()["status"] == "running"
        gate.release.set()
        assert (await finished(client, writer, job["id"]))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (ValidationFailed("labels.csv: no id,label header"), "labels.csv: no id,label header"),
        (ValueError("boom"), "internal error (ValueError)"),
    ],
)
async def test_failing_evaluation_is_failed_with_reason(
    platform: Platform, keys: Keys, datasets: Path, failure: Exception, expected: str
) -> None:
    """An evaluator's error marks the job failed with the error's message (internals stay in the log)."""

    def failing(job: EvaluationJob, progress: Progress) -> EvaluationResult:
        raise failure

    runner_of(platform, evaluator=failing)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        job = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        done = await finished(client, writer, job["id"])
        assert done["status"] == "failed" and done["error"].startswith(expected)
        assert "boom" not in done["error"]
        report = await client.get(f"/v1/evaluations/{job['id']}/report.html", headers=writer)
        assert report.status_code == 409 and report.json()["evaluation_status"] == "failed"


async def test_input_removed_before_run_fails_clearly(platform: Platform, keys: Keys, datasets: Path) -> None:
    """A traffic file deleted between acceptance and run fails the job naming the file."""
    gate = Gate()
    runner_of(platform, evaluator=gate, workers=1)
    writer = keys("acme", "write")
    (datasets / "gone.log").write_text(TRAFFIC)
    async with serve_app(create(platform)) as client:
        first = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        await until(gate.started.is_set)
        doomed = (await client.post("/v1/evaluations", json=body(traffic={"path": "gone.log"}), headers=writer)).json()
        (datasets / "gone.log").unlink()
        gate.release.set()
        done = await finished(client, writer, doomed["id"])
        assert done["status"] == "failed" and "gone.log" in done["error"]
        assert (await finished(client, writer, first["id"]))["status"] == "succeeded"


async def test_job_failed_while_queued_is_skipped(
    platform: Platform, keys: Keys, clean_db: str, datasets: Path
) -> None:
    """A queued job already failed (by a sweep) is not started by the worker."""
    gate = Gate()
    runner_of(platform, evaluator=gate, workers=1)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        first = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        await until(gate.started.is_set)
        second = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        with psycopg.connect(clean_db, autocommit=True) as conn:
            conn.execute(
                "UPDATE shadow_evaluations SET status = 'failed', error = 'swept', finished_at = now() WHERE id = %s",
                (second["id"],),
            )
        gate.release.set()
        assert (await finished(client, writer, first["id"]))["status"] == "succeeded"
        await asyncio.sleep(0.1)
        assert (await client.get(f"/v1/evaluations/{second['id']}", headers=writer)).json()["error"] == "swept"


async def test_database_trouble_keeps_workers_alive(
    platform: Platform, keys: Keys, datasets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed insert frees its queue slot; a failure inside a job or a lease renewal does not stop the runner."""
    runner = runner_of(platform, evaluator=report_of, workers=1, queue_max=1, heartbeat_seconds=0.05, lease_seconds=5)
    writer = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        real_insert, real_start, real_renew = store.insert_evaluation, store.start_evaluation, store.renew_lease

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise DependencyUnavailable("database unavailable", dependency="database")

        monkeypatch.setattr(store, "insert_evaluation", down)
        refused = await client.post("/v1/evaluations", json=body(), headers=writer)
        assert refused.status_code == 503 and runner.free_slots == 1
        monkeypatch.setattr(store, "insert_evaluation", real_insert)
        monkeypatch.setattr(store, "start_evaluation", down)
        monkeypatch.setattr(store, "renew_lease", down)
        stuck = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        await until(lambda: runner.free_slots == 1)
        await asyncio.sleep(0.15)
        monkeypatch.setattr(store, "start_evaluation", real_start)
        monkeypatch.setattr(store, "renew_lease", real_renew)
        assert (await client.get(f"/v1/evaluations/{stuck['id']}", headers=writer)).json()["status"] == "queued"
        job = (await client.post("/v1/evaluations", json=body(), headers=writer)).json()
        assert (await finished(client, writer, job["id"]))["status"] == "succeeded"


async def test_evaluations_are_tenant_isolated(platform: Platform, keys: Keys, datasets: Path) -> None:
    """Another tenant's evaluation ids are 404 for status and both reports."""
    runner_of(platform, evaluator=report_of)
    acme = keys("acme", "write")
    async with serve_app(create(platform)) as client:
        job = (await client.post("/v1/evaluations", json=body(), headers=acme)).json()
        await finished(client, acme, job["id"])
        globex = keys("globex", "read")
        for path in ("", "/report", "/report.html"):
            response = await client.get(f"/v1/evaluations/{job['id']}{path}", headers=globex)
            assert response.status_code == 404 and response.json()["type"] == "/problems/evaluation-not-found"
        assert (await client.get("/v1/evaluations", headers=globex)).json()["items"] == []
        other = await client.post("/v1/evaluations", json=body(), headers=keys("globex", "write"))
        assert other.status_code == 404  # globex has no datasets folder, so no access.log


async def test_operator_evaluates_in_the_named_tenants_folder(
    platform: Platform, keys: Keys, datasets: Path, api_key: Callable[..., str]
) -> None:
    """An operator acting for a tenant reads that tenant's datasets folder."""
    runner_of(platform, evaluator=report_of)
    keys("acme", "read")
    operator = {"authorization": f"Bearer {api_key(scope='operator')}", "feint-tenant": "acme"}
    async with serve_app(create(platform)) as client:
        accepted = await client.post("/v1/evaluations", json=body(), headers=operator)
        assert accepted.status_code == 202, accepted.text
        assert (await finished(client, operator, accepted.json()["id"]))["status"] == "succeeded"


async def _tenant(platform: Platform) -> uuid.UUID:
    async with platform.db.connection() as conn:
        found = await store.tenant_id_by_name(conn, "acme")
    assert found is not None
    return found


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _insert_orphan(url: str, tenant_id: uuid.UUID, *, age_seconds: int, runner: str = "dead-host:1:x") -> str:
    evaluation_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO shadow_evaluations (tenant_id, id, status, request, inputs, runner, created_by, started_at,
                                               heartbeat_at)
               VALUES (%s, %s, 'running', '{}', '{}', %s, 'key:x', now(), now() - make_interval(secs => %s))""",
            (tenant_id, evaluation_id, runner, age_seconds),
        )
    return str(evaluation_id)


async def test_runner_stops_without_having_started(platform: Platform) -> None:
    """Stopping a runner that never started is harmless."""
    await jobs.EvaluationRunner(platform.db).stop()


async def test_runner_refuses_nonsense_bounds(platform: Platform) -> None:
    """A runner needs workers, a queue, and a heartbeat shorter than its lease."""
    for options in (
        {"workers": 0},
        {"queue_max": 0},
        {"heartbeat_seconds": 9, "lease_seconds": 3},
        {"progress_seconds": 0},
    ):
        with pytest.raises(ValueError, match="heartbeat"):
            jobs.EvaluationRunner(platform.db, **options)  # type: ignore[arg-type]
