"""Evaluations as background jobs: a bounded queue, a bounded number running, leases in the database.

``POST /v1/evaluations`` resolves and checks its inputs, stores a ``queued`` row and hands the
job to this process's :class:`EvaluationRunner`; the runner's workers take jobs in order and
run the evaluation in a worker thread (DuckDB releases the GIL), writing progress to the row.

Jobs live in this process only. A runner renews a lease (``heartbeat_at``) on its live jobs every
``HEARTBEAT_SECONDS``; a job whose lease is older than ``LEASE_SECONDS`` belonged to a process that
died, and is marked ``failed`` with the error ``interrupted: …`` by the next runner to start or
sweep. A runner that stops cleanly marks its own live jobs that way at once.

The evaluation itself is an :data:`Evaluator`: a plain function of the job and a progress
callback, so the tests substitute one that blocks, fails or counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from feint.errors import FeintError, NotFound, RateLimited, ValidationFailed
from feint.platform.db import Database
from feint.shadow import repository, store
from feint.shadow.rules.model import RuleSet
from feint.shadow.schemas import EvaluationIn, InlineRulesIn, SourceIn, StoredVersionIn
from feint.shadow.versions import compile_version

EVALUATION_QUEUE_MAX: Final = 32
EVALUATION_WORKERS_MAX: Final = 2
HEARTBEAT_SECONDS: Final = 10.0
LEASE_SECONDS: Final = 60.0
PROGRESS_FLUSH_SECONDS: Final = 1.0
QUEUE_FULL_RETRY_SECONDS: Final = 30
STOP_WAIT_SECONDS: Final = 5.0
HASH_CHUNK_BYTES: Final = 1 << 20
ERROR_LENGTH_MAX: Final = 2_000
INTERRUPTED: Final = "interrupted: the service stopped before the evaluation finished"

log = structlog.get_logger(component="feint.shadow.jobs")


class EvaluationQueueFull(RateLimited):
    slug, title = "evaluation-queue-full", "Evaluation queue full"

    def __init__(self, *, queued: int) -> None:
        super().__init__(
            f"{queued} evaluations are queued, the most this service holds; retry later",
            retry_after_seconds=QUEUE_FULL_RETRY_SECONDS,
        )


class InputUnreadable(FeintError):
    slug, status, title = "input-unreadable", 422, "Input unreadable"


class DatasetNotFound(NotFound):
    slug, title = "dataset-not-found", "Dataset not found"

    def __init__(self, *, ref: str) -> None:
        super().__init__(f"no dataset {ref[:200]!r}", dataset=ref[:200])


class DatasetPathInvalid(ValidationFailed):
    def __init__(self, *, field: str, path: str) -> None:
        super().__init__(
            f"{path[:200]!r} is not a path inside this tenant's datasets folder",
            errors=[{"field": field, "problem": "a relative path under FEINT_HOME/datasets/<tenant>/"}],
        )


class EvaluationCancelled(Exception):
    """Raised by the progress callback inside the evaluator when the runner stops."""


@dataclass(frozen=True, slots=True)
class EvaluationJob:
    """Everything an evaluation reads, resolved and checked when it was accepted."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    production: RuleSet
    candidate: RuleSet
    traffic: Path
    labels: Path | None
    options: Mapping[str, Any]
    inputs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    report: dict[str, Any]
    html: str


@dataclass
class Progress:
    """The fraction done, written by the evaluator's thread and read by the runner's loop.

    Calling it also checks for cancellation: an evaluator that reports progress stops at its next
    report once the runner is stopping."""

    fraction: float = 0.0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __call__(self, fraction: float) -> None:
        if self.cancelled.is_set():
            raise EvaluationCancelled
        self.fraction = min(max(float(fraction), 0.0), 1.0)


Evaluator = Callable[[EvaluationJob, Progress], EvaluationResult]


