"""The backup stream, both ways, end to end without holding a dump in memory or on disk.

create:  pg_dump -Fc -Z0 --snapshot ─► zstd ─► Tink streaming AEAD ─► SHA-256 ─► storage (multipart)
restore: storage ─► SHA-256 ─► Tink streaming AEAD ─► zstd ─► pg_restore --single-transaction

Memory: each stage holds one chunk (``CHUNK_BYTES``) or one Tink segment (1 MiB), and the
storage writer holds at most ``UPLOADS_IN_FLIGHT_MAX + 1`` parts; nothing grows with the
database. pg_dump writes uncompressed (``-Z0``) so that compression happens once, in zstd.

Integrity: the manifest's SHA-256 covers the stored bytes. A restore hashes while it decrypts;
when decryption fails it reads the rest of the object so that it can say whether the stored
bytes were altered (hash mismatch, named) or the key is wrong. pg_restore runs in one
transaction and its input is closed only after the hash has matched, so a damaged backup is
never half restored: on any failure pg_restore is killed and its transaction rolls back.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import secrets
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, BinaryIO

import tink
import zstandard

from feint.backup import postgres
from feint.backup.keys import TEMPLATE_NAME, BackupKeys
from feint.backup.manifest import (
    BACKUP_ID,
    KINDS,
    MANIFEST_NAME,
    OBJECT_NAME,
    Kind,
    Manifest,
    ManifestInvalid,
    folder_of,
    parse,
)
from feint.backup.storage import Storage, part_bytes_for
from feint.errors import FeintError, NotFound
from feint.platform.crypto import DecryptionFailed

CHUNK_BYTES = 1024 * 1024
ZSTD_LEVEL = 1  # measured: level 3 costs twice the CPU for 1% smaller output on ledger data (RESULTS.md)
STDERR_BYTES_MAX = 64 * 1024
PROCESS_EXIT_SECONDS_MAX = 60
ROW_COUNT_SECONDS_MAX = 6 * 3600

Progress = Callable[[int], None]


class BackupFailed(FeintError):
    slug, title = "backup-failed", "Backup failed"


class RestoreFailed(FeintError):
    slug, title = "restore-failed", "Restore failed"


class HashMismatch(FeintError):
    slug, title = "backup-hash-mismatch", "Backup hash mismatch"

    def __init__(self, *, key: str, expected: str, actual: str, stored_bytes: int) -> None:
        super().__init__(
            f"hash mismatch: {key} has SHA-256 {actual} ({stored_bytes} bytes), the manifest says {expected}",
            expected=expected,
            actual=actual,
        )


def _no_progress(_: int) -> None:
    return None


class _StderrTail:
    """Reads a process's stderr on a thread, keeping its last ``STDERR_BYTES_MAX`` bytes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._stream = stream
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        while chunk := stream.read(4096):
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size > STDERR_BYTES_MAX and len(self._chunks) > 1:
                self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        self._thread.join(timeout=PROCESS_EXIT_SECONDS_MAX)
        return b"".join(self._chunks).decode(errors="replace").strip()

    def close(self) -> None:
        """After the process has exited: wait for the reader and close the pipe."""
        self._thread.join(timeout=PROCESS_EXIT_SECONDS_MAX)
        self._stream.close()


class _HashingSink(io.RawIOBase):
    """What Tink writes to: hashes and counts the stored bytes, hands them to the storage writer."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        # Tink calls write() from C++ and wraps what it raises in its own error: the original
        # (a full disk, an S3 failure) is kept here so that it is the one reported.
        self.failure: FeintError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        block = bytes(data)
        self.sha256.update(block)
        self.bytes += len(block)
        try:
            self._write(block)
        except FeintError as exc:
            self.failure = exc
            raise
        return len(block)


class _HashingSource(io.RawIOBase):
    """What Tink reads from: the stored object, hashed and counted as it passes."""

    def __init__(self, reader: BinaryIO, progress: Progress) -> None:
        self._reader = reader
        self._progress = progress
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._reader.read(len(buffer))
        self.sha256.update(data)
        self.bytes += len(data)
        self._progress(len(data))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Hash whatever the decrypter did not read (all of it, after a decryption failure)."""
        while data := self._reader.read(CHUNK_BYTES):
            self.sha256.update(data)
            self.bytes += len(data)
            self._progress(len(data))

    def close(self) -> None:
        # Tink closes its source when done; the storage reader is closed by whoever opened it.
        super().close()


# --- catalog ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalog:
    """The backups under a storage prefix: complete ones (with a manifest) and incomplete ones."""

    manifests: list[Manifest]
    incomplete: list[str]  # folders with objects but no manifest (interrupted or in progress)

    def find(self, ident: str) -> Manifest:
        if not self.manifests:
            raise NotFound("no backups yet")
        if ident == "latest":
            # Two backups can start in the same second: their start times, not their ids, order them.
            return max(self.manifests, key=lambda m: (m.started_at, m.id))
        for manifest in self.manifests:
            if manifest.id == ident:
                return manifest
        raise NotFound(f"no backup {ident!r} (see `feint backup list`)")


