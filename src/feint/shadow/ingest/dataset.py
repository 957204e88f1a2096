"""The Parquet layout of a traffic dataset, and conversions between records and Arrow."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from feint.shadow.record import RECORD_FIELDS, RequestRecord

SCHEMA: Final = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC")),
        pa.field("c_ip", pa.string()),
        pa.field("cs_method", pa.string()),
        pa.field("cs_uri_stem", pa.string()),
        pa.field("cs_uri_query", pa.string()),
        pa.field("cs_user_agent", pa.string()),
        pa.field("cs_referer", pa.string()),
        pa.field("sc_status", pa.int32()),
        pa.field("cs_host", pa.string()),
        pa.field("cs_version", pa.string()),
        pa.field("request_line", pa.string()),
    ]
)
# Rows per Parquet row group and per batch written or read: bounds memory while streaming.
BATCH_ROWS: Final = 65_536
STATUS_MIN: Final = -(2**31)
STATUS_MAX: Final = 2**31 - 1

if tuple(SCHEMA.names) != RECORD_FIELDS:  # pragma: no cover - a change to one must reach both
    raise RuntimeError("dataset SCHEMA and RequestRecord fields disagree")


def to_batch(records: Iterable[RequestRecord]) -> pa.RecordBatch:
    """Records as one Arrow batch in the dataset schema."""
    rows = list(records)
    columns = [
        pa.array([getattr(r, name) for r in rows], type=f.type) for name, f in zip(RECORD_FIELDS, SCHEMA, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def from_batch(batch: pa.RecordBatch) -> Iterator[RequestRecord]:
    """The records of a batch in the dataset schema."""
    columns = [batch.column(name).to_pylist() for name in RECORD_FIELDS]
    for values in zip(*columns, strict=True):
        yield RequestRecord(**dict(zip(RECORD_FIELDS, values, strict=True)))


def write_records(path: Path, records: Iterable[RequestRecord]) -> int:
    """Write records as a Parquet dataset file in batches; returns the row count."""
    count = 0
    with pq.ParquetWriter(path, SCHEMA, compression="zstd") as writer:
        chunk: list[RequestRecord] = []
        for record in records:
            chunk.append(record)
            if len(chunk) == BATCH_ROWS:
                writer.write_batch(to_batch(chunk), row_group_size=BATCH_ROWS)
                count += len(chunk)
                chunk = []
        if chunk or count == 0:
            writer.write_batch(to_batch(chunk), row_group_size=BATCH_ROWS)
            count += len(chunk)
    return count


def read_records(path: Path, *, batch_rows: int = BATCH_ROWS) -> Iterator[RequestRecord]:
    """Stream the records of a Parquet dataset file."""
    with pq.ParquetFile(path) as file:
        for batch in file.iter_batches(batch_size=batch_rows, columns=list(RECORD_FIELDS)):
            yield from from_batch(batch)
