"""The README stays true: every setting is documented and the two commands open it."""

from __future__ import annotations

from pathlib import Path

import pytest

from feint.settings import Settings

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_setting_documented() -> None:
    """Each FEINT_* variable the settings read has a row in the README's table."""
    text = README.read_text(encoding="utf-8")
    missing = [f"FEINT_{name.upper()}" for name in Settings.model_fields if f"`FEINT_{name.upper()}`" not in text]
    assert missing == []


def test_two_commands_first() -> None:
    """The first code block of the README is `make up` and `make test`."""
    text = README.read_text(encoding="utf-8")
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in block.strip().splitlines()] == [["make", "up"], ["make", "test"]]
