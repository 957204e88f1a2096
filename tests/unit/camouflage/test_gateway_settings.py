"""The gateway's settings are documented in the README and checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from feint.camouflage.engine.gateway_config import (
    GatewaySettings,
    MeteringSettings,
    load_gateway_settings,
    load_metering_settings,
)
from feint.errors import ConfigError

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_gateway_setting_documented() -> None:
    """Each FEINT_GATEWAY_* and FEINT_METERING_* variable has a row in the README."""
    text = README.read_text(encoding="utf-8")
    names = [f"FEINT_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields]
    names += [f"FEINT_METERING_{name.upper()}" for name in MeteringSettings.model_fields]
    assert [name for name in names if f"`{name}`" not in text] == []


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad threshold or mode stops start-up with the variable's name."""
    monkeypatch.setenv("FEINT_GATEWAY_DIVERT_THRESHOLD", "11")
    with pytest.raises(ConfigError, match="FEINT_GATEWAY_DIVERT_THRESHOLD"):
        load_gateway_settings()
    monkeypatch.setenv("FEINT_METERING_MODE", "sometimes")
    with pytest.raises(ConfigError, match="FEINT_METERING_MODE"):
        load_metering_settings()