def runner_id() -> str:
    """``host:pid:random``: where a runner lives, so that a restart on the same host finds its
    predecessor's jobs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_local_runners(runners: Iterable[str], *, me: str) -> list[str]:
    """The runners among ``runners`` that lived on this host in a process that no longer exists
    (or whose pid is now this process's: a container restarted with the same pid)."""
    host = socket.gethostname()
    dead = []
    for runner in runners:
        head, _, _ = runner.rpartition(":")
        runner_host, _, pid_text = head.rpartition(":")
        if runner == me or runner_host != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid() or not _pid_alive(pid):
            dead.append(runner)
    return dead


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _with_file_hashes(job: EvaluationJob) -> dict[str, Any]:
    try:
        labels = None if job.labels is None else sha256_file(job.labels)
        return {**job.inputs, "traffic_sha256": sha256_file(job.traffic), "labels_sha256": labels}
    except OSError as exc:
        raise InputUnreadable(f"cannot read {Path(exc.filename or '?').name}: {exc.strerror}") from exc


# --- preparing a job: everything is resolved and checked before it is accepted -------------


def datasets_root(home: Path, tenant_name: str) -> Path:
    """A tenant's traffic and label files: ``FEINT_HOME/datasets/<tenant>/`` (uploads in ``uploads/``)."""
    return home / "datasets" / tenant_name


def resolve_file(root: Path, relative: str, *, field: str) -> Path:
    """A file named relative to ``root``; 422 when the name leaves it, 404 when it is not there."""
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise DatasetPathInvalid(field=field, path=relative)
    if not candidate.is_file():
        raise DatasetNotFound(ref=relative)
    return candidate


async def resolve_rules(
    db: Database, *, tenant_id: uuid.UUID, spec: StoredVersionIn | InlineRulesIn, role: str
) -> tuple[RuleSet, dict[str, Any]]:
    """A rule set named by the request (stored version, or inline texts) and what identifies it."""
    if isinstance(spec, StoredVersionIn):
        if spec.version is None:
            detail = await repository.production(db, tenant_id=tenant_id, ref=spec.ruleset)
        else:
            detail = await repository.get_version(db, tenant_id=tenant_id, ref=spec.ruleset, number=spec.version)
        rules = await asyncio.to_thread(repository.rule_set_of, detail)
        return rules, {
            "ruleset_id": str(detail.ruleset.id),
            "ruleset": detail.ruleset.name,
            "version": detail.version.number,
            "content_hash": detail.version.content_hash,
        }
    compiled = await asyncio.to_thread(
        compile_version, spec.to_documents(), weights=spec.weights, threshold=spec.threshold, name=role
    )
    return compiled.rule_set, {"inline": True, "content_hash": compiled.rule_set.content_hash}


async def _traffic_file(db: Database, *, tenant_id: uuid.UUID, root: Path, source: SourceIn) -> Path:
    if source.path is not None:
        return resolve_file(root, source.path, field="body.traffic.path")
    async with db.connection() as conn:
        dataset = await store.get_dataset(conn, tenant_id=tenant_id, dataset_id=source.dataset_id)  # type: ignore[arg-type]
    if dataset is None:
        raise DatasetNotFound(ref=str(source.dataset_id))
    return resolve_file(root, f"uploads/{dataset.file}", field="body.traffic.dataset_id")


async def prepare(db: Database, *, tenant_id: uuid.UUID, datasets: Path, body: EvaluationIn) -> EvaluationJob:
    """The job a request describes, with the hashes of its rule sets; 404/422 when an input is not usable."""
    production, production_id = await resolve_rules(db, tenant_id=tenant_id, spec=body.production, role="production")
    candidate, candidate_id = await resolve_rules(db, tenant_id=tenant_id, spec=body.candidate, role="candidate")
    traffic = await _traffic_file(db, tenant_id=tenant_id, root=datasets, source=body.traffic)
    check_options(body.options)
    labels = None if body.labels is None else resolve_file(datasets, body.labels.path, field="body.labels.path")
    return EvaluationJob(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        production=production,
        candidate=candidate,
        traffic=traffic,
        labels=labels,
        options=body.options,
        inputs={
            "production": production_id,
            "candidate": candidate_id,
            "traffic": body.traffic.path or f"dataset:{body.traffic.dataset_id}",
            "labels": None if body.labels is None else body.labels.path,
            "options": body.options,
        },
    )


async def upload_dataset(
    db: Database,
    *,
    tenant_id: uuid.UUID,
    datasets: Path,
    name: str,
    chunks: AsyncIterator[bytes],
    actor: str,
) -> tuple[store.DatasetRow, dict[str, Any]]:
    """Store an uploaded log (nginx/Apache, W3C, JSON lines; gzip or plain) as a Parquet dataset
    under ``datasets/uploads/``; returns its row and the import's report. Nothing is kept when the
    upload is not a log Feint reads."""
    from feint.shadow.ingest import ingest

    dataset_id = uuid.uuid4()
    uploads = datasets / "uploads"
    raw, out = uploads / f".{dataset_id}.upload", uploads / f"{dataset_id}.parquet"
    await asyncio.to_thread(uploads.mkdir, parents=True, exist_ok=True)
    try:
        await _receive(raw, chunks)
        report = await asyncio.to_thread(ingest, [raw], out)
        digest = await asyncio.to_thread(sha256_file, out)
        async with db.connection() as conn:
            row = await store.insert_dataset(
                conn,
                tenant_id=tenant_id,
                dataset_id=dataset_id,
                name=name,
                file=out.name,
                row_count=report.rows,
                sha256=digest,
                created_by=actor,
            )
    except BaseException:
        await asyncio.to_thread(out.unlink, missing_ok=True)
        raise
    finally:
        await asyncio.to_thread(raw.unlink, missing_ok=True)
    summary = report.to_dict()
    summary.pop("output")  # a server path
    summary.pop("rows")  # the row says it
    for example in summary["examples"]:
        example["path"] = name
    summary["formats"] = list(summary["formats"].values())
    return row, summary


async def _receive(path: Path, chunks: AsyncIterator[bytes]) -> None:
    handle = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in chunks:
            await asyncio.to_thread(handle.write, chunk)
    finally:
        await asyncio.to_thread(handle.close)


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse unknown or malformed evaluation options (422) before a job is queued."""
    from feint.shadow.evaluate import thresholds_from

    thresholds_from(options)


def engine_evaluate(job: EvaluationJob, progress: Progress) -> EvaluationResult:
    """The evaluation engine's entry point (``feint.shadow.evaluate``), adapted to a job."""
    from feint.shadow.evaluate import evaluate_job

    report, html = evaluate_job(
        production=job.production,
        candidate=job.candidate,
        traffic=job.traffic,
        labels=job.labels,
        options=dict(job.options),
        progress=progress,
    )
    return EvaluationResult(report=report, html=html)


class EvaluationRunner:
    """This process's evaluation workers; one per service app, started and stopped with it."""

    def __init__(
        self,
        db: Database,
        *,
        evaluator: Evaluator = engine_evaluate,
        workers: int = EVALUATION_WORKERS_MAX,
        queue_max: int = EVALUATION_QUEUE_MAX,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        progress_seconds: float = PROGRESS_FLUSH_SECONDS,
    ) -> None:
        if workers < 1 or queue_max < 1 or not 0 < heartbeat_seconds < lease_seconds or progress_seconds <= 0:
            raise ValueError("need ≥ 1 worker, a queue of ≥ 1, and 0 < heartbeat < lease, progress > 0 seconds")
        self.db = db
        self.id = runner_id()
        self._evaluator = evaluator
        self._workers = workers
        self._lease_seconds = lease_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._progress_seconds = progress_seconds
        self._queue: asyncio.Queue[EvaluationJob] = asyncio.Queue()
        self._free_slots = queue_max
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[uuid.UUID, tuple[Progress, asyncio.Future[EvaluationResult]]] = {}
        self._executor: ThreadPoolExecutor | None = None
        # Jobs queued or running here: the only ones whose lease this runner renews.
        self._live: set[uuid.UUID] = set()

    async def start(self) -> None:
        """Fail the jobs of dead processes, then start the workers and the lease keeper."""
        await self.sweep()
        await self._reap_local()
        self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="feint-evaluation")
        self._tasks = [asyncio.create_task(self._work(), name=f"evaluation-worker-{i}") for i in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._keep_leases(), name="evaluation-leases"))

    async def stop(self) -> None:
        """Ask running evaluators to stop, give them ``STOP_WAIT_SECONDS``, stop the workers, and
        fail every job of this runner still queued or running as interrupted."""
        futures = []
        for progress, future in self._running.values():
            progress.cancelled.set()
            futures.append(future)
        if futures:
            done, _ = await asyncio.wait(futures, timeout=STOP_WAIT_SECONDS)
            for future in done:
                future.exception()  # retrieved here: the worker waiting for it is cancelled next
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._executor is not None:
            # An evaluator that does not report progress runs on; the process waits for it at exit.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        async with self.db.connection() as conn:
            failed = await store.interrupt(conn, error=INTERRUPTED, runner=self.id)
        if failed:
            log.warning("evaluations_interrupted", count=failed, runner=self.id)

    async def sweep(self) -> int:
        """Fail live jobs whose lease expired (their process died); returns how many."""
        async with self.db.connection() as conn:
            failed = await store.interrupt(conn, error=INTERRUPTED, lease_seconds=self._lease_seconds)
        if failed:
            log.warning("evaluations_interrupted", count=failed, reason="lease expired")
        return failed

    async def _reap_local(self) -> None:
        """At start, fail at once the live jobs of runners on this host whose process is gone (a
        restart), without waiting for their leases to expire."""
        async with self.db.connection() as conn:
            runners = await store.live_runners(conn)
            for runner in dead_local_runners(runners, me=self.id):
                failed = await store.interrupt(conn, error=INTERRUPTED, runner=runner)
                log.warning("evaluations_interrupted", count=failed, runner=runner, reason="process gone")

    @property
    def free_slots(self) -> int:
        """How many more jobs the queue takes."""
        return self._free_slots

    async def submit(self, job: EvaluationJob, *, request: dict[str, Any], created_by: str) -> store.EvaluationRow:
        """Store the job as queued and queue it; 429 when the queue is full."""
        if self._free_slots <= 0:
            raise EvaluationQueueFull(queued=self._queue.qsize())
        self._free_slots -= 1
        try:
            async with self.db.connection() as conn:
                row = await store.insert_evaluation(
                    conn,
                    tenant_id=job.tenant_id,
                    evaluation_id=job.id,
                    request=request,
                    inputs=job.inputs,
                    runner=self.id,
                    created_by=created_by,
                )
        except BaseException:
            self._free_slots += 1
            raise
        self._live.add(job.id)
        self._queue.put_nowait(job)
        return row

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self._free_slots += 1
            try:
                await self._run(job)
            except FeintError as exc:  # the worker outlives any one job; the lease sweep fails its row
                log.warning("evaluation_worker_error", evaluation_id=str(job.id), error=exc.detail)
            finally:
                self._live.discard(job.id)

    async def _run(self, job: EvaluationJob) -> None:
        async with self.db.connection() as conn:
            if not await store.start_evaluation(conn, evaluation_id=job.id, runner=self.id):
                return  # failed as interrupted meanwhile
        loop = asyncio.get_running_loop()
        progress = Progress()
        inputs = job.inputs
        result: EvaluationResult | None = None
        error: str | None = None
        try:
            inputs = await loop.run_in_executor(self._executor, _with_file_hashes, job)
            future = loop.run_in_executor(self._executor, self._evaluator, job, progress)
            self._running[job.id] = (progress, future)
            reported = 0.0
            while not (await asyncio.wait({future}, timeout=self._progress_seconds))[0]:
                if progress.fraction != reported:
                    reported = progress.fraction
                    async with self.db.connection() as conn:
                        await store.set_progress(conn, evaluation_id=job.id, progress=reported, inputs=inputs)
            result = future.result()
        except FeintError as exc:
            error = exc.detail[:ERROR_LENGTH_MAX]
        except EvaluationCancelled:
            error = INTERRUPTED
        except Exception as exc:
            log.exception("evaluation_failed", evaluation_id=str(job.id))
            error = f"internal error ({type(exc).__name__}); the service log has the details"
        finally:
            self._running.pop(job.id, None)
        async with self.db.connection() as conn:
            await store.finish_evaluation(
                conn,
                evaluation_id=job.id,
                inputs=inputs,
                report=result.report if result else None,
                report_html=result.html if result else None,
                error=error,
            )
        log.info("evaluation_finished", evaluation_id=str(job.id), failed=error is not None)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                async with self.db.connection() as conn:
                    await store.renew_lease(conn, runner=self.id, ids=sorted(self._live))
                await self.sweep()
            except FeintError as exc:  # the database is away; the next beat tries again
                log.warning("evaluation_lease_renewal_failed", error=exc.detail)
