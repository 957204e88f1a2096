"""Where backups are kept: any S3-compatible server, or a local folder, behind one Protocol.

An object is written through an `ObjectWriter`: bytes go in as they are produced and only a
bounded amount is held in memory (the part being filled plus ``UPLOADS_IN_FLIGHT_MAX`` parts
being sent). On S3 that is a multipart upload; any failure before `commit` aborts it, so an
interrupted backup leaves no billed orphan parts behind. In a folder, the object is written to a
hidden temporary file and renamed into place on commit.

Part size: S3 allows 10,000 parts of at most 5 GiB. `part_bytes_for` sizes parts from an
estimate of the object (the database size, with a margin) so that the object fits, with a floor
of 8 MiB (fewer requests) and a cap at the size that makes a 5 TiB object fit. A writer that
would need part 10,001 stops with `ObjectTooLarge` (and aborts) rather than failing at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

import structlog

from feint.errors import ConfigError, DependencyUnavailable, FeintError, NotFound

log = structlog.get_logger(component="feint.backup.storage")

MIB = 1024 * 1024
PART_BYTES_MIN = 8 * MIB
PART_BYTES_MAX = 5 * 1024 * MIB  # S3's limit for one part
PARTS_MAX = 10_000  # S3's limit for one multipart upload
OBJECT_BYTES_MAX = 5 * 1024 * 1024 * MIB  # 5 TiB, S3's largest object
ESTIMATE_MARGIN = 2  # the estimate is the database size; a dump rarely exceeds it, never by 2x after zstd
UPLOADS_IN_FLIGHT_MAX = 2
S3_ATTEMPTS_MAX = 3
S3_CONNECT_TIMEOUT_SECONDS = 5
S3_READ_TIMEOUT_SECONDS = 60
LIST_PAGES_MAX = 1_000  # of 1,000 keys each: a million objects under one prefix
READ_CHUNK_BYTES = MIB


class StorageError(FeintError):
    slug, title = "backup-storage", "Backup storage error"


class StorageUnavailable(DependencyUnavailable):
    """The storage endpoint did not answer after the bounded retries."""


class ObjectTooLarge(StorageError):
    def __init__(self, *, key: str, part_bytes: int) -> None:
        super().__init__(
            f"{key}: more than {PARTS_MAX} parts of {part_bytes} bytes; the estimate of its size was too low",
            part_bytes=part_bytes,
        )


def part_bytes_for(expected_bytes: int) -> int:
    """Part size (a whole number of MiB) for an object estimated at ``expected_bytes``."""
    if expected_bytes < 0:
        raise ValueError("expected_bytes must not be negative")
    target = min(expected_bytes * ESTIMATE_MARGIN, OBJECT_BYTES_MAX)
    needed = math.ceil(math.ceil(target / PARTS_MAX) / MIB) * MIB
    return min(max(PART_BYTES_MIN, needed), PART_BYTES_MAX)


class ObjectWriter(Protocol):
    """An object being written: ``write`` as data arrives, then ``commit`` or ``abort`` (exactly one)."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> int: ...

    def abort(self) -> None: ...


class Storage(Protocol):
    """A flat namespace of objects under one prefix (keys are relative to it)."""

    url: str

    def writer(self, key: str, *, part_bytes: int, storage_class: str | None = None) -> ObjectWriter: ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def reader(self, key: str) -> BinaryIO: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def pending_uploads(self) -> list[str]: ...


# --- local folder ---------------------------------------------------------------------------


