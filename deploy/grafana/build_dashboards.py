"""Writes deploy/grafana/dashboards/feint-<service>.json: one Grafana dashboard per service.

Built on the metrics the services export (src/feint/platform/telemetry.py, credits/engine.py,
credits/cache.py, credits/sweeper.py) and the SLO recording rules of
deploy/prometheus/build_rules.py. Panels on metrics that other issues are adding now carry
"(contract)" in their title and the metric's issue in their description (docs/operations.md,
"Metrics contract"). A unit test fails when the committed JSON and this generator disagree.

Run ``python -m deploy.grafana.build_dashboards`` after editing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
GRID_WIDTH = 24
PANEL_HEIGHT = 8
NS = 'namespace=~"$namespace"'


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 12


@dataclass
class Dashboard:
    service: str
    title: str
    panels: list[Panel] = field(default_factory=list)


def _http(service: str) -> list[Panel]:
    sel = f'service="{service}",{NS},route!~"/health|/ready|/metrics"'
    return [
        Panel(
            "Requests per second by route",
            ((f"sum by (route) (rate(feint_http_requests_total{{{sel}}}[$__rate_interval]))", "{{route}}"),),
            unit="reqps",
        ),
        Panel(
            "Server errors (5xx) by route",
            (
                (
                    f'sum by (route) (rate(feint_http_requests_total{{{sel},status=~"5.."}}[$__rate_interval]))'
                    f" / sum by (route) (rate(feint_http_requests_total{{{sel}}}[$__rate_interval]))",
                    "{{route}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Latency p50 / p95 / p99",
            tuple(
                (
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(feint_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ),
            unit="s",
        ),
        Panel(
            "Client errors (4xx) by status",
            (
                (
                    f'sum by (status) (rate(feint_http_requests_total{{{sel},status=~"4.."}}[$__rate_interval]))',
                    "{{status}}",
                ),
            ),
            unit="reqps",
            description="401/403: keys; 409: domain conflicts; 413: limits; 429: rate limits.",
        ),
        Panel(
            "SLO error ratio (availability and latency), 1h and 6h",
            tuple(
                (f'feint:slo_{kind}_errors:ratio_rate{window}{{service="{service}"}}', f"{kind} {window}")
                for kind in ("availability", "latency")
                for window in ("1h", "6h")
            ),
            unit="percentunit",
            description="Recording rules of deploy/prometheus/rules/feint.rules.yml; the availability budget is 0.1%.",
        ),
        Panel(
            "Requests in flight (and peak since start)",
            (
                (f'sum(feint_http_requests_in_flight{{service="{service}",{NS}}})', "in flight"),
                (f'max(feint_http_requests_in_flight_peak{{service="{service}",{NS}}})', "peak (one pod)"),
            ),
        ),
    ]


def _platform(service: str) -> list[Panel]:
    job = f'job="feint-{service}",{NS}'
    return [
        Panel(
            "Database pool connections",
            ((f"sum by (state) (feint_db_pool_connections{{{job}}})", "{{state}}"),),
            description="size, available, waiting (requests queued for a connection) and max, summed over pods.",
        ),
        Panel(
            "Circuit breakers open (pods)",
            ((f"sum by (dependency) (feint_circuit_breaker_open{{{job}}})", "{{dependency}}"),),
        ),
        Panel(
            "Security events",
            ((f"sum by (event) (rate(feint_security_events_total{{{job}}}[$__rate_interval]))", "{{event}}"),),
            unit="ops",
        ),
        Panel(
            "Pods up",
            ((f"sum(up{{{job}}})", "up"), (f"count(feint_build_info{{{job}}}) by (version)", "version {{version}}")),
        ),
    ]


def _credits() -> list[Panel]:
    return [
        Panel(
            "Ledger transactions by outcome",
            ((f"sum by (outcome) (rate(feint_credits_transactions_total{{{NS}}}[$__rate_interval]))", "{{outcome}}"),),
            unit="ops",
            description="`invariant` must stay at zero (FeintLedgerInvariantViolated pages on it).",
        ),
        Panel(
            "Ledger operations by result",
            ((f"sum by (result) (rate(feint_credits_operations_total{{{NS}}}[$__rate_interval]))", "{{result}}"),),
            unit="ops",
        ),
        Panel(
            "Transaction time p50 / p99 (lock to commit)",
            tuple(
                (
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(feint_credits_transaction_seconds_bucket{{{NS}}}[$__rate_interval])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
            unit="s",
        ),
        Panel(
            "Operations per transaction (mean) by source",
            (
                (
                    f"sum by (source) (rate(feint_credits_transaction_operations_sum{{{NS}}}[$__rate_interval]))"
                    f" / sum by (source) (rate(feint_credits_transaction_operations_count{{{NS}}}[$__rate_interval]))",
                    "{{source}}",
                ),
            ),
        ),
        Panel(
            "Balance cache hit ratio and write failures",
            (
                (f"avg(feint_credits_cache_hit_ratio{{{NS}}})", "hit ratio"),
                (f"sum(rate(feint_credits_cache_write_failures_total{{{NS}}}[$__rate_interval]))", "write failures/s"),
            ),
        ),
        Panel(
            "Sweeper: expired holds, grants and idempotency keys",
            ((f"sum by (kind) (increase(feint_credits_swept_total{{{NS}}}[$__rate_interval]))", "{{kind}}"),),
        ),
        Panel(
            "Audit verifications by result (contract)",
            ((f"sum by (result) (increase(feint_credits_audit_verify_total{{{NS}}}[1h]))", "{{result}}"),),
            description="Contract metric (docs/operations.md, Metrics contract): counted by the credits service.",
        ),
    ]


def _shadow() -> list[Panel]:
    return [
        Panel(
            "Canary weight by rule set (contract)",
            ((f"max by (tenant, ruleset) (feint_canary_weight_percent{{{NS}}})", "{{tenant}} {{ruleset}}"),),
            unit="percent",
            description="Contract metric of the canary controller (issue #9): share of clients the candidate judges.",
        ),
        Panel(
            "Canary transitions and rollbacks (contract)",
            (
                (f"sum by (event) (increase(feint_canary_checks_total{{{NS}}}[$__rate_interval]))", "{{event}}"),
                (f"sum(increase(feint_canary_rollbacks_total{{{NS}}}[$__rate_interval]))", "automatic rollbacks"),
            ),
            description="Contract metrics of the canary controller (issue #9).",
        ),
        Panel(
            "Guard results by metric and outcome (contract)",
            (
                (
                    f"sum by (metric, outcome) (increase(feint_canary_guard_results_total{{{NS}}}[$__rate_interval]))",
                    "{{metric}} {{outcome}}",
                ),
            ),
            description="Contract metric of the canary controller (issue #9): inconclusive is never a pass.",
        ),
    ]


def _camouflage() -> list[Panel]:
    return [
        Panel(
            "Gateway decisions by action (contract)",
            ((f"sum by (action) (rate(feint_gateway_decisions_total{{{NS}}}[$__rate_interval]))", "{{action}}"),),
            unit="reqps",
            description="Contract metric of the gateway (issue #8): pass to the upstream, or divert to a decoy.",
        ),
        Panel(
            "Threat level of judged requests, p50 / p99 (contract)",
            tuple(
                (
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(feint_gateway_threat_level_bucket{{{NS}}}[$__rate_interval])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
            description="Contract metric of the gateway (issue #8): threat 0-10 from Sigma hits and behaviour.",
        ),
        Panel(
            "Upstream errors, decision-log drops, metering failures (contract)",
            (
                (
                    f"sum by (reason) (rate(feint_gateway_upstream_errors_total{{{NS}}}[$__rate_interval]))",
                    "upstream {{reason}}",
                ),
                (
                    f"sum by (reason) (rate(feint_gateway_decisions_dropped_total{{{NS}}}[$__rate_interval]))",
                    "log drop {{reason}}",
                ),
                (
                    f"sum by (reason) (rate(feint_gateway_metering_failures_total{{{NS}}}[$__rate_interval]))",
                    "metering {{reason}}",
                ),
            ),
            unit="ops",
            description="Contract metrics of the gateway (issue #8).",
        ),
        Panel(
            "Camouflage events (contract)",
            ((f"sum by (event) (increase(feint_camouflage_events_total{{{NS}}}[$__rate_interval]))", "{{event}}"),),
            description="Contract metric (issue #8): feint.honeytoken.used also raises FeintHoneytokenUsed.",
        ),
        Panel(
            "Decoy arm effectiveness (contract)",
            ((f"max by (band, arm) (feint_camouflage_arm_effectiveness{{{NS}}})", "{{band}} {{arm}}"),),
            description="Contract metric (issue #8): UCB1 mean reward (normalised engagement, 0-1) of each arm.",
            width=24,
        ),
    ]


DASHBOARDS = (
    Dashboard("credits", "Feint / credits", _http("credits") + _credits() + _platform("credits")),
    Dashboard("shadow", "Feint / shadow", _http("shadow") + _shadow() + _platform("shadow")),
    Dashboard("camouflage", "Feint / camouflage", _camouflage() + _http("camouflage") + _platform("camouflage")),
)


def _panel_json(panel: Panel, index: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": PANEL_HEIGHT},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
    }


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    panels = []
    x = y = 0
    for index, panel in enumerate(dashboard.panels):
        if x + panel.width > GRID_WIDTH:
            x, y = 0, y + PANEL_HEIGHT
        panels.append(_panel_json(panel, index, x, y))
        x += panel.width
    return {
        "uid": f"feint-{dashboard.service}",
        "title": dashboard.title,
        "tags": ["feint", dashboard.service],
        "timezone": "utc",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
                {
                    "name": "namespace",
                    "type": "query",
                    "label": "Namespace",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": "label_values(feint_build_info, namespace)", "refId": "namespaces"},
                    "includeAll": True,
                    "multi": True,
                    "refresh": 2,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render(dashboard: Dashboard) -> str:
    return json.dumps(dashboard_json(dashboard), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    DASHBOARDS_DIR.mkdir(parents=True, exist_ok=True)
    for dashboard in DASHBOARDS:
        path = DASHBOARDS_DIR / f"feint-{dashboard.service}.json"
        path.write_text(render(dashboard))
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
