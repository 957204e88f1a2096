"""The master key and the secrets derived from it.

The master key (``FEINT_MASTER_KEY`` or ``FEINT_MASTER_KEY_FILE``, base64 of 32 bytes) never
encrypts data itself: it wraps the Tink data keysets (envelope encryption, `feint.platform.crypto`)
and, through HKDF, yields the secret under which API keys are hashed. With neither variable set,
a development key is generated under ``FEINT_HOME`` with mode 0600 and a warning; with
``FEINT_ENV=production`` the services refuse to start without one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

import structlog

from feint.errors import ConfigError
from feint.settings import Settings, decode_master_key

GENERATED_KEY_FILE = "master.key"
log = structlog.get_logger(component="feint.secrets")


def load_master_key(settings: Settings) -> bytes:
    """The 32-byte master key from the environment, its file, or (development) a generated file."""
    if settings.master_key is not None:
        return decode_master_key(settings.master_key)
    if settings.master_key_file is not None:
        path = settings.master_key_file.expanduser()
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("FEINT_MASTER_KEY_FILE", f"cannot read {path}: {exc}", "a readable file") from None
        try:
            return decode_master_key(text)
        except ValueError as exc:
            raise ConfigError("FEINT_MASTER_KEY_FILE", f"{path}: {exc}", "base64 of 32 random bytes") from None
    if settings.env == "production":
        raise ConfigError(
            "FEINT_MASTER_KEY", "unset while FEINT_ENV=production", "FEINT_MASTER_KEY or FEINT_MASTER_KEY_FILE"
        )
    return _generated_key(settings.home_dir / GENERATED_KEY_FILE)


def _generated_key(path: Path) -> bytes:
    if path.exists():
        return decode_master_key(path.read_text(encoding="ascii"))
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = secrets.token_bytes(32)
    # O_EXCL: two processes starting together must not both write a key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return decode_master_key(path.read_text(encoding="ascii"))
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(raw).decode())
    log.warning("master_key_generated", path=str(path), hint="set FEINT_MASTER_KEY in production")
    return raw


def derive(master_key: bytes, purpose: str) -> bytes:
    """A 32-byte subkey for one purpose (HKDF-SHA-256, RFC 5869, empty salt, one block)."""
    prk = hmac.new(b"\x00" * 32, master_key, hashlib.sha256).digest()
    return hmac.new(prk, purpose.encode() + b"\x01", hashlib.sha256).digest()