class LocalWriter:
    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = path.with_name(f".{path.name}.partial")
        self._file: BinaryIO | None = open(self._temporary, "wb")  # noqa: SIM115 - closed by commit/abort
        self._bytes = 0

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise StorageError(f"{self._path}: write after commit or abort")
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(f"{self._path}: writing failed: {exc.strerror or exc}") from exc
        self._bytes += len(data)

    def commit(self) -> int:
        if self._file is None:
            raise StorageError(f"{self._path}: commit after commit or abort")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._temporary, self._path)
        except OSError as exc:
            raise StorageError(f"{self._path}: writing failed: {exc.strerror or exc}") from exc
        return self._bytes

    def abort(self) -> None:
        """Discard the partial file. Closing may fail again (a full disk refuses the buffered
        bytes): that is the failure being aborted, so it is logged, and the file still removed."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                log.info("backup_partial_close_failed", path=str(self._temporary), error=exc.strerror or str(exc))
        self._temporary.unlink(missing_ok=True)


class LocalStorage:
    """Objects as files under a folder (``file:///path``); a key's slashes are sub-folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()) or key.startswith("/"):
            raise StorageError(f"key {key!r} leaves the backup folder")
        return path

    def writer(self, key: str, *, part_bytes: int, storage_class: str | None = None) -> ObjectWriter:
        return LocalWriter(self._path(key))

    def put(self, key: str, data: bytes) -> None:
        writer = LocalWriter(self._path(key))
        try:
            writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no object {key} in {self.url}") from None

    def reader(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise NotFound(f"no object {key} in {self.url}") from None

    def list_keys(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder is removed only once empty; not an error otherwise
            path.parent.rmdir()

    def pending_uploads(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob(".*.partial"))


# --- S3 -------------------------------------------------------------------------------------


def _client_error(exc: Exception, *, what: str, endpoint: str) -> FeintError:
    """One of our errors for a boto3 error: unreachable endpoints apart from refusals."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return StorageUnavailable(
            f"cannot reach the S3 endpoint {endpoint} ({what}) after {S3_ATTEMPTS_MAX} attempts: {exc}",
            dependency="s3",
        )
    if isinstance(exc, bx.NoCredentialsError):
        return StorageError(f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)")
    if isinstance(exc, bx.ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return NotFound(f"{what}: no such object")
        return StorageError(f"{what}: S3 answered {code}: {exc.response.get('Error', {}).get('Message', '')}")
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(f"{what}: {exc}")
    raise exc


@dataclass
class _Part:
    number: int
    etag: str


class S3Writer:
    """A multipart upload: parts are sent by a small pool while the next one fills."""

    def __init__(self, storage: S3Storage, key: str, *, part_bytes: int, storage_class: str | None) -> None:
        if not PART_BYTES_MIN <= part_bytes <= PART_BYTES_MAX:
            raise ValueError(f"part size {part_bytes} outside {PART_BYTES_MIN}-{PART_BYTES_MAX}")
        self._s3 = storage
        self._key = storage.full_key(key)
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._next = 1
        self._futures: list[Future[_Part]] = []
        self._slots = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT_MAX)
        self._pool = ThreadPoolExecutor(max_workers=UPLOADS_IN_FLIGHT_MAX, thread_name_prefix="s3-part")
        extra = {"StorageClass": storage_class} if storage_class else {}
        answer = storage.call(
            "create_multipart_upload", what=f"start upload of {key}", Bucket=storage.bucket, Key=self._key, **extra
        )
        self._upload_id: str | None = answer["UploadId"]
        self._bytes = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self._bytes += len(data)
        while len(self._buffer) >= self._part_bytes:
            part = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            self._send(part)

    def _send(self, body: bytes) -> None:
        if self._next > PARTS_MAX:
            raise ObjectTooLarge(key=self._key, part_bytes=self._part_bytes)
        for done in [f for f in self._futures if f.done()]:
            done.result()  # a failed part stops the upload now, not at the end
        self._slots.acquire()  # bounds memory: at most UPLOADS_IN_FLIGHT_MAX parts on their way
        number = self._next
        self._next += 1
        future = self._pool.submit(self._upload_part, number, body)
        future.add_done_callback(lambda _f: self._slots.release())
        self._futures.append(future)

    def _upload_part(self, number: int, body: bytes) -> _Part:
        answer = self._s3.call(
            "upload_part",
            what=f"upload part {number} of {self._key}",
            Bucket=self._s3.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        return _Part(number=number, etag=answer["ETag"])

    def commit(self) -> int:
        if self._upload_id is None:
            raise StorageError(f"{self._key}: commit after commit or abort")
        if self._buffer or self._next == 1:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        parts = sorted((f.result() for f in self._futures), key=lambda p: p.number)
        self._pool.shutdown(wait=True)
        self._s3.call(
            "complete_multipart_upload",
            what=f"complete upload of {self._key}",
            Bucket=self._s3.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
        )
        self._upload_id = None
        return self._bytes

    def abort(self) -> None:
        """Cancel queued parts, wait for those in flight, then abort the upload (its parts are freed)."""
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._s3.call(
                "abort_multipart_upload",
                what=f"abort upload of {self._key}",
                Bucket=self._s3.bucket,
                Key=self._key,
                UploadId=upload_id,
            )


class _S3Body:
    """A streaming GET body as a binary reader."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        return bytes(self._body.read(size if size >= 0 else None))

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _S3Body:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class S3Storage:
    """``s3://bucket/prefix`` on AWS or any S3-compatible endpoint; credentials the usual AWS way."""

    def __init__(self, *, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint_url or "AWS S3"
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(
            retries={"max_attempts": S3_ATTEMPTS_MAX, "mode": "standard"},
            connect_timeout=S3_CONNECT_TIMEOUT_SECONDS,
            read_timeout=S3_READ_TIMEOUT_SECONDS,
            max_pool_connections=UPLOADS_IN_FLIGHT_MAX + 2,
            s3={"addressing_style": "path"} if endpoint_url else {},
            # Checksums on every request unless the operation requires them: some S3-compatible
            # servers reject the newer CRC32 trailers; our SHA-256 of the whole object is the check.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def call(self, operation: str, *, what: str, **params: Any) -> Any:
        try:
            return getattr(self.client, operation)(**params)
        except Exception as exc:  # translated, or re-raised, by _client_error
            raise _client_error(exc, what=what, endpoint=self.endpoint) from exc

    def writer(self, key: str, *, part_bytes: int, storage_class: str | None = None) -> ObjectWriter:
        return S3Writer(self, key, part_bytes=part_bytes, storage_class=storage_class)

    def put(self, key: str, data: bytes) -> None:
        self.call("put_object", what=f"write {key}", Bucket=self.bucket, Key=self.full_key(key), Body=data)

    def get(self, key: str) -> bytes:
        answer = self.call("get_object", what=f"read {key}", Bucket=self.bucket, Key=self.full_key(key))
        return bytes(answer["Body"].read())

    def reader(self, key: str) -> BinaryIO:
        answer = self.call("get_object", what=f"read {key}", Bucket=self.bucket, Key=self.full_key(key))
        return _S3Body(answer["Body"])  # type: ignore[return-value]

    def list_keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        token: str | None = None
        for _ in range(LIST_PAGES_MAX):
            params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.full_key(prefix)}
            if token:
                params["ContinuationToken"] = token
            answer = self.call("list_objects_v2", what=f"list {self.url}", **params)
            strip = len(self.prefix) + 1 if self.prefix else 0
            found += [item["Key"][strip:] for item in answer.get("Contents", [])]
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return sorted(found)
        raise StorageError(f"more than {LIST_PAGES_MAX} pages of objects under {self.url}")

    def delete(self, key: str) -> None:
        self.call("delete_object", what=f"delete {key}", Bucket=self.bucket, Key=self.full_key(key))

    def pending_uploads(self) -> list[str]:
        answer = self.call(
            "list_multipart_uploads", what=f"list uploads of {self.url}", Bucket=self.bucket, Prefix=self.prefix
        )
        return sorted(u["Key"] for u in answer.get("Uploads", []) or [])

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (local servers, tests)."""
        import botocore.exceptions as bx

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bx.ClientError:
            self.call("create_bucket", what=f"create bucket {self.bucket}", Bucket=self.bucket)
        except Exception as exc:
            raise _client_error(exc, what=f"reach bucket {self.bucket}", endpoint=self.endpoint) from exc


def open_storage(url: str | None, *, endpoint_url: str | None) -> S3Storage | LocalStorage:
    """The storage a ``FEINT_BACKUP_URL`` names."""
    if not url:
        raise ConfigError("FEINT_BACKUP_URL", "unset", "s3://bucket/prefix or file:///path")
    parts = urlparse(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("FEINT_BACKUP_URL", f"{url!r} names a host", "file:///absolute/path")
        return LocalStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        return S3Storage(bucket=parts.netloc, prefix=parts.path, endpoint_url=endpoint_url)
    raise ConfigError("FEINT_BACKUP_URL", f"{url!r} is not usable", "s3://bucket/prefix or file:///path")


def iter_chunks(reader: BinaryIO, *, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    while chunk := reader.read(chunk_bytes):
        yield chunk
