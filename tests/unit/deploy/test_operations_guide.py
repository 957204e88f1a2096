"""docs/operations.md stays true: every setting in the configuration reference, the metrics contract as in the YAML."""

from __future__ import annotations

import re

import pytest
from deploy.checks import metrics

from feint.credits.config import CreditsSettings
from feint.settings import Settings

pytestmark = pytest.mark.unit

GUIDE = metrics.DEPLOY.parent / "docs" / "operations.md"


def _chapter(title: str) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_configuration_reference_names_every_setting() -> None:
    """Each FEINT_* field of the settings (platform and credits) appears in the configuration reference."""
    chapter = _chapter("Configuration reference")
    names = [f"FEINT_{n.upper()}" for n in Settings.model_fields]
    names += [f"FEINT_CREDITS_{n.upper()}" for n in CreditsSettings.model_fields]
    missing = [n for n in names if f"`{n}`" not in chapter]
    assert missing == []


def test_metrics_contract_table_matches_the_contract_file() -> None:
    """The guide's contract table lists exactly the names of deploy/prometheus/metrics-contract.yaml."""
    chapter = _chapter("Monitoring and alerts")
    table = chapter[chapter.index("### Metrics contract") :]
    in_guide = set(re.findall(r"^\| `([a-z_:]+)` \|", table, flags=re.MULTILINE))
    contract = metrics.load_contract()
    assert in_guide == set(contract.feint) | set(contract.external)