def catalog(storage: Storage) -> Catalog:
    """Every backup in storage, oldest first (ids sort by time)."""
    folders: dict[str, set[str]] = {}
    for key in storage.list_keys():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] in KINDS and BACKUP_ID.fullmatch(parts[1]):
            folders.setdefault(f"{parts[0]}/{parts[1]}", set()).add(parts[2])
    manifests: list[Manifest] = []
    incomplete: list[str] = []
    for folder, names in folders.items():
        if MANIFEST_NAME not in names:
            incomplete.append(folder)
            continue
        manifest = parse(storage.get(f"{folder}/{MANIFEST_NAME}"), where=f"{storage.url}/{folder}/{MANIFEST_NAME}")
        if manifest.folder != folder:
            raise ManifestInvalid(f"{folder}/{MANIFEST_NAME} describes {manifest.folder}")
        manifests.append(manifest)
    manifests.sort(key=lambda m: m.id)
    return Catalog(manifests=manifests, incomplete=sorted(incomplete, key=lambda f: f.split("/")[1]))


def kind_for(started: datetime, existing: list[Manifest]) -> Kind:
    """The first backup of a calendar month (UTC) is that month's archive; the others are daily."""
    month = started.strftime("%Y%m")
    return "daily" if any(m.id.startswith(month) for m in existing if m.kind == "monthly") else "monthly"


def new_id(started: datetime) -> str:
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


# --- create -------------------------------------------------------------------------------


def create_backup(
    *,
    database_url: str,
    storage: Storage,
    keys: BackupKeys,
    progress: Progress = _no_progress,
    on_plan: Callable[[int], None] | None = None,
) -> Manifest:
    """Dump, compress, encrypt, hash and upload the database; returns the manifest written last."""
    started = datetime.now(UTC)
    existing = catalog(storage).manifests
    session = postgres.SnapshotSession(database_url)
    counter: threading.Thread | None = None
    try:
        snap = session.snapshot
        tool = postgres.choose("pg_dump", at_least=postgres.server_major(snap.server_version_num))
        kind = kind_for(started, existing)
        backup_id = new_id(started)
        if on_plan is not None:
            on_plan(snap.database_bytes)
        part_bytes = part_bytes_for(snap.database_bytes)
        counted: dict[str, Any] = {}

        def count() -> None:
            try:
                counted.update(rows=session.row_counts(), heads=session.audit_heads())
            except Exception as exc:  # noqa: BLE001 - reported by the main thread as BackupFailed
                counted["error"] = exc

        counter = threading.Thread(target=count, daemon=True)
        counter.start()
        writer = storage.writer(f"{folder_of(kind, backup_id)}/{OBJECT_NAME}", part_bytes=part_bytes)
        try:
            dump_bytes, compressed_bytes, sink = _stream_dump(
                tool=tool, url=database_url, snapshot=snap.snapshot_id, keys=keys, backup_id=backup_id,
                write=writer.write, progress=progress,
            )  # fmt: skip
            counter.join(timeout=ROW_COUNT_SECONDS_MAX)
            if "heads" not in counted:
                problem = counted.get("error", "took too long")
                raise BackupFailed(f"counting rows in the snapshot failed: {problem}")  # noqa: TRY301 - abort below
            stored_bytes = writer.commit()
        except BaseException:
            writer.abort()
            raise
    finally:
        if counter is not None:
            _stop_counting(session, counter)
        session.close()
    if stored_bytes != sink.bytes:
        raise BackupFailed(f"stored {stored_bytes} bytes but encrypted {sink.bytes}")
    manifest = Manifest(
        id=backup_id,
        kind=kind,
        database=snap.database,
        server_version=snap.server_version,
        server_version_num=snap.server_version_num,
        pg_dump_version=tool.version,
        pg_dump_major=tool.major,
        started_at=started,
        consistent_at=snap.consistent_at,
        finished_at=datetime.now(UTC),
        wal_lsn=snap.wal_lsn,
        database_bytes=snap.database_bytes,
        dump_bytes=dump_bytes,
        compressed_bytes=compressed_bytes,
        stored_bytes=stored_bytes,
        sha256=sink.sha256.hexdigest(),
        key_id=keys.info.primary_key_id,
        encryption=f"tink-streaming-aead/{TEMPLATE_NAME}",
        compression=f"zstd-{ZSTD_LEVEL}",
        part_bytes=part_bytes,
        row_counts=counted["rows"],
        audit_heads=counted["heads"],
    )
    storage.put(manifest.manifest_key, manifest.to_json())
    return manifest


def _stop_counting(session: postgres.SnapshotSession, counter: threading.Thread) -> None:
    """A failed dump must not wait for hours of counting: cancel the query, then wait for the thread."""
    if counter.is_alive():
        session.conn.cancel_safe()
        counter.join(timeout=PROCESS_EXIT_SECONDS_MAX)


