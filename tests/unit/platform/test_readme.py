"""The README stays true: every setting is documented and the two commands open it."""

from __future__ import annotations

from pathlib import Path

import pytest

from feint.credits.config import CreditsSettings
from feint.settings import Settings

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_setting_documented() -> None:
    """Each FEINT_* variable the settings read (platform and credits) has a row in the README."""
    text = README.read_text(encoding="utf-8")
    names = [f"FEINT_{name.upper()}" for name in Settings.model_fields]
    names += [f"FEINT_CREDITS_{name.upper()}" for name in CreditsSettings.model_fields]
    missing = [name for name in names if f"`{name}`" not in text]
    assert missing == []


def test_two_commands_first() -> None:
    """The first code block of the README is `make up` and `make test`."""
    text = README.read_text(encoding="utf-8")
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in block.strip().splitlines()] == [["make", "up"], ["make", "test"]]
