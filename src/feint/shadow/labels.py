"""Labels: a CSV file ``id,label`` (1 = bot or attack, 0 = benign) to a Parquet table.

Read as a stream (gzip or plain). A line with the wrong number of columns, an empty id or a label
other than 0/1 is malformed; ids labelled twice with different labels are malformed on every such
line (which one is right is unknowable), ids repeated with the same label count once. Each
problem is counted with its line number and the first ``EXAMPLES_MAX`` are kept, never dropped
silently. The table (``id``, ``label``) is what the evaluation joins with the traffic.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from feint.shadow.errors import LabelsInvalid
from feint.shadow.ingest.reference import EXAMPLE_CHARS_MAX, EXAMPLES_MAX, ID_CHARS_MAX, LineProblem, open_log

LABEL_BATCH_ROWS: Final = 262_144
FAST_BLOCK_BYTES: Final = 4 << 20
LABEL_LINE_BYTES_MAX: Final = 4_096
LABELS_SCHEMA: Final = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
    ]
)


@dataclass
class LabelsReport:
    """What a labels file held: usable labels, and malformed lines with the first examples."""

    path: str
    labeled: int = 0
    malformed: int = 0
    duplicates: int = 0
    examples: list[LineProblem] = field(default_factory=list)

    def reject(self, problem: LineProblem) -> None:
        self.malformed += 1
        if len(self.examples) < EXAMPLES_MAX:
            self.examples.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "labeled": self.labeled,
            "malformed": self.malformed,
            "duplicates": self.duplicates,
            "examples": [example.to_dict() for example in self.examples],
        }


_LABELS: Final = pa.array(["0", "1"])


def _header(stream: IO[bytes], path: Path) -> None:
    header = stream.readline(LABEL_LINE_BYTES_MAX).decode("utf-8", "replace")
    names = [name.strip().lower() for name in header.lstrip("\ufeff").strip().split(",")]
    if names != ["id", "label"]:
        raise LabelsInvalid(f"the first line must be 'id,label', not {header.strip()!r}", path=str(path))


def _fast(path: Path, staging: Path) -> bool:
    """Read a clean file with Arrow's CSV reader (one C++ pass); False at the first oddity.

    Clean means: two columns on every line, no blank line, ids non-empty, trimmed, valid UTF-8
    and within ``ID_CHARS_MAX``, labels exactly 0 or 1. Then line numbers are row numbers plus
    two. Anything else is left to the line-by-line reader, which reports each problem exactly.
    """
    line = 2
    with open_log(path) as stream, pq.ParquetWriter(staging, LABELS_SCHEMA) as writer:
        _header(stream, path)
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(column_names=["id", "label"], block_size=FAST_BLOCK_BYTES),
                convert_options=pacsv.ConvertOptions(
                    column_types={"id": pa.string(), "label": pa.string()},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            for batch in reader:
                ids, labels = batch.column("id"), batch.column("label")
                clean = pc.and_(
                    pc.and_(pc.is_in(labels, value_set=_LABELS), pc.equal(ids, pc.utf8_trim_whitespace(ids))),
                    pc.and_(pc.greater(pc.utf8_length(ids), 0), pc.less_equal(pc.utf8_length(ids), ID_CHARS_MAX)),
                )
                if not pc.all(clean).as_py():
                    return False
                rows = batch.num_rows
                lines = pa.array(np.arange(line, line + rows, dtype=np.int64))
                writer.write_table(pa.table([ids, pc.cast(labels, pa.int8()), lines], schema=LABELS_SCHEMA))
                line += rows
        except pa.ArrowInvalid:
            return False
    return True


def _rows(path: Path, report: LabelsReport) -> Iterator[tuple[str, int, int]]:
    with open_log(path) as stream:
        _header(stream, path)
        number = 1
        while raw := stream.readline(LABEL_LINE_BYTES_MAX + 1):
            number += 1
            text = raw.decode("utf-8", "backslashreplace")
            problem = _check(text, raw)
            if problem is None and not text.strip():
                continue
            if problem is None:
                cells = next(csv.reader([text])) if '"' in text else text.rstrip("\r\n").split(",")
                problem, parsed = _cells(cells)
                if parsed is not None:
                    yield parsed[0], parsed[1], number
                    continue
            shown = text[:EXAMPLE_CHARS_MAX].rstrip("\r\n")
            report.reject(LineProblem(str(path), number, problem or "malformed", shown))
            while not raw.endswith(b"\n") and raw:  # rest of an overlong line
                raw = stream.readline(LABEL_LINE_BYTES_MAX)


def _check(text: str, raw: bytes) -> str | None:
    if len(raw) > LABEL_LINE_BYTES_MAX and not raw.endswith(b"\n"):
        return f"longer than {LABEL_LINE_BYTES_MAX} bytes"
    return None


def _cells(cells: list[str]) -> tuple[str | None, tuple[str, int] | None]:
    if len(cells) != 2:
        return f"{len(cells)} columns, expected 2 (id,label)", None
    request_id, label = cells[0].strip(), cells[1].strip()
    if not request_id:
        return "empty id", None
    if len(request_id) > ID_CHARS_MAX:
        return f"id longer than {ID_CHARS_MAX} characters", None
    if label not in ("0", "1"):
        return f"label {label!r} is not 0 or 1", None
    return None, (request_id, int(label))


def load_labels(path: Path, out: Path) -> LabelsReport:
    """Read a labels CSV into a Parquet table at ``out`` (one row per usable id)."""
    report = LabelsReport(path=str(path))
    staging = out.with_name(f".{out.name}.{os.getpid()}.lines")
    try:
        if not _fast(path, staging):
            _exact(path, staging, report)
        _deduplicate(staging, out, report)
    finally:
        staging.unlink(missing_ok=True)
    return report


def _exact(path: Path, staging: Path, report: LabelsReport) -> None:
    """The line-by-line reader: slower, and exact about every problem and its line."""
    with pq.ParquetWriter(staging, LABELS_SCHEMA) as writer:
        batch: list[tuple[str, int, int]] = []
        for row in _rows(path, report):
            batch.append(row)
            if len(batch) == LABEL_BATCH_ROWS:
                writer.write_table(_table(batch))
                batch = []
        writer.write_table(_table(batch))


def _table(rows: list[tuple[str, int, int]]) -> pa.Table:
    ids, labels, lines = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table(
        [pa.array(ids, pa.string()), pa.array(labels, pa.int8()), pa.array(lines, pa.int64())],
        schema=LABELS_SCHEMA,
    )


def _deduplicate(staging: Path, out: Path, report: LabelsReport) -> None:
    """Keep one row per id; ids with conflicting labels become malformed (DuckDB spills to disk).

    One aggregation per id (labels seen, lines, first line) is kept in a temporary table; every
    count and the output are read from it rather than grouping the file again.
    """
    source = f"read_parquet({_quote(str(staging))})"
    connection = duckdb.connect()
    try:
        connection.execute(
            f"CREATE TEMP TABLE per_id AS SELECT id, min(label) AS low, max(label) AS high, "
            f"count(*) AS lines, min(line) AS first FROM {source} GROUP BY id"
        )
        totals = connection.execute(
            "SELECT coalesce(sum(lines) FILTER (WHERE low <> high), 0), count(*) FILTER (WHERE low = high), "
            "coalesce(sum(lines - 1) FILTER (WHERE low = high), 0) FROM per_id"
        ).fetchall()[0]
        examples = connection.execute(
            f"SELECT s.id, s.label, s.line FROM {source} AS s JOIN (SELECT id FROM per_id WHERE low <> high "
            f"ORDER BY first LIMIT {EXAMPLES_MAX}) USING (id) ORDER BY s.line LIMIT {EXAMPLES_MAX}"
        ).fetchall()
        connection.execute(
            f"COPY (SELECT id, low AS label, first AS line FROM per_id WHERE low = high ORDER BY first) "
            f"TO {_quote(str(out))} (FORMAT parquet)"
        )
    finally:
        connection.close()
    report.malformed += int(totals[0])
    for request_id, label, line in examples:
        if len(report.examples) < EXAMPLES_MAX:
            shown = f"{request_id},{label}"
            report.examples.append(LineProblem(report.path, int(line), "id labelled 0 and 1", shown))
    report.labeled = int(totals[1])
    report.duplicates = int(totals[2])
    if report.labeled == 0:
        raise LabelsInvalid("no usable label in the file", path=report.path)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
