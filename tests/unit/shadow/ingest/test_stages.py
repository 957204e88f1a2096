"""The import's stage threads: order kept, errors raised where the caller is, threads ended."""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feint.shadow.ingest.stages import WriteBehind, read_ahead

pytestmark = pytest.mark.unit

SCHEMA = pa.schema([pa.field("n", pa.int64())])


def _numbers(count: int, closed: list[bool], *, fail_at: int | None = None) -> Generator[int, None, None]:
    try:
        for number in range(count):
            if number == fail_at:
                raise OSError(f"unreadable at {number}")
            yield number
    finally:
        closed.append(True)


def _stage_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("feint-ingest-")]


def test_read_ahead_keeps_order_and_closes_the_source() -> None:
    """Every item arrives in order, and the source generator is closed at the end."""
    closed: list[bool] = []
    assert list(read_ahead(_numbers(50, closed), depth=2)) == list(range(50))
    assert closed == [True]
    assert _stage_threads() == []


def test_read_ahead_raises_the_source_error_after_the_items_before_it() -> None:
    """An error in the reading thread reaches the consumer, after the items read before it."""
    closed: list[bool] = []
    seen: list[int] = []
    with pytest.raises(OSError, match="unreadable at 7"):
        seen.extend(read_ahead(_numbers(50, closed, fail_at=7)))
    assert seen == list(range(7))
    assert closed == [True]


def test_read_ahead_abandoned_early_stops_the_thread() -> None:
    """A consumer that stops (an error while parsing) ends the reading thread and closes the source."""
    closed: list[bool] = []
    items = read_ahead(_numbers(10_000, closed), depth=1)
    assert next(items) == 0
    items.close()
    assert closed == [True]
    assert _stage_threads() == []


def test_write_behind_writes_in_order(tmp_path: Path) -> None:
    """Tables are appended in the order given, each as a row group."""
    path = tmp_path / "out.parquet"
    with pq.ParquetWriter(path, SCHEMA) as writer:
        behind = WriteBehind(writer, depth=1)
        for start in range(0, 30, 10):
            behind.write(pa.table({"n": list(range(start, start + 10))}, schema=SCHEMA))
        behind.close()
    file = pq.ParquetFile(path)
    assert file.read().column("n").to_pylist() == list(range(30))
    assert file.num_row_groups == 3
    assert _stage_threads() == []


def test_write_behind_failure_is_raised(tmp_path: Path) -> None:
    """A table the writer refuses raises at the next write or at close, not silently."""
    with pq.ParquetWriter(tmp_path / "out.parquet", SCHEMA) as writer:
        behind = WriteBehind(writer)
        behind.write(pa.table({"other": ["x"]}))
        with pytest.raises(ValueError, match="schema"):
            behind.close()
    with pq.ParquetWriter(tmp_path / "again.parquet", SCHEMA) as writer:
        behind = WriteBehind(writer)
        behind.write(pa.table({"other": ["x"]}))
        behind.abandon()  # the import failed elsewhere: nothing raised here, the thread ends
    assert _stage_threads() == []
