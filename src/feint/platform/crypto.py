"""Data encryption: Tink AES-256-GCM keysets wrapped by a master key (envelope encryption).

Sensitive fields are encrypted with a Tink AEAD *data keyset* (AES-256-GCM, 96-bit random
nonces, each ciphertext prefixed by the id of the key that made it). The keyset itself is stored
in the ``keysets`` table encrypted by a *key-encryption key* that never touches the database:
by default an AES-256-GCM key derived (HKDF) from the master key (``FEINT_MASTER_KEY`` or its
file); in production, a KMS or Vault key, through the `MasterKeyProvider` hook:

    class VaultTransit:                                   # any object with keyset_aead()
        def keyset_aead(self) -> tink.aead.Aead:
            return MyVaultTransitAead(client, key="feint")  # encrypt/decrypt via Vault's transit API

    # or a cloud KMS through Tink's own integrations:
    #   from tink.integration import gcpkms
    #   aead = gcpkms.GcpKmsClient(uri, creds).get_aead(uri)

    keyring = await load_keyring(db, provider=VaultTransit(), name="credits-payment-data")

Rotation (``feint keys rotate-data-key``) adds a new key to the keyset and makes it primary: new
data is encrypted with it, old ciphertexts stay readable because their key stays in the keyset.
``feint keys reencrypt`` then moves every registered column forward to the primary key, page by
page, so that an old key can eventually be retired. A process that meets a ciphertext of a key
it does not know yet (rotated by another process) reloads the keyset once and retries.

Associated data binds each ciphertext to its row (``table/column/key...``), so a ciphertext
copied into another row does not decrypt.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import tink
from tink import aead, cleartext_keyset_handle, secret_key_access
from tink.proto import aes_gcm_pb2, tink_pb2

from feint.errors import ConfigError, Conflict, FeintError, InvariantViolated, NotFound
from feint.platform.db import Database
from feint.platform.secrets import derive

aead.register()

KEYSET_TEMPLATE = aead.aead_key_templates.AES256_GCM
KEYSET_ASSOCIATED_PREFIX = b"feint-keyset:"
TINK_PREFIX_BYTES = 5  # 0x01 + 4-byte key id, for keys with output prefix TINK
REENCRYPT_PAGE_ROWS = 500
KEYS_PER_KEYSET_MAX = 64
KEYRING_RELOAD_SECONDS = 60.0
KEYSET_FILE_BYTES_MAX = 64 * 1024
_AES_GCM_TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmKey"


class DecryptionFailed(FeintError):
    slug, title = "decryption-failed", "Decryption failed"


class MasterKeyProvider(Protocol):
    """The key-encryption key: the one thing needed to open the data keysets.

    Implement ``keyset_aead`` with a KMS or Vault client to keep that key out of the process."""

    def keyset_aead(self) -> aead.Aead: ...


class LocalMasterKey:
    """The default provider: AES-256-GCM under a key derived from the master key."""

    def __init__(self, master_key: bytes) -> None:
        key = aes_gcm_pb2.AesGcmKey(version=0, key_value=derive(master_key, "keyset-encryption"))
        keyset = tink_pb2.Keyset(primary_key_id=1)
        entry = keyset.key.add()
        entry.key_data.CopyFrom(
            tink_pb2.KeyData(
                type_url=_AES_GCM_TYPE_URL, value=key.SerializeToString(), key_material_type=tink_pb2.KeyData.SYMMETRIC
            )
        )
        entry.status = tink_pb2.ENABLED
        entry.key_id = 1
        entry.output_prefix_type = tink_pb2.RAW
        self._aead = cleartext_keyset_handle.from_keyset(keyset).primitive(aead.Aead)

    def keyset_aead(self) -> aead.Aead:
        return self._aead


@dataclass(frozen=True)
class KeysetInfo:
    name: str
    primary_key_id: int
    key_ids: tuple[int, ...]


class Keyring:
    """One data keyset, opened: encrypt with the primary key, decrypt with any key of the set."""

    def __init__(self, name: str, handle: tink.KeysetHandle) -> None:
        self.name = name
        self._handle = handle
        self._aead = handle.primitive(aead.Aead)
        self.info = keyset_info(name, handle)

    def encrypt(self, plaintext: bytes, *, associated_data: bytes) -> bytes:
        return bytes(self._aead.encrypt(plaintext, associated_data))

    def decrypt(self, ciphertext: bytes, *, associated_data: bytes) -> bytes:
        try:
            return bytes(self._aead.decrypt(ciphertext, associated_data))
        except tink.TinkError as exc:
            raise DecryptionFailed(f"cannot decrypt with keyset {self.name!r}") from exc

    def key_id_of(self, ciphertext: bytes) -> int | None:
        """The id of the key that made a ciphertext (None when it carries no Tink prefix)."""
        if len(ciphertext) < TINK_PREFIX_BYTES or ciphertext[0] != 1:
            return None
        return int.from_bytes(ciphertext[1:TINK_PREFIX_BYTES], "big")

    def is_current(self, ciphertext: bytes) -> bool:
        return self.key_id_of(ciphertext) == self.info.primary_key_id


def keyset_info(name: str, handle: tink.KeysetHandle) -> KeysetInfo:
    """The ids of a keyset's keys and of its primary (no key material)."""
    info = handle.keyset_info()
    return KeysetInfo(name=name, primary_key_id=info.primary_key_id, key_ids=tuple(k.key_id for k in info.key_info))