def _stream_dump(
    *,
    tool: postgres.Tool,
    url: str,
    snapshot: str,
    keys: BackupKeys,
    backup_id: str,
    write: Callable[[bytes], None],
    progress: Progress,
) -> tuple[int, int, _HashingSink]:
    """Run pg_dump into the chain; returns (dump bytes, compressed bytes, the sink's hash and size)."""
    args = [str(tool.path), "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password"]
    proc = subprocess.Popen([*args, f"--dbname={url}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    if proc.stdout is None or proc.stderr is None:  # pragma: no cover - both are pipes
        raise BackupFailed("pg_dump started without pipes")
    stderr = _StderrTail(proc.stderr)
    sink = _HashingSink(write)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    dump_bytes = compressed_bytes = 0
    try:
        encrypting = keys.encrypting(sink, backup_id=backup_id)  # type: ignore[arg-type]
        while chunk := proc.stdout.read(CHUNK_BYTES):
            dump_bytes += len(chunk)
            packed = compressor.compress(chunk)
            compressed_bytes += len(packed)
            encrypting.write(packed)
            progress(len(chunk))
        code = proc.wait(timeout=PROCESS_EXIT_SECONDS_MAX)
        if code != 0:
            raise BackupFailed(f"pg_dump ({tool.path}) exited with {code}: {stderr.text()[-2000:]}")  # noqa: TRY301
        tail = compressor.flush()
        compressed_bytes += len(tail)
        encrypting.write(tail)
        encrypting.close()
    except BaseException as exc:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if sink.failure is not None and exc is not sink.failure:
            raise sink.failure from None  # what Tink wrapped: the storage's own, clear error
        raise
    finally:
        proc.stdout.close()
        stderr.close()
    return dump_bytes, compressed_bytes, sink


# --- restore ------------------------------------------------------------------------------


def stream_plaintext(
    *,
    storage: Storage,
    manifest: Manifest,
    keys: BackupKeys,
    consume: Callable[[bytes], None],
    progress: Progress = _no_progress,
) -> None:
    """Hand the dump, decrypted and decompressed, to ``consume``; return only once its hash matched."""
    reader = storage.reader(manifest.object_key)
    try:
        source = _HashingSource(reader, progress)
        decrypting = keys.decrypting(source, backup_id=manifest.id, key_id=manifest.key_id)  # type: ignore[arg-type]
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        try:
            while chunk := decrypting.read(CHUNK_BYTES):
                if out := decompressor.decompress(chunk):
                    consume(out)
        except tink.TinkError as exc:
            source.drain()
            _check_hash(source, manifest)
            raise DecryptionFailed(
                f"cannot decrypt {manifest.object_key} with key {manifest.key_id}: {exc}", key_id=manifest.key_id
            ) from exc
        source.drain()
        _check_hash(source, manifest)
        if not decompressor.eof:
            raise RestoreFailed(f"{manifest.object_key}: the zstd stream ends early")
    finally:
        reader.close()


def _check_hash(source: _HashingSource, manifest: Manifest) -> None:
    actual = source.sha256.hexdigest()
    if actual != manifest.sha256 or source.bytes != manifest.stored_bytes:
        raise HashMismatch(key=manifest.object_key, expected=manifest.sha256, actual=actual, stored_bytes=source.bytes)


def restore_into(
    *,
    storage: Storage,
    manifest: Manifest,
    keys: BackupKeys,
    target_url: str,
    clean: bool,
    privileges: bool,
    progress: Progress = _no_progress,
) -> None:
    """pg_restore the backup into ``target_url`` in one transaction (all of it or nothing)."""
    tool = postgres.choose("pg_restore", at_least=manifest.pg_dump_major)
    args = [str(tool.path), "--exit-on-error", "--single-transaction", "--no-owner", "--no-password"]
    if clean:
        args += ["--clean", "--if-exists"]
    if not privileges:
        args.append("--no-privileges")
    proc = subprocess.Popen(  # noqa: S603
        [*args, f"--dbname={target_url}"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if proc.stdin is None or proc.stderr is None:  # pragma: no cover - both are pipes
        raise RestoreFailed("pg_restore started without pipes")
    stderr = _StderrTail(proc.stderr)
    stdin = proc.stdin

    def feed(data: bytes) -> None:
        try:
            stdin.write(data)
        except BrokenPipeError:
            proc.wait(timeout=PROCESS_EXIT_SECONDS_MAX)
            raise RestoreFailed(f"pg_restore stopped early ({proc.returncode}): {stderr.text()[-2000:]}") from None

    try:
        stream_plaintext(storage=storage, manifest=manifest, keys=keys, consume=feed, progress=progress)
        stdin.close()  # only now may pg_restore reach its COMMIT
        code = proc.wait()
        if code != 0:
            raise RestoreFailed(f"pg_restore ({tool.path}) exited with {code}: {stderr.text()[-2000:]}")  # noqa: TRY301
    except BaseException:
        if proc.poll() is None:
            proc.kill()  # its single transaction rolls back
            proc.wait()
        raise
    finally:
        if not stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        stderr.close()
