"""Every metric name in the alert rules and the dashboards is one a service's /metrics really exports,
a recording rule defines, or the metrics contract lists (deploy/prometheus/metrics-contract.yaml)."""

from __future__ import annotations

import pytest
from deploy.checks import metrics

from feint.platform.runtime import Platform
from feint.platform.serve import SERVICES, service_app
from tests.conftest import serve_app

pytestmark = pytest.mark.integration


async def _scrape(platform: Platform) -> dict[str, str]:
    scraped = {}
    for name in SERVICES:
        async with serve_app(service_app(name, platform)) as client:
            await client.get("/health")
            response = await client.get("/metrics")
            assert response.status_code == 200
            scraped[name] = response.text
    return scraped


async def test_rules_and_dashboards_use_only_existing_metrics(platform: Platform) -> None:
    """No rule or panel reads a metric nobody exports, records or has promised."""
    scraped = await _scrape(platform)
    exported = set().union(*(metrics.exported(text) for text in scraped.values()))
    assert "feint_http_requests_total" in exported
    known = exported | metrics.recorded() | metrics.load_contract().names()
    uses = [*metrics.rule_uses(), *metrics.dashboard_uses()]
    assert len(uses) > 50
    assert metrics.unknown(uses, known) == []
    # Contract entries a service now exports: the contract (and docs/operations.md) can shrink.
    print(f"contract metrics now exported: {sorted(set(metrics.load_contract().feint) & exported) or 'none'}")


async def test_the_check_rejects_a_metric_that_does_not_exist(platform: Platform) -> None:
    """The same check fails on a name that is in no exposition and not in the contract."""
    scraped = await _scrape(platform)
    exported = set().union(*(metrics.exported(text) for text in scraped.values()))
    use = metrics.Use("test", "rate(feint_http_request_total[5m])")  # singular: a typo
    assert metrics.unknown([use], exported | metrics.load_contract().names())
