"""The manifest: what a backup holds and how to check it, stored beside it as ``manifest.json``.

A backup is complete only once its manifest exists: the manifest is written after the object's
upload has completed, so an interrupted backup has none and is never listed as usable.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from feint.errors import FeintError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
OBJECT_NAME = "dump.pgc.zst.tink"
MANIFEST_BYTES_MAX = 16 * 1024 * 1024
BACKUP_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
Kind = Literal["daily", "monthly"]
KINDS: tuple[Kind, ...] = ("daily", "monthly")


class ManifestInvalid(FeintError):
    slug, title = "backup-manifest-invalid", "Backup manifest invalid"


@dataclass(frozen=True)
class Manifest:
    id: str
    kind: Kind
    database: str
    server_version: str
    server_version_num: int
    pg_dump_version: str
    pg_dump_major: int
    started_at: datetime
    consistent_at: datetime
    finished_at: datetime
    wal_lsn: str | None
    database_bytes: int
    dump_bytes: int
    compressed_bytes: int
    stored_bytes: int
    sha256: str
    key_id: int
    encryption: str
    compression: str
    part_bytes: int
    row_counts: dict[str, int] = field(default_factory=dict)
    audit_heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def folder(self) -> str:
        return f"{self.kind}/{self.id}"

    @property
    def object_key(self) -> str:
        return f"{self.folder}/{OBJECT_NAME}"

    @property
    def manifest_key(self) -> str:
        return f"{self.folder}/{MANIFEST_NAME}"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "database": self.database,
            "consistent_at": self.consistent_at.isoformat(),
            "database_bytes": self.database_bytes,
            "stored_bytes": self.stored_bytes,
            "key_id": self.key_id,
            "tables": len(self.row_counts),
            "rows": sum(self.row_counts.values()),
        }


def folder_of(kind: str, backup_id: str) -> str:
    return f"{kind}/{backup_id}"


def parse(data: bytes, *, where: str) -> Manifest:
    """A manifest from its JSON; a malformed one is named with ``where`` and the field at fault."""
    if len(data) > MANIFEST_BYTES_MAX:
        raise ManifestInvalid(f"{where}: {len(data)} bytes, more than {MANIFEST_BYTES_MAX}")
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ManifestInvalid(f"{where}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ManifestInvalid(f"{where}: not a JSON object")
    if raw.get("format") != FORMAT_VERSION:
        raise ManifestInvalid(f"{where}: format {raw.get('format')!r}, this feint reads {FORMAT_VERSION}")
    try:
        for name in ("started_at", "consistent_at", "finished_at"):
            raw[name] = datetime.fromisoformat(raw[name])
        manifest = Manifest(**raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestInvalid(f"{where}: {exc}") from None
    if not BACKUP_ID.fullmatch(manifest.id) or manifest.kind not in KINDS:
        raise ManifestInvalid(f"{where}: bad id {manifest.id!r} or kind {manifest.kind!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest.sha256):
        raise ManifestInvalid(f"{where}: sha256 is not 64 hex digits")
    return manifest
