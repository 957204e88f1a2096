"""The import's three stages overlapped: reading ahead, parsing, writing behind.

Reading (file reads and gzip inflation) and writing (Parquet encoding and zstd) run in C with the
GIL released, so each gets a thread of its own while the main thread parses the next block (DuckDB,
which also releases the GIL, and the few lines Python finishes). Each queue holds at most
``QUEUE_BLOCKS_MAX`` blocks, so memory stays bounded by a few blocks whatever the file size. An
error in a stage thread is raised in the main thread, where it would have been raised without the
threads; the threads end when the import ends, whether it succeeded or not.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator
from typing import Final, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

# Blocks read ahead of the parser, and tables parsed ahead of the writer.
QUEUE_BLOCKS_MAX: Final = 2
# How often a blocked stage looks whether the import was abandoned.
_POLL_SECONDS: Final = 0.1

T = TypeVar("T")

_END: Final = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(items: Generator[T, None, None], *, depth: int = QUEUE_BLOCKS_MAX) -> Generator[T, None, None]:
    """``items``, produced by a thread up to ``depth`` items ahead of the consumer."""
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    abandoned = threading.Event()

    def offer(item: object) -> bool:
        while not abandoned.is_set():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            offer(_Failed(exc))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="feint-ingest-read", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]  # everything else in the queue came from items
    finally:
        abandoned.set()
        thread.join()


class WriteBehind:
    """Tables appended to a Parquet writer by a thread, in the order given."""

    def __init__(self, writer: pq.ParquetWriter, *, depth: int = QUEUE_BLOCKS_MAX) -> None:
        self._writer = writer
        self._pending: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="feint-ingest-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            if item is _END:
                return
            if self._error is not None or not isinstance(item, pa.Table):
                continue  # after a failure, drain without writing
            try:
                self._writer.write_table(item, row_group_size=max(item.num_rows, 1))
            except BaseException as exc:  # noqa: BLE001 - raised in the main thread by write or close
                self._error = exc

    def write(self, table: pa.Table) -> None:
        """Queue ``table``; raises the error of an earlier write, if one failed."""
        if self._error is not None:
            raise self._error
        self._pending.put(table)

    def abandon(self) -> None:
        """Stop after the table being written, when the import failed elsewhere (nothing raised)."""
        self._error = self._error or RuntimeError("import abandoned")
        self._pending.put(_END)
        self._thread.join()

    def close(self) -> None:
        """Wait for every queued table to be written; raises the error of a failed write."""
        self._pending.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error
