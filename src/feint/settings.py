"""Every ``FEINT_*`` setting, typed, documented and validated at start.

A bad value stops start-up with one line naming the variable, what is wrong with the value
and the expected form (exit code 2); see :func:`load`. The README's settings table is the
user-facing copy of the field descriptions below.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feint.errors import ConfigError

PORT_MIN = 1
PORT_MAX = 65_535
MASTER_KEY_BYTES = 32


class Settings(BaseSettings):
    """Process-wide configuration read from ``FEINT_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="FEINT_", extra="ignore", frozen=True)

    env: Literal["development", "production", "test"] = Field(
        "development",
        description="Deployment environment; `production` refuses to start without a master key.",
    )
    home: Path = Field(
        Path("~/.local/share/feint"),
        description="Where embedded PostgreSQL data, the generated master key and reports live.",
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL (`postgresql://user@host:5432/db`); unset: embedded PostgreSQL 18.",
    )
    migration_database_url: str | None = Field(
        None, description="URL with DDL rights used by `feint migrate`; unset: `FEINT_DATABASE_URL`."
    )
    database_role: str = Field(
        "feint_app",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$|^$",
        description="Role the services `SET ROLE` to (data rights, no DDL); empty: use the URL's user as is.",
    )
    auth_cache_seconds: float = Field(
        2.0, ge=0, description="How long a verified API key is trusted before it is looked up again."
    )
    redis_url: str | None = Field(
        None, description="Redis URL (`redis://host:6379/0`); unset: in-process cache and rate limiter."
    )
    redis_key_prefix: str = Field("feint:", description="Prefix of every Redis key this deployment writes.")
    host: str = Field("127.0.0.1", description="Address the services listen on.")
    credits_port: int = Field(5004, description="Port of the credits API.")
    shadow_port: int = Field(5005, description="Port of the shadow evaluation API.")
    camouflage_port: int = Field(5006, description="Port of the camouflage management API.")
    gateway_port: int = Field(8080, description="Port of the gateway / decoy listener.")
    upstream_url: str | None = Field(
        None, description="Application the gateway protects; unset: the built-in demo application."
    )
    # camouflage engine (learning side)
    alert_webhook_url: str | None = Field(
        None, description="URL alerts are POSTed to as JSON (honeytoken used, threat >= 9, metering); unset: none."
    )
    camouflage_session_idle_seconds: float = Field(
        300.0, gt=0, le=86_400, description="A decoy session ends after this long without a request; then it is scored."
    )
    camouflage_arm_retire_ratio: float = Field(
        0.5, ge=0, le=1, description="An arm is retired when its mean reward falls below this share of its band's best."
    )
    camouflage_allow_clients: str = Field(
        "", description="Known-good clients (IP addresses or client keys, comma-separated) labelled benign."
    )
    camouflage_probe_requests: int = Field(
        5,
        ge=1,
        description="Diverted requests (or requests of one ended decoy session) from which a client is labelled "
        "a bot, in the labels and the canary guards.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`json` lines, `console` for people, `auto`: console on a TTY, else JSON."
    )
    rate_limit_per_second: float = Field(
        200.0, gt=0, description="Token-bucket refill rate per API key (and per IP when unauthenticated)."
    )
    rate_limit_burst: int = Field(400, gt=0, description="Token-bucket capacity (largest burst).")
    request_timeout_seconds: float = Field(30.0, gt=0, description="Longest a request may run before 503.")
    request_body_bytes_max: int = Field(
        8 * 1024 * 1024, gt=0, description="Largest request body accepted (413 beyond)."
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate; with the key, serve HTTPS.")
    tls_key_file: Path | None = Field(None, description="PEM private key for `FEINT_TLS_CERT_FILE`.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: the APIs require a client certificate signed by it (mTLS); needs TLS on."
    )
    tls_client_cert_file: Path | None = Field(
        None, description="PEM certificate the internal clients present to other services (mTLS)."
    )
    tls_client_key_file: Path | None = Field(None, description="PEM private key for `FEINT_TLS_CLIENT_CERT_FILE`.")
    tls_server_ca_file: Path | None = Field(
        None, description="PEM CA bundle the internal clients verify services' certificates with; unset: the system's."
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP endpoint for traces (`http://collector:4318`); unset: tracing off."
    )
    master_key: str | None = Field(
        None, repr=False, description="Base64 of 32 random bytes: encrypts data keysets and the key-hash secret."
    )
    master_key_file: Path | None = Field(None, description="File holding the master key (base64).")
    db_pool_size_max: int = Field(16, gt=0, description="Connections per process in the database pool.")
    backup_url: str | None = Field(
        None, description="Where backups go: `s3://bucket/prefix` or `file:///path`; unset: `feint backup` refuses."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (`http://minio:9000`); unset: AWS S3 (credentials the usual AWS way)."
    )
    backup_keyset: Path | None = Field(
        None,
        description="Backup keyset file (Tink streaming AEAD, encrypted by the master key; `feint backup keygen`).",
    )
    backup_webhook_url: str | None = Field(
        None, description="URL that receives a JSON POST on every backup/verify success and failure; unset: none."
    )
    backup_pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway for the backup job's metrics (`http://pushgateway:9091`); unset: none.",
    )

    @field_validator("credits_port", "shadow_port", "camouflage_port", "gateway_port")
    @classmethod
    def _port_in_range(cls, value: int) -> int:
        if not PORT_MIN <= value <= PORT_MAX:
            raise ValueError(f"port {value} outside {PORT_MIN}-{PORT_MAX}")
        return value

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("not a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("not a redis://, rediss:// or unix:// URL")
        return value

    @field_validator(
        "upstream_url",
        "otlp_endpoint",
        "s3_endpoint_url",
        "backup_webhook_url",
        "backup_pushgateway_url",
        "alert_webhook_url",
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("not an http:// or https:// URL")
        return value

    @field_validator("backup_url")
    @classmethod
    def _backup_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("s3://", "file://")):
            raise ValueError("not an s3://bucket/prefix or file:///path URL")
        return value

    @field_validator("master_key")
    @classmethod
    def _master_key_shape(cls, value: str | None) -> str | None:
        if value is not None:
            decode_master_key(value)
        return value

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None


def decode_master_key(value: str) -> bytes:
    """The 32 key bytes of a base64 master key, or ValueError saying what is wrong."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc
    if len(raw) != MASTER_KEY_BYTES:
        raise ValueError(f"decodes to {len(raw)} bytes, not {MASTER_KEY_BYTES}")
    return raw


_EXPECTED = {
    "env": "development, production or test",
    "credits_port": f"an integer port {PORT_MIN}-{PORT_MAX}",
    "shadow_port": f"an integer port {PORT_MIN}-{PORT_MAX}",
    "camouflage_port": f"an integer port {PORT_MIN}-{PORT_MAX}",
    "gateway_port": f"an integer port {PORT_MIN}-{PORT_MAX}",
    "database_url": "postgresql://user@host:port/database",
    "migration_database_url": "postgresql://owner@host:port/database",
    "database_role": "a PostgreSQL role name (lower case) or empty",
    "redis_url": "redis://host:port/db",
    "upstream_url": "http(s)://host:port",
    "otlp_endpoint": "http(s)://collector:4318",
    "alert_webhook_url": "http(s)://host/path",
    "log_level": "debug, info, warning or error",
    "log_format": "auto, json or console",
    "backup_url": "s3://bucket/prefix or file:///path",
    "s3_endpoint_url": "http(s)://host:port",
    "backup_webhook_url": "http(s)://host/path",
    "backup_pushgateway_url": "http(s)://pushgateway:9091",
    "master_key": "base64 of 32 random bytes (openssl rand -base64 32)",
}


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    variable = f"FEINT_{field.upper()}"
    raw = os.environ.get(variable, "")
    shown = "<hidden>" if field == "master_key" else repr(raw[:80])
    message = str(first["msg"]).removeprefix("Value error, ")
    return ConfigError(variable, f"{shown} is invalid: {message}", _EXPECTED.get(field, "a valid value"))


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once; raises ConfigError naming the bad variable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _config_error(exc) from None
    check_tls(settings)
    return settings


def check_tls(settings: Settings) -> None:
    """The TLS files come in pairs, exist, and a client CA only with TLS on; ConfigError naming the variable."""
    pairs = (("tls_cert_file", "tls_key_file"), ("tls_client_cert_file", "tls_client_key_file"))
    for cert, key in pairs:
        if (getattr(settings, cert) is None) != (getattr(settings, key) is None):
            raise ConfigError(
                f"FEINT_{cert.upper()}", "set without its pair", f"both FEINT_{cert.upper()} and FEINT_{key.upper()}"
            )
    if settings.tls_client_ca_file is not None and not settings.tls_enabled:
        raise ConfigError(
            "FEINT_TLS_CLIENT_CA_FILE", "set without TLS", "FEINT_TLS_CERT_FILE and FEINT_TLS_KEY_FILE set too"
        )
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "tls_client_cert_file",
                 "tls_client_key_file", "tls_server_ca_file"):  # fmt: skip
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"FEINT_{name.upper()}", f"{str(path)[:200]!r} is not a readable file", "a PEM file")
