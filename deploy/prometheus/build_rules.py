"""Writes deploy/prometheus/rules/feint.rules.yml: SLO recording rules and every Feint alert.

The SLO alerts follow the multi-window, multi-burn-rate recipe of the Google SRE workbook
("Alerting on SLOs", table 5-8): page when 2% of the 30-day error budget burns in an hour
(14.4x over 1h, confirmed over 5m) or 5% in six hours (6x over 6h / 30m); open a ticket when
10% burns in three days (1x over 3d / 6h) or a day (3x over 1d / 2h). The short window makes
the alert stop soon after the burn stops.

Run ``python -m deploy.prometheus.build_rules`` after editing; a unit test fails when the
committed file and this generator disagree, so the YAML is never edited by hand.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).resolve().parent / "rules" / "feint.rules.yml"
RUNBOOK = "https://github.com/feint/feint/blob/main/docs/operations.md"
SLO_PERIOD_DAYS = 30
# Requests the SLOs do not count: probes and the scrape itself.
NOT_TRAFFIC = 'route!~"/health|/ready|/metrics"'
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class BurnAlert:
    """One line of the SRE workbook's table: burn-rate factor over a long and a short window."""

    factor: float
    long: str
    short: str
    severity: str
    for_: str


BURN_ALERTS = (
    BurnAlert(14.4, "1h", "5m", "critical", "2m"),
    BurnAlert(6, "6h", "30m", "critical", "15m"),
    BurnAlert(3, "1d", "2h", "warning", "1h"),
    BurnAlert(1, "3d", "6h", "warning", "3h"),
)


@dataclass(frozen=True)
class Slo:
    """A service's objectives: share of good requests, and the latency a good request stays under."""

    service: str
    availability: float
    latency_seconds: str  # a bucket boundary of feint_http_request_duration_seconds
    latency_target: float


SLOS = (
    Slo("credits", 0.999, "0.25", 0.99),
    # Evaluations and dataset uploads run longer than ledger calls.
    Slo("shadow", 0.999, "1.0", 0.99),
    Slo("camouflage", 0.999, "0.25", 0.99),
)


def _sel(service: str, extra: str = "") -> str:
    parts = [f'service="{service}"', NOT_TRAFFIC] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}"


def recording_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for slo in SLOS:
        for window in WINDOWS:
            total = f"sum(rate(feint_http_requests_total{_sel(slo.service)}[{window}]))"
            server_errors = _sel(slo.service, 'status=~"5.."')
            errors = f"sum(rate(feint_http_requests_total{server_errors}[{window}]))"
            rules.append(
                {
                    "record": f"feint:slo_availability_errors:ratio_rate{window}",
                    "expr": f"({errors} or vector(0)) / {total}",
                    "labels": {"service": slo.service, "slo": "availability"},
                }
            )
            under = _sel(slo.service, f'le="{slo.latency_seconds}"')
            fast = f"sum(rate(feint_http_request_duration_seconds_bucket{under}[{window}]))"
            count = f"sum(rate(feint_http_request_duration_seconds_count{_sel(slo.service)}[{window}]))"
            rules.append(
                {
                    "record": f"feint:slo_latency_errors:ratio_rate{window}",
                    "expr": f"1 - ({fast} / {count})",
                    "labels": {"service": slo.service, "slo": "latency"},
                }
            )
    return rules


def _slo_alerts() -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    for kind, title in (("availability", "errors (5xx)"), ("latency", "slow requests")):
        for slo in SLOS:
            objective = slo.availability if kind == "availability" else slo.latency_target
            budget = round(1 - objective, 6)
            for burn in BURN_ALERTS:
                threshold = round(burn.factor * budget, 6)
                record = f"feint:slo_{kind}_errors:ratio_rate"
                match = f'{{service="{slo.service}",slo="{kind}"}}'
                alerts.append(
                    {
                        "alert": f"Feint{kind.capitalize()}BudgetBurn",
                        "expr": (
                            f"{record}{burn.long}{match} > {threshold}\nand\n{record}{burn.short}{match} > {threshold}"
                        ),
                        "for": burn.for_,
                        "labels": {
                            "severity": burn.severity,
                            "service": slo.service,
                            "slo": kind,
                            "burn": f"{burn.factor:g}x/{burn.long}",
                        },
                        "annotations": {
                            "summary": (
                                f"{slo.service}: {title} burn the {objective:.1%} {kind} SLO's "
                                f"{SLO_PERIOD_DAYS}-day budget {burn.factor:g}x too fast"
                            ),
                            "description": (
                                f"Over the last {burn.long} (and still over {burn.short}) "
                                "{{ $value | humanizePercentage }} of "
                                f"{slo.service}'s requests were {title}; the budget allows {budget:.2%}."
                            ),
                            "runbook_url": f"{RUNBOOK}#feint{kind}budgetburn",
                        },
                    }
                )
    return alerts


