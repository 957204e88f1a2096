"""``FEINT_CREDITS_*`` settings of the credits service, validated when its app is created.

Kept beside the domain (not in `feint.settings`) because only this service reads them; a bad
value still stops start-up with one line naming the variable (`ConfigError`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from feint.errors import ConfigError

IDEMPOTENCY_RETENTION_SECONDS_MIN = 24 * 3600


class CreditsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEINT_CREDITS_", extra="ignore", frozen=True)

    idempotency_retention_seconds: int = Field(
        IDEMPOTENCY_RETENTION_SECONDS_MIN,
        ge=IDEMPOTENCY_RETENTION_SECONDS_MIN,
        description="How long an Idempotency-Key is remembered (at least 24 h).",
    )
    sweeper_interval_seconds: float = Field(
        1.0, ge=0, description="Pause between sweeper passes (expired grants and holds); 0 turns the sweeper off."
    )
    sweeper_items_max: int = Field(500, gt=0, le=8_190, description="Expired grants or holds handled per pass.")
    cache: Literal["auto", "redis", "memory", "off"] = Field(
        "auto",
        description="Balance cache: `auto` = Redis when FEINT_REDIS_URL is set, else none; `memory` is only "
        "correct while a single process serves credits.",
    )
    cache_ttl_seconds: float = Field(30.0, gt=0, le=3600, description="Longest a cached balance is kept.")
    micro_batch_operations_max: int = Field(
        256, gt=0, le=8_190, description="Concurrent single operations committed together in one transaction."
    )
    micro_batch_workers: int = Field(
        2, gt=0, le=64, description="Transactions a process runs at once for single operations."
    )
    post_in_database: bool = Field(
        True,
        description="Post transfers (micro-batches and transfer-only batches) with one server-side call "
        "(migration 0008); false: every job through the rules in Python.",
    )


def load_credits_settings() -> CreditsSettings:
    try:
        return CreditsSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"FEINT_CREDITS_{str(first['loc'][0]).upper()}" if first["loc"] else "FEINT_CREDITS_*"
        raise ConfigError(name, str(first["msg"]), "see docs/credits.md") from None
