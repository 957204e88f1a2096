"""The backup keyset: Tink streaming AEAD (AES-256-GCM-HKDF, 1 MiB segments), sealed by the master key.

It is a keyset of its own, not the payment-data keyset: a restore must open it with the master
key alone, before any database exists, so it lives in a file (``FEINT_BACKUP_KEYSET``) sealed by
the same `MasterKeyProvider` as the data keysets (envelope encryption, `feint.platform.crypto`).
Rotation adds a primary key; the old keys stay so that older backups still decrypt. Every
backup's manifest names the key that encrypted it, so a keyset that lost that key is named as
the cause instead of a bare authentication failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import tink
from tink import streaming_aead

from feint.errors import ConfigError
from feint.platform import crypto

streaming_aead.register()

KEYSET_NAME = "feint-backup"
TEMPLATE_NAME = "AES256_GCM_HKDF_1MB"
TEMPLATE = streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
ASSOCIATED_PREFIX = b"feint-backup:"
VARIABLE = "FEINT_BACKUP_KEYSET"


class KeyNotInKeyset(crypto.DecryptionFailed):
    def __init__(self, *, key_id: int, key_ids: tuple[int, ...]) -> None:
        super().__init__(f"cannot decrypt: key {key_id} is not in the keyset", key_id=key_id, key_ids=list(key_ids))
        self.key_id = key_id


@dataclass(frozen=True)
class BackupKeys:
    """An opened backup keyset."""

    handle: tink.KeysetHandle

    @property
    def info(self) -> crypto.KeysetInfo:
        return crypto.keyset_info(KEYSET_NAME, self.handle)

    def _primitive(self) -> streaming_aead.StreamingAead:
        return self.handle.primitive(streaming_aead.StreamingAead)

    def encrypting(self, destination: BinaryIO, *, backup_id: str) -> BinaryIO:
        """A writer whose bytes reach ``destination`` encrypted with the primary key."""
        stream: BinaryIO = self._primitive().new_encrypting_stream(destination, associated(backup_id))
        return stream

    def decrypting(self, source: BinaryIO, *, backup_id: str, key_id: int) -> BinaryIO:
        """A reader of the plaintext of ``source``, made by key ``key_id`` (refused at once if absent)."""
        ids = self.info.key_ids
        if key_id not in ids:
            raise KeyNotInKeyset(key_id=key_id, key_ids=ids)
        stream: BinaryIO = self._primitive().new_decrypting_stream(source, associated(backup_id))
        return stream


def associated(backup_id: str) -> bytes:
    """Associated data: the backup id, so an object moved under another id does not decrypt."""
    return ASSOCIATED_PREFIX + backup_id.encode()


def generate(path: Path, provider: crypto.MasterKeyProvider) -> BackupKeys:
    """A new keyset written to ``path`` (refuses to overwrite one: older backups need it)."""
    handle = tink.new_keyset_handle(TEMPLATE)
    crypto.write_keyset_file(path, handle, provider, KEYSET_NAME, replace=False)
    return BackupKeys(handle)


def load(path: Path | None, provider: crypto.MasterKeyProvider) -> BackupKeys:
    if path is None:
        raise ConfigError(VARIABLE, "unset", "the path of a keyset made by `feint backup keygen --out PATH`")
    return BackupKeys(crypto.read_keyset_file(path.expanduser(), provider, KEYSET_NAME, variable=VARIABLE))


def rotate(path: Path, provider: crypto.MasterKeyProvider) -> tuple[crypto.KeysetInfo, crypto.KeysetInfo]:
    """Add a new primary key to the keyset file; returns (before, after)."""
    before = load(path, provider)
    rotated = crypto.add_primary_key(before.handle, template=TEMPLATE)
    crypto.write_keyset_file(path, rotated, provider, KEYSET_NAME, replace=True)
    return before.info, BackupKeys(rotated).info