def _alert(
    name: str, expr: str, *, for_: str, severity: str, summary: str, description: str, **labels: str
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_ != "0m":
        rule["for"] = for_
    rule["labels"] = {"severity": severity, **labels}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{RUNBOOK}#{name.lower()}",
    }
    return rule


def service_alerts() -> list[dict[str, Any]]:
    return [
        _alert(
            "FeintTargetDown",
            'up{job=~"feint-(credits|shadow|camouflage)"} == 0',
            for_="5m",
            severity="critical",
            summary="{{ $labels.job }} pod {{ $labels.pod }} has not answered a scrape for 5 minutes",
            description="Prometheus cannot scrape {{ $labels.instance }}; the pod is down, not ready, or blocked.",
        ),
        _alert(
            "FeintCircuitBreakerOpen",
            "max by (namespace, pod, dependency) (feint_circuit_breaker_open) == 1",
            for_="5m",
            severity="warning",
            summary="{{ $labels.pod }}: the {{ $labels.dependency }} circuit breaker has been open for 5 minutes",
            description="Calls to {{ $labels.dependency }} fail fast; caches are cold and rate limits per process.",
        ),
        _alert(
            "FeintDatabasePoolSaturated",
            'max by (namespace, pod) (feint_db_pool_connections{state="waiting"}) > 0\n'
            'and on (namespace, pod)\nmax by (namespace, pod) (feint_db_pool_connections{state="available"}) == 0',
            for_="10m",
            severity="warning",
            summary="{{ $labels.pod }}: requests wait for a database connection",
            description="Every pooled connection is busy and requests queue for one (FEINT_DB_POOL_SIZE_MAX).",
        ),
        _alert(
            "FeintAuthenticationFailures",
            'sum by (namespace) (rate(feint_security_events_total{event="auth_failed"}[5m])) > 5',
            for_="10m",
            severity="warning",
            summary="More than 5 failed API-key authentications per second for 10 minutes",
            description="A client is guessing keys or a revoked key is still deployed somewhere.",
            team="security",
        ),
        _alert(
            "FeintLedgerInvariantViolated",
            'sum(increase(feint_credits_transactions_total{outcome="invariant"}[10m])) > 0',
            for_="0m",
            severity="critical",
            summary="The credits ledger refused a transaction whose entries did not balance",
            description="An invariant check fired ({{ $value }} in 10 minutes): a bug, never a client error.",
        ),
        _alert(
            "FeintCreditsCacheWriteFailures",
            "sum(rate(feint_credits_cache_write_failures_total[10m])) > 0.1",
            for_="15m",
            severity="warning",
            summary="Balance cache write-throughs fail",
            description="Balances are served from PostgreSQL; Redis is failing or full.",
        ),
    ]


