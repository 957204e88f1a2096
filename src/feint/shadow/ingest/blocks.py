"""A log file as blocks of numbered lines, read at disk speed with bounded memory.

The reference reader (``reference._lines``) takes one ``readline`` per line; this one reads
``BLOCK_BYTES`` at a time (decompressed, for gzip), cuts at the last newline, and splits the block
into an Arrow array of lines in C. The lines are exactly the reference's: split at ``\\n`` only; a
last line without a newline counts; a line whose content passes ``LINE_BYTES_MAX`` is *long*: it is
numbered and reported, its bytes are never held (a 10 GB line costs one block of memory). Each line
in a block keeps its bytes as read, without the ``\\n``; stripping trailing ``\\r`` is the parser's.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, cast

import pyarrow as pa
import pyarrow.compute as pc

from feint.shadow.ingest.reference import GZIP_MAGIC, LINE_BYTES_MAX

# Bytes of text per block: large enough that DuckDB's threads each get many rows of it, small
# enough that a block, its lines and the parsed columns stay within ~0.5 GB.
BLOCK_BYTES: Final = 48 << 20


@dataclass(frozen=True, slots=True)
class Block:
    """Lines ``first`` to ``first + len(lines) - 1`` of a file (1-based).

    ``long`` holds the positions (0-based, in ``lines``) of lines over ``LINE_BYTES_MAX``; their
    entries in ``lines`` are empty. ``position`` is how far the file has been read, in bytes of
    the file as stored (compressed, for gzip), for progress."""

    first: int
    lines: pa.BinaryArray
    long: tuple[int, ...]
    position: int


class _Source:
    """The file's bytes (decompressed when gzip), with the stored position for progress."""

    def __init__(self, path: Path) -> None:
        self._raw: IO[bytes] = path.open("rb")
        try:
            gzipped = self._raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
            self._raw.seek(0)
            self._stream: IO[bytes] = (
                cast(IO[bytes], gzip.GzipFile(fileobj=self._raw, mode="rb")) if gzipped else self._raw
            )
        except BaseException:
            self._raw.close()
            raise

    def read(self, size: int) -> bytes:
        return self._stream.read(size)

    def position(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._raw.close()


def _split(text: bytes) -> pa.BinaryArray:
    """The lines of ``text``, which ends with a newline (or is the file's unterminated tail)."""
    if text.endswith(b"\n"):
        text = text[:-1]
    lines = pc.split_pattern(pa.array([text], pa.binary()), pattern=b"\n").flatten()
    if not isinstance(lines, pa.BinaryArray):  # pragma: no cover - Arrow's split keeps the type
        raise TypeError(f"split gave {lines.type}")
    return lines


def _with_long(lines: pa.BinaryArray, leading_long: int) -> tuple[pa.BinaryArray, tuple[int, ...]]:
    """Lines over the limit blanked and their positions; ``leading_long`` long lines come first."""
    too_long = pc.greater(pc.binary_length(lines), LINE_BYTES_MAX)
    positions = tuple(range(leading_long))
    if pc.any(too_long).as_py():
        found = pc.indices_nonzero(too_long).to_pylist()
        lines = pc.if_else(too_long, pa.scalar(b"", pa.binary()), lines)
        positions += tuple(leading_long + index for index in found)
    if leading_long:
        lines = pa.concat_arrays([pa.array([b""] * leading_long, pa.binary()), lines])
    return lines, positions


def read_blocks(path: Path, *, block_bytes: int = BLOCK_BYTES) -> Iterator[Block]:
    """The file's lines in blocks; raises what the file system or the decompressor raises."""
    source = _Source(path)
    try:
        yield from _blocks(source, block_bytes)
    finally:
        source.close()


def _blocks(source: _Source, block_bytes: int) -> Iterator[Block]:
    number = 1
    rest = b""  # the start of a line that the last read cut, at most LINE_BYTES_MAX bytes
    skipping = False  # inside a long line whose start was already dropped
    pending_long = 0  # long lines ended in reads that yielded no block yet
    while True:
        data = source.read(block_bytes)
        ended = not data
        if skipping:
            end = data.find(b"\n")
            if end < 0 and not ended:
                continue  # still the long line: drop the whole read
            skipping, pending_long = False, pending_long + 1
            data = data[end + 1 :] if end >= 0 else b""
            if not data and not ended:
                continue
        if ended:
            if rest or pending_long:
                lines, long = _with_long(_split(rest) if rest else pa.array([], pa.binary()), pending_long)
                yield Block(number, lines, long, source.position())
            return
        text = rest + data
        cut = text.rfind(b"\n") + 1
        if cut == 0:
            if len(text) > LINE_BYTES_MAX:  # no line end in sight: a long line, drop what we have
                rest, skipping = b"", True
            else:
                rest = text
            continue
        rest = text[cut:]
        if len(rest) > LINE_BYTES_MAX:
            rest, skipping = b"", True
        lines, long = _with_long(_split(text[:cut]), pending_long)
        pending_long = 0
        yield Block(number, lines, long, source.position())
        number += len(lines)


def line_text(raw: bytes) -> bytes:
    """A line's content as the reference parsers see it: without trailing ``\\r`` (and ``\\n``)."""
    return raw.rstrip(b"\r\n")
