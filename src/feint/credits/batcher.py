"""Micro-batching: single-operation jobs that arrive together commit in one transaction.

Each worker takes the first waiting job, then every job already queued behind it (up to
``operations_max``), and commits them with `Engine.run`. No job waits for a timer: under light
load a job commits alone; under heavy load the queue fills while a transaction is in flight and
the next one carries everything that arrived meanwhile. Jobs are independent (a failed transfer
does not fail its neighbours); if the combined transaction is refused before it commits, each
job is retried in its own transaction so that one bad job cannot fail the others. A failure that
may have happened after COMMIT (a lost connection) is never retried here: the jobs fail, and
their clients retry with their idempotency keys.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import structlog

from feint.credits.engine import QUEUE_JOBS_MAX, Job, Outcome
from feint.errors import InvariantViolated

log = structlog.get_logger(component="feint.credits")
STOP_SECONDS_MAX = 10.0

Runner = Callable[[Sequence[Job]], Awaitable[list[Outcome]]]


class MicroBatcher:
    """``run`` commits jobs in one transaction and returns their outcomes in order."""

    def __init__(self, run: Runner, *, operations_max: int, workers: int) -> None:
        self.run = run
        self.operations_max = operations_max
        self.workers = workers
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Outcome]]] = asyncio.Queue(maxsize=QUEUE_JOBS_MAX)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"credits-batcher-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        """Let queued jobs finish (bounded), then stop the workers."""
        if not self._tasks:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=STOP_SECONDS_MAX)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def submit(self, job: Job) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def _work(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self.operations_max and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await self._commit(items)
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _commit(self, items: Sequence[tuple[Job, asyncio.Future[Outcome]]]) -> None:
        live = [(job, future) for job, future in items if not future.done()]  # a timed-out caller has gone
        if not live:
            return
        try:
            outcomes = await self.run([job for job, _ in live])
        except InvariantViolated as exc:
            # Raised before COMMIT (a rule or a constraint refused, or conflicts persisted): nothing
            # was written, so each job may safely run again on its own.
            if len(live) > 1:
                log.warning("micro_batch_split", jobs=len(live), error=exc.detail)
                for item in live:
                    await self._commit([item])
                return
            _fail(live, exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            # Anything else (the database went away) may have struck after COMMIT: running the
            # jobs again could apply them twice, so they fail; a client retries with its key.
            _fail(live, exc)
            return
        for (_, future), outcome in zip(live, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)


def _fail(items: Sequence[tuple[Job, asyncio.Future[Outcome]]], exc: Exception) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(exc)
