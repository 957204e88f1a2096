"""The local backup writer on a full disk: a clear error naming the object, and no partial file left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feint.backup.storage import LocalWriter, StorageError

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) to refuse writes"),
]


def _full(writer: LocalWriter) -> None:
    """Swap the writer's file for /dev/full: writes are buffered, the flush fails with ENOSPC."""
    real = writer._file
    assert real is not None
    real.close()
    writer._file = open("/dev/full", "wb")  # closed by the writer


def test_commit_on_a_full_disk_is_a_storage_error_and_abort_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "monthly" / "b1" / "dump.pgc.zst.tink"
    writer = LocalWriter(target)
    partial = target.with_name(f".{target.name}.partial")
    assert partial.exists()
    _full(writer)
    writer.write(b"x" * 100)
    with pytest.raises(StorageError, match="No space left on device") as raised:
        writer.commit()
    assert str(target) in raised.value.detail
    writer.abort()  # the failed close is logged, not raised: the commit's error is the one reported
    assert not partial.exists() and not target.exists()


def test_a_write_that_hits_the_full_disk_is_a_storage_error(tmp_path: Path) -> None:
    writer = LocalWriter(tmp_path / "obj")
    _full(writer)
    with pytest.raises(StorageError, match="writing failed"):
        writer.write(b"y" * (1 << 20))  # larger than the buffer: written through at once
    writer.abort()
    assert list(tmp_path.iterdir()) == []
