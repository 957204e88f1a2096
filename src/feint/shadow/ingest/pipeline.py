"""Log files to one Parquet dataset: the one ingest path of the CLI, the evaluation and the server.

Per file: the format is recognised from its first ``PROBE_LINES`` lines (``reference.probe``, as
before: a file that is not a log fails there, before anything is written); then the file is read in
blocks (``blocks``), each block parsed in DuckDB (``fast``), the lines the fast path refuses parsed
by the reference parser one by one, and the block's records written, in line order, as one Parquet
row group. Memory is bounded by the block size, whatever the file size. The dataset is written to a
temporary file and renamed at the end: a failed import leaves nothing behind.

Paths may be globs (``access.log*``), expanded in the order a rotation writes them (``access.log``,
``access.log.1``, ``access.log.2.gz``, …). Request ids are line numbers, ``<file name>:<line>``
when the dataset spans several files (the file's path as given when two files share a name).
"""

from __future__ import annotations

import glob
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feint.shadow.errors import TrafficFormatInvalid
from feint.shadow.ingest import fast, jsonl
from feint.shadow.ingest.blocks import BLOCK_BYTES, Block, line_text, read_blocks
from feint.shadow.ingest.dataset import SCHEMA, to_batch
from feint.shadow.ingest.reference import (
    EXAMPLE_CHARS_MAX,
    FILES_MAX,
    LINE_BYTES_MAX,
    PROBE_LINES,
    IngestReport,
    LineProblem,
    LogFormat,
    Malformed,
    parse_line,
    probe,
)
from feint.shadow.ingest.stages import WriteBehind, read_ahead
from feint.shadow.record import RequestRecord, clean_text

# DuckDB's memory while parsing a block: the block's lines and columns, far below this.
DUCKDB_MEMORY_LIMIT: Final = "1GB"
_GLOB: Final = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """How far an import is: lines read, records written, bytes of the files as stored."""

    lines: int
    rows: int
    bytes_done: int
    bytes_total: int
    seconds: float

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0


def _rotation_key(path: Path) -> tuple[object, ...]:
    """``access.log`` < ``access.log.1`` < ``access.log.2.gz`` < ``access.log.10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path)))


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Paths as given, globs expanded (a glob that matches nothing is an error)."""
    expanded: list[Path] = []
    for path in paths:
        if path.exists() or not _GLOB.search(str(path)):
            expanded.append(path)
            continue
        found = sorted((Path(name) for name in glob.glob(str(path)) if Path(name).is_file()), key=_rotation_key)
        if not found:
            raise TrafficFormatInvalid("no file matches this pattern", path=str(path))
        expanded += found
        if len(expanded) > FILES_MAX:
            break
    return expanded


def _prefixes(paths: Sequence[Path]) -> list[str]:
    if len(paths) == 1:
        return [""]
    names = [path.name for path in paths]
    if len(set(names)) == len(names):
        return [f"{name}:" for name in names]
    return [f"{path}:" for path in paths]


def ingest(
    paths: Sequence[Path],
    out: Path,
    *,
    on_progress: Callable[[IngestProgress], None] | None = None,
    threads: int | None = None,
) -> IngestReport:
    """Read log files (or globs) into one Parquet dataset at ``out``; nothing is written if one fails."""
    files = expand_paths(paths)
    if not files:
        raise TrafficFormatInvalid("no traffic files given", path=str(out))
    if len(files) > FILES_MAX:
        raise TrafficFormatInvalid(f"more than {FILES_MAX} files", path=str(out))
    report = IngestReport(output=str(out))
    temporary = out.with_name(f".{out.name}.{os.getpid()}.partial")
    meter = _Meter(on_progress, sum(_size(path) for path in files))
    connection = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT})
    connection.execute("SET TimeZone = 'UTC'").fetchall()  # timestamps reach Arrow as UTC, like the dataset's
    if threads is not None:
        connection.execute(f"SET threads = {int(threads)}").fetchall()
    try:
        with pq.ParquetWriter(temporary, SCHEMA, compression="zstd") as writer:
            behind = WriteBehind(writer)
            try:
                for path, prefix in zip(files, _prefixes(files), strict=True):
                    _ingest_file(connection, path, prefix, behind, report, meter)
                    meter.file_done(_size(path))
            except BaseException:
                behind.abandon()
                raise
            behind.close()
            if report.rows == 0:
                writer.write_table(SCHEMA.empty_table())
        temporary.replace(out)
    finally:
        connection.close()
        temporary.unlink(missing_ok=True)
    meter.report(force=True)
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise TrafficFormatInvalid(f"unreadable: {exc}", path=str(path)) from exc


