"""A log file as blocks of numbered lines, read at disk speed with bounded memory.

The reference reader (``reference._lines``) takes one ``readline`` per line; this one reads
``BLOCK_BYTES`` at a time (decompressed, for gzip), cuts at the last newline, and splits the block
into an Arrow array of lines without copying them (the newlines are found by numpy, the array's
offsets point into the block's bytes). The lines are exactly the reference's: split at ``\\n`` only; a
last line without a newline counts; a line whose content passes ``LINE_BYTES_MAX`` is *long*: it is
numbered and reported, its bytes are never held (a 10 GB line costs one block of memory). Each line
in a block keeps its bytes as read, *with* its ``\\n`` (the last line of a file may have none);
stripping the trailing ``\\r`` and ``\\n`` is the parser's (``line_text``).
"""

from __future__ import annotations

import gzip
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feint.shadow.ingest.reference import GZIP_MAGIC, LINE_BYTES_MAX

# Bytes of text per block: large enough that DuckDB's threads each get many rows of it, small
# enough that a block, its lines and the parsed columns stay within ~0.5 GB.
BLOCK_BYTES: Final = 48 << 20
# Bytes compared at a time when looking for newlines: the comparison's scratch stays in cache.
_SCAN_BYTES: Final = 1 << 20
_NEWLINE: Final = 10


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


def _newlines(data: np.ndarray) -> np.ndarray:
    """Positions of the ``\\n`` bytes of ``data``."""
    scratch = np.empty(min(len(data), _SCAN_BYTES), dtype=np.bool_)
    found = [np.empty(0, dtype=np.int64)]
    for start in range(0, len(data), _SCAN_BYTES):
        part = data[start : start + _SCAN_BYTES]
        hits = scratch[: len(part)]
        np.equal(part, _NEWLINE, out=hits)
        found.append(np.flatnonzero(hits) + start)
    return np.concatenate(found)


def _split(text: bytes, leading_long: int) -> tuple[pa.BinaryArray, tuple[int, ...]]:
    """The lines of ``text`` (which ends with a newline, or is the file's unterminated tail), each
    with its newline, and the positions of the long ones (blanked); ``leading_long`` long lines
    that ended before ``text`` come first, blank."""
    if len(text) >= 2**31:  # pragma: no cover - BLOCK_BYTES is far below; Arrow's offsets are 32-bit
        raise ValueError("block too large")
    ends = _newlines(np.frombuffer(text, dtype=np.uint8))
    tail = bool(text) and not text.endswith(b"\n")
    count = leading_long + len(ends) + tail
    offsets = np.zeros(count + 1, dtype=np.int32)
    offsets[leading_long + 1 : leading_long + 1 + len(ends)] = ends + 1
    if tail:
        offsets[-1] = len(text)
    lines = pa.BinaryArray.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)])
    content = np.diff(offsets)
    content[leading_long : leading_long + len(ends)] -= 1  # the newline is not content
    found = np.flatnonzero(content > LINE_BYTES_MAX)
    if len(found):
        too_long = np.zeros(count, dtype=np.bool_)
        too_long[found] = True
        lines = pc.if_else(pa.array(too_long), pa.scalar(b"", pa.binary()), lines)
    return lines, tuple(range(leading_long)) + tuple(int(index) for index in found)


def read_blocks(path: Path, *, block_bytes: int = BLOCK_BYTES) -> Generator[Block, None, None]:
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
                lines, long = _split(rest, pending_long)
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
        lines, long = _split(text[:cut], pending_long)
        pending_long = 0
        yield Block(number, lines, long, source.position())
        number += len(lines)


def line_text(raw: bytes) -> bytes:
    """A line's content as the reference parsers see it: without trailing ``\\r`` (and ``\\n``)."""
    return raw.rstrip(b"\r\n")
