"""The HTML page and the report schema."""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path
from typing import Any

import pytest

from feint.shadow import synth
from feint.shadow.evaluate import evaluate
from feint.shadow.ingest.dataset import write_records
from feint.shadow.report import RULES_SHOWN_MAX, render_html
from feint.shadow.rules import starter_rules
from feint.shadow.rules.model import rule_set
from feint.shadow.schema import validate_report

pytestmark = pytest.mark.unit

HOSTILE = '<script>alert("x")</script>&'


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real report over traffic whose requests carry markup."""
    folder = tmp_path_factory.mktemp("report")
    rng = random.Random(9)
    rules = starter_rules()
    requests = [synth.witness(rng.choice(rules).expr, rng, f"a{i}").record for i in range(200)]
    requests = [type(r)(**{**{k: getattr(r, k) for k in r.__slots__}, "cs_user_agent": HOSTILE}) for r in requests]
    requests += [synth.benign(rng, f"b{i}") for i in range(800)]
    traffic = folder / "t.parquet"
    write_records(traffic, requests)
    labels = folder / "l.csv"
    labels.write_text("id,label\n" + "".join(f"{r.id},{int(r.id.startswith('a'))}\n" for r in requests))
    return evaluate(rule_set(rules[:3]), rule_set(rules), traffic=traffic, labels=labels, latency_rows=100)


def test_page_is_self_contained_and_escaped(report: dict[str, Any]) -> None:
    """Inline SVG charts, no scripts or external resources, attacker text escaped."""
    page = render_html(report)
    assert page.count("<svg") == 5
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert "&lt;script&gt;" in page
    assert report["decision"] in page
    for heading in ("Checks", "Metrics", "ROC", "latency", "Hits per rule", "judge differently"):
        assert heading in page


def test_page_with_undefined_values_and_no_disagreement(report: dict[str, Any]) -> None:
    """Null metrics show their reason; a run without disagreements says so."""
    changed = copy.deepcopy(report)
    changed["candidate"]["mcc"] = None
    changed["candidate"]["undefined"]["mcc"] = "a marginal is <zero>"
    changed["candidate"]["roc"] = []
    changed["candidate"]["latency_us"]["histogram"] = None
    changed["disagreements"] = {"count": 0, "samples": []}
    changed["significance"]["f1_diff_ci"] = None
    page = render_html(changed)
    assert "a marginal is &lt;zero&gt;" in page
    assert "agree on every request" in page


def test_hits_chart_is_bounded(report: dict[str, Any]) -> None:
    """At most RULES_SHOWN_MAX rules are drawn."""
    changed = copy.deepcopy(report)
    changed["candidate"]["hits_per_rule"] = {
        f"k{i}": {"title": f"rule {i}", "hits": i, "hits_attack": 0, "hits_benign": i} for i in range(60)
    }
    page = render_html(changed)
    assert len(re.findall(r'fill="#f59e0b"', page)) <= RULES_SHOWN_MAX + 4


def test_schema_validation(report: dict[str, Any]) -> None:
    """A real report conforms; missing or mistyped keys are each reported."""
    assert validate_report(report) == []
    broken = copy.deepcopy(report)
    del broken["decision"]
    assert validate_report(broken) == ["decision: expected <class 'str'>"]
    broken = copy.deepcopy(report)
    broken["schema_version"] = 2
    broken["dataset"]["rows"] = "many"
    broken["production"]["tp"] = 1.5
    broken["production"]["f1"] = "high"
    broken["production"]["mcc"] = None
    broken["production"]["undefined"] = {}
    broken["production"]["latency_us"] = {}
    broken["production"]["hits_per_rule"] = []
    del broken["significance"]["mcnemar_p"]
    broken["decision"] = "MAYBE"
    broken["risk"] = "extreme"
    problems = validate_report(broken)
    assert len(problems) == 10


def test_report_json_round_trips(report: dict[str, Any], tmp_path: Path) -> None:
    """The report is plain JSON (no numpy types)."""
    import json

    assert json.loads(json.dumps(report)) == report