class _Meter:
    """Progress, at most once per ``INTERVAL_SECONDS``."""

    INTERVAL_SECONDS: Final = 0.25

    def __init__(self, callback: Callable[[IngestProgress], None] | None, total: int) -> None:
        self.callback, self.total = callback, total
        self.started = self.last = time.perf_counter()
        self.lines = self.rows = self.done = self.position = 0

    def block(self, lines: int, rows: int, position: int) -> None:
        self.lines += lines
        self.rows += rows
        self.position = position
        self.report()

    def file_done(self, size: int) -> None:
        self.done += size
        self.position = 0

    def report(self, *, force: bool = False) -> None:
        now = time.perf_counter()
        if self.callback is None or (not force and now - self.last < self.INTERVAL_SECONDS):
            return
        self.last = now
        self.callback(IngestProgress(self.lines, self.rows, min(self.done + self.position, self.total), self.total,
                                     now - self.started))  # fmt: skip


def _head(blocks: Iterator[Block]) -> tuple[list[Block], list[tuple[int, bytes | None]]]:
    """The first blocks, enough to hold ``PROBE_LINES`` lines, and those lines as the probe sees them."""
    taken: list[Block] = []
    head: list[tuple[int, bytes | None]] = []
    for block in blocks:
        taken.append(block)
        long = set(block.long)
        for position in range(min(len(block.lines), PROBE_LINES - len(head))):
            raw = None if position in long else line_text(block.lines[position].as_py())
            head.append((block.first + position, raw))
        if len(head) >= PROBE_LINES:
            break
    return taken, head


def _ingest_file(
    connection: duckdb.DuckDBPyConnection, path: Path, prefix: str, writer: WriteBehind,
    report: IngestReport, meter: _Meter,
) -> None:  # fmt: skip
    blocks = read_ahead(read_blocks(path, block_bytes=BLOCK_BYTES))
    try:
        taken, head = _head(blocks)
        kind = probe(path, head)
        report.formats[str(path)] = kind
        parser = _parser(kind)
        for block in chain(taken, blocks):
            table = _block(connection, parser, block, path, prefix, report)
            if table.num_rows:
                writer.write(table)
            report.rows += table.num_rows
            meter.block(len(block.lines), table.num_rows, block.position)
    except (OSError, EOFError, zlib.error) as exc:
        raise TrafficFormatInvalid(f"unreadable: {exc}", path=str(path)) from exc
    finally:
        blocks.close()


_Parser = Callable[[duckdb.DuckDBPyConnection, Block, str], fast.Parsed]


def _parser(kind: LogFormat) -> _Parser:
    if kind == "combined":
        return lambda connection, block, prefix: fast.parse_combined_block(connection, block, prefix=prefix)
    if kind == "w3c":
        w3c = fast.W3cParser()
        return lambda connection, block, prefix: w3c.parse(connection, block, prefix=prefix)
    return lambda connection, block, prefix: jsonl.parse_json_block(connection, block, prefix=prefix)


def _block(
    connection: duckdb.DuckDBPyConnection, parser: _Parser, block: Block, path: Path, prefix: str,
    report: IngestReport,
) -> pa.Table:  # fmt: skip
    """The records of one block in line order; its problems reported in line order."""
    problems = [LineProblem(str(path), block.first + position, f"longer than {LINE_BYTES_MAX} bytes", "")
                for position in block.long]  # fmt: skip
    long = set(block.long)
    parsed = parser(connection, block, prefix)
    kind = report.formats[str(path)]
    records: list[RequestRecord] = []
    positions: list[int] = []
    for position, fields in parsed.refused:
        if position in long:
            continue
        line = line_text(block.lines[position].as_py())
        if not line.strip() or (kind == "w3c" and line.startswith(b"#")):
            continue
        number = block.first + position
        try:
            records.append(parse_line(kind, line, f"{prefix}{number}", fields))
        except Malformed as exc:
            problems.append(LineProblem(str(path), number, str(exc), clean_text(line[:EXAMPLE_CHARS_MAX])))
            continue
        positions.append(position)
    for problem in sorted(problems, key=lambda item: item.line):
        report.reject(problem)
    table = parsed.table
    if records:
        slow = pa.Table.from_batches([to_batch(records)])
        slow = slow.add_column(0, "pos", pa.array(positions, pa.int64()))
        table = pa.concat_tables([table, slow])
    if not _ascending(table.column("pos").combine_chunks()):
        table = table.sort_by("pos")
    return table.drop_columns(["pos"]).cast(SCHEMA)


def _ascending(positions: pa.Array) -> bool:
    # DuckDB keeps the order of its input (preserve_insertion_order); checked, not assumed.
    return len(positions) < 2 or bool(pc.all(pc.less(positions[:-1], positions[1:])).as_py())