def _associated(name: str) -> bytes:
    return KEYSET_ASSOCIATED_PREFIX + name.encode()


def seal_keyset(handle: tink.KeysetHandle, provider: MasterKeyProvider, name: str) -> bytes:
    return bytes(tink.proto_keyset_format.serialize_encrypted(handle, provider.keyset_aead(), _associated(name)))


def open_keyset(encrypted: bytes, provider: MasterKeyProvider, name: str) -> tink.KeysetHandle:
    try:
        return tink.proto_keyset_format.parse_encrypted(encrypted, provider.keyset_aead(), _associated(name))
    except tink.TinkError as exc:
        raise DecryptionFailed(f"keyset {name!r} does not open with this master key") from exc


def add_primary_key(
    handle: tink.KeysetHandle, *, template: tink_pb2.KeyTemplate = KEYSET_TEMPLATE
) -> tink.KeysetHandle:
    """The keyset with one more key of ``template`` (default AES-256-GCM), made primary; existing keys
    stay enabled."""
    keyset = tink_pb2.Keyset.FromString(tink.proto_keyset_format.serialize(handle, secret_key_access.TOKEN))
    if len(keyset.key) >= KEYS_PER_KEYSET_MAX:
        raise InvariantViolated(f"a keyset holds at most {KEYS_PER_KEYSET_MAX} keys; retire old ones first")
    fresh = tink.new_keyset_handle(template)
    new_key = tink_pb2.Keyset.FromString(tink.proto_keyset_format.serialize(fresh, secret_key_access.TOKEN)).key[0]
    used = {k.key_id for k in keyset.key}
    while new_key.key_id in used:  # pragma: no cover - a 1-in-4-billion collision
        new_key = tink_pb2.Keyset.FromString(
            tink.proto_keyset_format.serialize(tink.new_keyset_handle(template), secret_key_access.TOKEN)
        ).key[0]
    keyset.key.append(new_key)
    keyset.primary_key_id = new_key.key_id
    return tink.proto_keyset_format.parse(keyset.SerializeToString(), secret_key_access.TOKEN)


# --- keysets kept in a file (the backup keyset: it must open without the database) ------------


def read_keyset_file(
    path: Path, provider: MasterKeyProvider, name: str, *, variable: str = "keyset file"
) -> tink.KeysetHandle:
    """A keyset stored by `write_keyset_file`; errors name the file (and the setting that names it)."""
    try:
        encrypted = path.read_bytes()
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {path}: {exc.strerror or exc}", "a readable keyset file") from None
    if len(encrypted) > KEYSET_FILE_BYTES_MAX:
        raise ConfigError(variable, f"{path} is {len(encrypted)} bytes", f"at most {KEYSET_FILE_BYTES_MAX}")
    try:
        return open_keyset(encrypted, provider, name)
    except DecryptionFailed as exc:
        raise DecryptionFailed(f"{path}: {exc.detail}") from exc


