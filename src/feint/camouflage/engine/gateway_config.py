"""``FEINT_GATEWAY_*`` and ``FEINT_METERING_*`` settings of the gateway, validated when it starts.

Kept beside the gateway (as the credits service keeps its own) because only the gateway reads
them; a bad value stops start-up with one line naming the variable (`ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from feint.errors import ConfigError


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEINT_GATEWAY_", extra="ignore", frozen=True)

    tenant: str = Field(
        "default",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="Tenant the gateway protects: its production rule set is loaded, its credits are charged.",
    )
    ruleset: str = Field("starter", description="Rule set (of that tenant) whose production version is loaded.")
    rules_path: Path | None = Field(
        None, description="A Sigma file or folder to load instead of the repository (reloaded when it changes)."
    )
    rules_poll_seconds: float = Field(
        5.0, gt=0, le=300, description="How often the production version is checked; a new one is live within this."
    )
    divert_threshold: int = Field(
        5, ge=1, le=10, description="Threat level (0-10) at which a request is answered by a decoy."
    )
    decision_log: Path | None = Field(
        None, description="JSON-lines file every decision is appended to (what `feint shadow ingest` reads)."
    )
    decision_queue_max: int = Field(
        10_000, gt=0, le=1_000_000, description="Decisions waiting to be written; beyond, they are dropped and counted."
    )


class MeteringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEINT_METERING_", extra="ignore", frozen=True)

    mode: Literal["off", "open", "closed"] = Field(
        "off",
        description="`off`: no charge; `open`: charge, keep serving when credits is unreachable or the tenant "
        "is out of credits; `closed`: refuse (503/402) then.",
    )
    credits_url: str = Field("http://127.0.0.1:5004", description="Credits API the gateway charges through.")
    operator_key: str | None = Field(None, repr=False, description="Operator API key for the credits API.")
    account: str = Field("usage", description="The tenant's credits account that protected requests are charged to.")
    window_seconds: float = Field(5.0, gt=0, le=3600, description="One hold per window, captured with the count.")
    hold_credits: int = Field(10_000, gt=0, description="Credits held per window (a new hold when they run out).")


T = TypeVar("T", bound=BaseSettings)


def _load(cls: type[T], prefix: str) -> T:
    try:
        return cls()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"{prefix}{str(first['loc'][0]).upper()}" if first["loc"] else f"{prefix}*"
        raise ConfigError(name, str(first["msg"]), "see the README settings table") from None


def load_gateway_settings() -> GatewaySettings:
    return _load(GatewaySettings, "FEINT_GATEWAY_")


def load_metering_settings() -> MeteringSettings:
    return _load(MeteringSettings, "FEINT_METERING_")
