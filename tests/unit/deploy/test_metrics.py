"""deploy.checks.metrics: metric names read from PromQL and from an exposition; generated files current."""

from __future__ import annotations

import json

import pytest
import yaml
from deploy.checks import metrics
from deploy.checks.run import generated_up_to_date
from deploy.grafana import build_dashboards
from deploy.prometheus import build_rules

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (route, status) (rate(feint_http_requests_total{service="x",route!~"/a|/b"}[5m]))',
         {"feint_http_requests_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket{le=~\"0.25\"}[$__rate_interval])))", {"a_bucket"}),
        ("feint:ratio_rate1h{slo=\"x\"} > 0.0144\nand\nfeint:ratio_rate5m > 1e-3", {"feint:ratio_rate1h", "feint:ratio_rate5m"}),
        ("max by (op) (a) > on (op) max by (op) (b)", {"a", "b"}),
        ("a / ignoring(x) group_left(y, z) b offset 5m", {"a", "b"}),
        ('time() - max(t{kind="create"}) > 26 * 3600 or absent(t{kind="create"})', {"t"}),
        ("count(feint_build_info) by (version)", {"feint_build_info"}),
        ("rate(x[5m:30s]) unless bool y", {"x", "y"}),
        ("(a or vector(0)) / b", {"a", "b"}),
    ],
)  # fmt: skip
def test_referenced_names_only_metric_selectors(expr: str, names: set[str]) -> None:
    """Functions, keywords, label names, label values, durations and numbers are not metric names."""
    assert metrics.referenced(expr) == names


def test_unbalanced_or_huge_expressions_are_refused() -> None:
    """An expression the extractor cannot read raises rather than passing silently."""
    with pytest.raises(metrics.PromQLShapeError, match="unbalanced"):
        metrics.referenced('sum(rate(x{a="b"[5m]))')
    with pytest.raises(metrics.PromQLShapeError, match="exceeds"):
        metrics.referenced("a+" * metrics.EXPR_CHARS_MAX)


def test_exported_expands_families_with_or_without_samples() -> None:
    """A counter, a histogram and a labelled family with no children all produce their series names."""
    exposition = (
        "# HELP c_total Calls.\n# TYPE c_total counter\nc_total 3.0\n"
        "# HELP h Latency.\n# TYPE h histogram\n"
        "# HELP e_total Never used.\n# TYPE e_total counter\n"
        "# HELP g Gauge.\n# TYPE g gauge\ng 1.0\n"
    )
    names = metrics.exported(exposition)
    assert {"c_total", "h_bucket", "h_sum", "h_count", "e_total", "g"} <= names
    assert "h" not in names


def test_unknown_names_the_use_and_the_metric() -> None:
    """A name that is neither exported, recorded nor contracted is reported with where it is used."""
    uses = [metrics.Use("r.yml: g/Alert", "rate(known_total[5m]) / rate(typo_total[5m])")]
    assert metrics.unknown(uses, {"known_total"}) == [
        "r.yml: g/Alert: typo_total is neither exported, recorded nor in the metrics contract"
    ]


def test_contract_expands_histograms_and_keeps_external_names() -> None:
    """The contract allows a histogram's series and the third-party names it lists."""
    contract = metrics.load_contract()
    names = contract.names()
    assert "feint_gateway_threat_level_bucket" in names
    assert "up" in names
    assert all(name.startswith("feint_") for name in contract.feint)


def test_dashboard_uses_include_panels_and_label_values_variables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Panel targets nested in rows and label_values() variables are both read."""
    board = {
        "panels": [{"type": "row", "title": "r", "panels": [{"title": "p", "targets": [{"refId": "A", "expr": "x"}]}]}],
        "templating": {"list": [{"name": "ns", "type": "query", "query": {"query": "label_values(y, namespace)"}}]},
    }
    (tmp_path / "b.json").write_text(json.dumps(board))
    assert sorted(u.expr for u in metrics.dashboard_uses(tmp_path)) == ["x", "y"]


def test_committed_rules_and_dashboards_match_their_generators() -> None:
    """Nobody edited the generated YAML or JSON by hand."""
    assert generated_up_to_date() == []


def test_every_burn_rate_alert_pairs_a_long_and_a_short_window() -> None:
    """Each SLO alert compares the same threshold over the workbook's window pairs and severities."""
    doc = yaml.safe_load(build_rules.render())
    alerts = [r for g in doc["groups"] for r in g["rules"] if r.get("alert", "").endswith("BudgetBurn")]
    pairs = {(a["labels"]["burn"], a["labels"]["severity"]) for a in alerts}
    assert pairs == {("14.4x/1h", "critical"), ("6x/6h", "critical"), ("3x/1d", "warning"), ("1x/3d", "warning")}
    for alert in alerts:
        long_part, short_part = alert["expr"].split("\nand\n")
        assert long_part.rsplit(">", 1)[1] == short_part.rsplit(">", 1)[1]
    assert len(alerts) == 2 * len(build_rules.SLOS) * len(build_rules.BURN_ALERTS)


def test_every_alert_has_severity_summary_and_a_runbook_anchor_in_the_guide() -> None:
    """Each alert routes (severity) and links to its section of docs/operations.md."""
    doc = yaml.safe_load(build_rules.render())
    guide = (metrics.DEPLOY.parent / "docs" / "operations.md").read_text().lower()
    for rule in (r for g in doc["groups"] for r in g["rules"] if "alert" in r):
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert f"#### {rule['alert'].lower()}" in guide, f"docs/operations.md has no section for {rule['alert']}"
        assert anchor == rule["alert"].lower()


def test_each_service_has_a_dashboard_with_unique_panel_ids() -> None:
    """One dashboard per service, every panel with an id of its own and at least one query."""
    assert {b.service for b in build_dashboards.DASHBOARDS} == {"credits", "shadow", "camouflage"}
    for board in build_dashboards.DASHBOARDS:
        data = build_dashboards.dashboard_json(board)
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids))
        assert all(p["targets"] for p in data["panels"])