def contract_alerts() -> list[dict[str, Any]]:
    """Alerts on metrics other issues are adding now (docs/operations.md, "Metrics contract")."""
    return [
        _alert(
            "FeintLedgerAuditVerifyFailed",
            'sum(increase(feint_credits_audit_verify_total{result="broken"}[1h])) > 0',
            for_="0m",
            severity="critical",
            summary="Audit verification found a broken ledger chain",
            description="A verification (API, CLI or a restored backup) found an entry that does not verify.",
        ),
        _alert(
            "FeintCanaryRolledBack",
            "sum by (namespace) (increase(feint_canary_rollbacks_total[10m])) > 0",
            for_="0m",
            severity="warning",
            summary="A rule rollout was rolled back automatically",
            description="A guard metric failed; the candidate's weight is 0. `feint rollout status` shows the guards.",
        ),
        _alert(
            "FeintCanaryPaused",
            'sum by (namespace) (increase(feint_canary_checks_total{event="paused"}[30m])) > 0',
            for_="0m",
            severity="warning",
            summary="A rule rollout paused for a human (inconclusive guards)",
            description="The canary lacked data for its guards past the wait limit; resume, abort or promote it.",
        ),
        _alert(
            "FeintHoneytokenUsed",
            'sum by (namespace) (increase(feint_camouflage_events_total{event="feint.honeytoken.used"}[5m])) > 0',
            for_="0m",
            severity="warning",
            summary="A honeytoken was used ({{ $value }} in 5 minutes)",
            description="A client presented a credential or URL that only a decoy ever handed out (event 8005).",
            team="security",
        ),
        _alert(
            "FeintGatewayUpstreamErrors",
            "sum by (namespace) (rate(feint_gateway_upstream_errors_total[5m]))\n"
            "/\nsum by (namespace) (rate(feint_gateway_decisions_total[5m])) > 0.05",
            for_="5m",
            severity="critical",
            summary="More than 5% of gateway requests fail at the upstream (502/504)",
            description="The protected application is down or unreachable from the gateway pods.",
        ),
        _alert(
            "FeintGatewayDecisionsDropped",
            "sum by (namespace, reason) (rate(feint_gateway_decisions_dropped_total[10m])) > 0",
            for_="10m",
            severity="warning",
            summary="The gateway drops decision-log records ({{ $labels.reason }})",
            description="The decision log's queue is full or its database writes fail; shadow replays will miss them.",
        ),
        _alert(
            "FeintGatewayMeteringFailing",
            "sum by (namespace, reason) (rate(feint_gateway_metering_failures_total[10m])) > 0",
            for_="15m",
            severity="warning",
            summary="The gateway cannot charge credits ({{ $labels.reason }})",
            description="Calls from camouflage to the credits service fail; protected requests are not billed.",
        ),
        _alert(
            "FeintBackupTooOld",
            'time() - max(feint_backup_last_success_timestamp_seconds{operation="create"}) > 26 * 3600',
            for_="15m",
            severity="warning",
            summary="The last successful `feint backup create` is more than 26 hours old",
            description="The daily backup CronJob failed or did not run.",
        ),
        _alert(
            "FeintBackupMissing",
            'time() - max(feint_backup_last_success_timestamp_seconds{operation="create"}) > 50 * 3600\n'
            'or\nabsent(feint_backup_last_success_timestamp_seconds{operation="create"})',
            for_="30m",
            severity="critical",
            summary="No successful backup for more than two days",
            description="Two daily backups in a row failed (or none was ever reported).",
        ),
        _alert(
            "FeintBackupFailed",
            "max by (operation) (feint_backup_last_failure_timestamp_seconds)\n"
            "> on (operation)\nmax by (operation) (feint_backup_last_success_timestamp_seconds)",
            for_="0m",
            severity="warning",
            summary="The last `feint backup {{ $labels.operation }}` failed",
            description="Its log and the alert webhook carry the error; the previous good backup still stands.",
        ),
        _alert(
            "FeintBackupVerifyTooOld",
            'time() - max(feint_backup_last_success_timestamp_seconds{operation="verify"}) > 8 * 86400',
            for_="1h",
            severity="warning",
            summary="No backup was verified (restored and checked) in the last 8 days",
            description="The weekly `feint backup verify` failed or did not run.",
        ),
        _alert(
            "FeintPostgresBaseBackupTooOld",
            "time() - max by (namespace) (cnpg_collector_last_available_backup_timestamp) > 26 * 3600",
            for_="30m",
            severity="warning",
            summary="CloudNativePG's newest base backup is more than 26 hours old",
            description="Point-in-time recovery needs a base backup; check the ScheduledBackup and Backup objects.",
        ),
        _alert(
            "FeintPostgresWalArchivingStalled",
            "max by (namespace, pod) (cnpg_pg_stat_archiver_seconds_since_last_archival) > 900",
            for_="10m",
            severity="critical",
            summary="{{ $labels.pod }}: no WAL segment archived for 15 minutes",
            description="archive_timeout is 5 minutes, so WAL should reach S3 at least that often; the RPO is growing.",
        ),
    ]


def document() -> dict[str, Any]:
    return {
        "groups": [
            {"name": "feint-slo-recording", "rules": recording_rules()},
            {"name": "feint-slo-alerts", "rules": _slo_alerts()},
            {"name": "feint-service-alerts", "rules": service_alerts()},
            {"name": "feint-contract-alerts", "rules": contract_alerts()},
        ]
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, as a person would write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    header = "# Generated by deploy/prometheus/build_rules.py; edit that file, then run it.\n"
    return header + yaml.dump(document(), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main() -> None:
    RULES_FILE.parent.mkdir(parents=True, exist_ok=True)
    RULES_FILE.write_text(render())
    sys.stdout.write(f"wrote {RULES_FILE}\n")


if __name__ == "__main__":
    main()