def write_keyset_file(
    path: Path, handle: tink.KeysetHandle, provider: MasterKeyProvider, name: str, *, replace: bool
) -> None:
    """Seal a keyset with the master key into ``path`` (mode 0600), atomically: a crash leaves the old
    file or the new one, never half of one. ``replace=False`` refuses to overwrite."""
    sealed = seal_keyset(handle, provider, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not replace and path.exists():
        raise Conflict(f"{path} exists; refusing to overwrite a keyset (older backups need it)")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle_out:
            handle_out.write(sealed)
            handle_out.flush()
            os.fsync(handle_out.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if another process created it meanwhile
    finally:
        temporary.unlink(missing_ok=True)


# --- storage in the keysets table -------------------------------------------------------------


async def load_keyring(db: Database, *, provider: MasterKeyProvider, name: str) -> Keyring:
    """The named keyset, created on first use (two processes racing agree on one keyset)."""
    async with db.transaction() as conn:
        cur = await conn.execute("SELECT encrypted FROM keysets WHERE name = %s", (name,))
        row = await cur.fetchone()
        if row is None:
            candidate = seal_keyset(tink.new_keyset_handle(KEYSET_TEMPLATE), provider, name)
            await conn.execute(
                "INSERT INTO keysets (name, encrypted) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", (name, candidate)
            )
            cur = await conn.execute("SELECT encrypted FROM keysets WHERE name = %s", (name,))
            row = await cur.fetchone()
    if row is None:  # pragma: no cover - inserted or found above
        raise NotFound(f"keyset {name!r} vanished")
    return Keyring(name, open_keyset(bytes(row["encrypted"]), provider, name))


class KeyringCache:
    """A process's opened keyrings: reloaded every ``reload_seconds`` (so a rotation elsewhere
    reaches new encryptions within that time) and at once when a ciphertext names a key they lack."""

    def __init__(
        self, db: Database, provider: MasterKeyProvider, *, reload_seconds: float = KEYRING_RELOAD_SECONDS
    ) -> None:
        self._db = db
        self._provider = provider
        self._reload_seconds = reload_seconds
        self._rings: dict[str, tuple[float, Keyring]] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str, *, reload: bool = False) -> Keyring:
        found = self._rings.get(name)
        if found is None or reload or time.monotonic() - found[0] > self._reload_seconds:
            async with self._lock:
                ring = await load_keyring(self._db, provider=self._provider, name=name)
                self._rings[name] = (time.monotonic(), ring)
                return ring
        return found[1]

    async def decrypt(self, name: str, ciphertext: bytes, *, associated_data: bytes) -> bytes:
        ring = await self.get(name)
        key_id = ring.key_id_of(ciphertext)
        if key_id is not None and key_id not in ring.info.key_ids:
            ring = await self.get(name, reload=True)  # rotated by another process since we loaded it
        return ring.decrypt(ciphertext, associated_data=associated_data)


def _read_handle(
    conn: psycopg.Connection[dict[str, Any]], provider: MasterKeyProvider, name: str, *, lock: bool
) -> tink.KeysetHandle:
    row = conn.execute(
        "SELECT encrypted FROM keysets WHERE name = %s" + (" FOR UPDATE" if lock else ""), (name,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no keyset {name!r} (it is created on first use)")
    return open_keyset(bytes(row["encrypted"]), provider, name)


def rotate_data_key(
    conn: psycopg.Connection[dict[str, Any]], *, provider: MasterKeyProvider, name: str
) -> tuple[KeysetInfo, KeysetInfo]:
    """Add a primary key to a keyset; returns (before, after)."""
    with conn.transaction():
        handle = _read_handle(conn, provider, name, lock=True)
        rotated = add_primary_key(handle)
        conn.execute(
            "UPDATE keysets SET encrypted = %s, updated_at = now() WHERE name = %s",
            (seal_keyset(rotated, provider, name), name),
        )
    return Keyring(name, handle).info, Keyring(name, rotated).info


@dataclass(frozen=True)
class EncryptedColumn:
    """A column of ciphertexts made with ``keyset``; associated data is ``table/column/key...``."""

    keyset: str
    table: str
    column: str
    key_columns: tuple[str, ...]

    def associated_data(self, row: dict[str, Any]) -> bytes:
        return "/".join([self.table, self.column, *(str(row[k]) for k in self.key_columns)]).encode()


_REGISTERED: list[EncryptedColumn] = []


def register_encrypted_column(column: EncryptedColumn) -> EncryptedColumn:
    """Declare a column so that ``feint keys reencrypt`` moves it forward after a rotation."""
    if column not in _REGISTERED:
        _REGISTERED.append(column)
    return column


def registered_columns(keyset: str | None = None) -> list[EncryptedColumn]:
    return [c for c in _REGISTERED if keyset is None or c.keyset == keyset]


def reencrypt(
    conn: psycopg.Connection[dict[str, Any]],
    *,
    provider: MasterKeyProvider,
    columns: Sequence[EncryptedColumn],
    progress: Callable[[EncryptedColumn, int], None] | None = None,
) -> dict[str, int]:
    """Re-encrypt every ciphertext not made by its keyset's primary key; returns rows moved per column.

    Each page of REENCRYPT_PAGE_ROWS rows is one transaction, so the command can be stopped and
    run again: rows already on the primary key are skipped."""
    moved: dict[str, int] = {}
    for column in columns:
        ring = Keyring(column.keyset, _read_handle(conn, provider, column.keyset, lock=False))
        keys = ", ".join(column.key_columns)
        after: tuple[Any, ...] | None = None
        count = 0
        while True:
            where = f"WHERE ({keys}) > ({', '.join(['%s'] * len(column.key_columns))})" if after else ""
            with conn.transaction():
                rows = conn.execute(
                    f"SELECT {keys}, {column.column} AS sealed FROM {column.table} {where} "
                    f"ORDER BY {keys} LIMIT {REENCRYPT_PAGE_ROWS} FOR UPDATE",
                    after or (),
                ).fetchall()
                for row in rows:
                    sealed = bytes(row["sealed"])
                    if ring.is_current(sealed):
                        continue
                    ad = column.associated_data(row)
                    fresh = ring.encrypt(ring.decrypt(sealed, associated_data=ad), associated_data=ad)
                    conn.execute(
                        f"UPDATE {column.table} SET {column.column} = %s WHERE "
                        + " AND ".join(f"{k} = %s" for k in column.key_columns),
                        (fresh, *(row[k] for k in column.key_columns)),
                    )
                    count += 1
            if progress is not None:
                progress(column, len(rows))
            if len(rows) < REENCRYPT_PAGE_ROWS:
                break
            after = tuple(rows[-1][k] for k in column.key_columns)
        moved[f"{column.table}.{column.column}"] = count
    return moved
