"""Bad input gets a clear error: wrong key, flipped byte, unreachable endpoint, interrupted upload, non-empty target."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from feint.backup import keys as backup_keys
from feint.backup import pipeline, verify
from feint.backup.drill import LedgerWriter
from feint.backup.keys import BackupKeys, KeyNotInKeyset
from feint.backup.manifest import OBJECT_NAME
from feint.backup.pipeline import HashMismatch
from feint.backup.seaweed import _free_ports
from feint.backup.storage import (
    PART_BYTES_MIN,
    S3_ATTEMPTS_MAX,
    LocalStorage,
    S3Storage,
    Storage,
    StorageUnavailable,
)
from feint.platform.crypto import LocalMasterKey

pytestmark = pytest.mark.integration


def _restore_target(url: str, name: str) -> str:
    target = verify.with_database(url, name)
    verify.create_database(target)
    return target


def _drop(url: str, target: str) -> None:
    with psycopg.connect(verify.with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{verify.database_name(target)}" WITH (FORCE)')


def test_wrong_key_is_named(
    storage: Storage, keyset: BackupKeys, provider: LocalMasterKey, tmp_path: Path, clean_db: str
) -> None:
    """A keyset without the backup's key: "cannot decrypt: key <id> is not in the keyset"."""
    manifest = pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    other = backup_keys.generate(tmp_path / "other.keyset", provider)
    with pytest.raises(KeyNotInKeyset, match=f"^cannot decrypt: key {manifest.key_id} is not in the keyset$"):
        verify.verify_backup(storage=storage, manifest=manifest, keys=other, server_url=clean_db)


def test_flipped_byte_is_a_named_hash_mismatch_and_nothing_is_restored(
    keyset: BackupKeys, tmp_path: Path, filled_ledger: LedgerWriter, clean_db: str
) -> None:
    """One flipped byte in the stored object: the hash mismatch is named and the target stays empty."""
    storage = LocalStorage(tmp_path / "b")
    manifest = pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    path = tmp_path / "b" / manifest.folder / OBJECT_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    target = _restore_target(clean_db, "feint_verify_flip")
    try:
        with pytest.raises(HashMismatch, match=f"hash mismatch: {manifest.object_key} has SHA-256 [0-9a-f]{{64}}"):
            pipeline.restore_into(
                storage=storage, manifest=manifest, keys=keyset, target_url=target, clean=False, privileges=True
            )
        assert verify.target_state(target) == (True, 0)  # the single transaction rolled back
    finally:
        _drop(clean_db, target)


def test_rotated_keyset_still_reads_old_backups(
    storage: Storage, keyset_path: Path, provider: LocalMasterKey, clean_db: str
) -> None:
    """After rotate-key, new backups use the new primary and older ones still verify."""
    old_keys = backup_keys.load(keyset_path, provider)
    old = pipeline.create_backup(database_url=clean_db, storage=storage, keys=old_keys)
    before, after = backup_keys.rotate(keyset_path, provider)
    assert after.primary_key_id != before.primary_key_id and before.primary_key_id in after.key_ids
    rotated = backup_keys.load(keyset_path, provider)
    new = pipeline.create_backup(database_url=clean_db, storage=storage, keys=rotated)
    assert new.key_id == after.primary_key_id
    assert verify.verify_backup(storage=storage, manifest=old, keys=rotated, server_url=clean_db).ok


def test_unreachable_endpoint_fails_after_bounded_retries(keyset: BackupKeys, clean_db: str) -> None:
    """No server on the port: StorageUnavailable naming the endpoint and the attempts, within seconds."""
    (port,) = _free_ports(1)
    storage = S3Storage(bucket="nowhere", prefix="x", endpoint_url=f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(
        StorageUnavailable, match=f"cannot reach the S3 endpoint http://127.0.0.1:{port}.*{S3_ATTEMPTS_MAX} attempts"
    ):
        pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    assert time.monotonic() - started < 60


def test_interrupted_upload_leaves_no_parts(s3_storage: S3Storage) -> None:
    """An upload that fails after two parts is aborted: no multipart upload, no object remains."""
    writer = s3_storage.writer("daily/x/" + OBJECT_NAME, part_bytes=PART_BYTES_MIN)
    writer.write(b"\x00" * (2 * PART_BYTES_MIN + 10))
    assert s3_storage.pending_uploads() != []
    writer.abort()  # what create_backup does on any exception
    assert s3_storage.pending_uploads() == []
    assert s3_storage.list_keys() == []


def test_interrupted_backup_aborts_the_upload(
    s3_storage: S3Storage, keyset: BackupKeys, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump failing mid-backup: the error names pg_dump, and no upload or manifest is left behind."""
    monkeypatch.setattr(pipeline.postgres, "choose", lambda *_a, **_k: pipeline.postgres.Tool(
        path=Path("/bin/false"), major=99, version="false"))  # fmt: skip
    with pytest.raises(pipeline.BackupFailed, match=r"pg_dump .* exited with 1"):
        pipeline.create_backup(database_url=clean_db, storage=s3_storage, keys=keyset)
    assert s3_storage.pending_uploads() == []
    assert pipeline.catalog(s3_storage).manifests == []


def test_tink_refuses_wrong_associated_data(storage: Storage, keyset: BackupKeys, clean_db: str) -> None:
    """An object presented under another backup id does not decrypt (associated data binds the id)."""
    import dataclasses

    manifest = pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    moved = dataclasses.replace(manifest, id=manifest.id[:-6] + "000000")
    with pytest.raises(
        pipeline.DecryptionFailed, match=f"cannot decrypt {moved.object_key} with key {manifest.key_id}"
    ):
        pipeline.stream_plaintext(
            storage=_Renamed(storage, manifest.object_key, moved.object_key), manifest=moved, keys=keyset,
            consume=lambda _b: None,
        )  # fmt: skip


class _Renamed:
    """Storage that serves one object under another key (a backup moved to another id)."""

    def __init__(self, inner: Storage, real: str, alias: str) -> None:
        self._inner, self._real, self._alias = inner, real, alias

    def reader(self, key: str):  # type: ignore[no-untyped-def]
        return self._inner.reader(self._real if key == self._alias else key)


def test_full_disk_is_named_and_leaves_no_partial_file(
    keyset: BackupKeys, tmp_path: Path, filled_ledger: LedgerWriter, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target refuses bytes (ENOSPC from /dev/full, raised inside Tink's stream): the storage's own
    error naming the object and the cause comes out, not Tink's wrapper, and no file is left."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to refuse writes")
    from feint.backup import storage as storage_module

    real_init = storage_module.LocalWriter.__init__

    def full_disk(self: storage_module.LocalWriter, path: Path) -> None:
        real_init(self, path)
        assert self._file is not None
        self._file.close()
        self._file = open("/dev/full", "wb")  # closed by the writer's commit or abort

    monkeypatch.setattr(storage_module.LocalWriter, "__init__", full_disk)
    storage = LocalStorage(tmp_path / "b")
    with pytest.raises(storage_module.StorageError, match="writing failed: No space left on device"):
        pipeline.create_backup(database_url=clean_db, storage=storage, keys=keyset)
    assert [p for p in (tmp_path / "b").rglob("*") if p.is_file()] == []
