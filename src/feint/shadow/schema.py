"""The evaluation report (``report.json``), version 1.

Top level:

``schema_version``  1; bumped when a key changes meaning or disappears (new keys may appear)
``generated_at``    ISO 8601 UTC time of the run
``inputs``          what makes the run reproducible: ``production``/``candidate`` (``name``,
                    ``sha256`` of rules, weights and threshold), ``traffic`` and ``labels``
                    (``path``, ``sha256`` of the file), ``thresholds`` (every decision setting and
                    the bootstrap seed)
``dataset``         ``rows``, ``labeled``, ``unlabeled``, ``malformed`` (label lines plus traffic
                    lines rejected), ``malformed_labels``, ``malformed_traffic``,
                    ``duplicate_labels``, ``unknown_label_ids`` (labels naming no request),
                    ``attacks``, ``benign``, ``examples`` (first ``unlabeled`` ids and
                    ``malformed`` lines with path, line, reason, text)
``production``,     one object per version (below)
``candidate``
``significance``    ``mcnemar_p``, ``mcnemar_method`` (``exact-binomial`` or ``chi2-continuity``),
                    ``mcnemar_statistic``, ``discordant`` (``production_only_correct``,
                    ``candidate_only_correct``), ``f1_diff_ci`` ([low, high] of candidate minus
                    production on ``objective``, or null), ``objective``, ``ci_level``,
                    ``resamples``, ``note``
``confidence``      bootstrap probability that the candidate is better on the objective (see
                    :mod:`feint.shadow.stats`), or null
``decision``        ``APPROVE_FULL_DEPLOYMENT``, ``APPROVE_CANARY`` or ``REJECT``
``decision_reason`` ``no-change``, ``confidence-undefined``, ``confident-and-within-fpr``,
                    ``fpr-above-limit``, ``moderate-confidence`` or ``low-confidence``
``risk``            ``low``, ``medium`` or ``high`` (see :mod:`feint.shadow.decision`)
``checks``          list of ``name``, ``passed``, ``value``, ``threshold``, ``detail``
``disagreements``   ``count`` (all requests), ``samples`` (``id``, ``label``, both verdicts and
                    the ``request`` fields)
``elapsed_seconds`` wall time of the evaluation

Per version: ``name``, ``rules``, ``tp``, ``fp``, ``tn``, ``fn``, ``precision``, ``recall``,
``f1``, ``fpr``, ``accuracy``, ``mcc``, ``kappa``, ``auc_roc`` (over the weighted score),
``chi2_p`` (predictions against labels), ``undefined`` (metric name to the reason it is null),
``latency_us`` (``p50``, ``p95``, ``p99``, ``max``, ``samples``, ``histogram``: engine 1, timed
per request on a sample), ``hits_per_rule`` (rule key to ``title``, ``level``, ``weight``,
``post_response``, ``hits``, ``hits_attack``, ``hits_benign``, ``chi2_p``), ``roc`` (list of
[FPR, TPR] points).
"""

from __future__ import annotations

from typing import Any, Final

REPORT_SCHEMA_VERSION: Final = 1

_TOP: Final = {
    "schema_version": int,
    "generated_at": str,
    "inputs": dict,
    "dataset": dict,
    "production": dict,
    "candidate": dict,
    "significance": dict,
    "confidence": (float, type(None)),
    "decision": str,
    "decision_reason": str,
    "risk": str,
    "checks": list,
    "disagreements": dict,
    "elapsed_seconds": (int, float),
}
_DATASET: Final = ("rows", "labeled", "unlabeled", "malformed")
_COUNTS: Final = ("tp", "fp", "tn", "fn")
_RATES: Final = ("precision", "recall", "f1", "fpr", "accuracy", "mcc", "kappa", "auc_roc", "chi2_p")
_LATENCY: Final = ("p50", "p95", "p99")
DECISIONS: Final = frozenset({"APPROVE_FULL_DEPLOYMENT", "APPROVE_CANARY", "REJECT"})
RISKS: Final = frozenset({"low", "medium", "high"})


def validate_report(report: dict[str, Any]) -> list[str]:
    """Every way ``report`` departs from schema version 1; empty when it conforms."""
    problems = [
        f"{key}: expected {kind}"
        for key, kind in _TOP.items()
        if key not in report or not isinstance(report[key], kind)  # type: ignore[arg-type]
    ]
    if problems:
        return problems
    if report["schema_version"] != REPORT_SCHEMA_VERSION:
        problems.append(f"schema_version: expected {REPORT_SCHEMA_VERSION}")
    problems += [f"dataset.{k}: expected an integer" for k in _DATASET if not isinstance(report["dataset"].get(k), int)]
    for version in ("production", "candidate"):
        block = report[version]
        problems += [f"{version}.{k}: expected an integer" for k in _COUNTS if not isinstance(block.get(k), int)]
        for key in _RATES:
            value = block.get(key, "missing")
            if value is not None and not isinstance(value, float):
                problems.append(f"{version}.{key}: expected a number or null")
            if value is None and key not in block.get("undefined", {}):
                problems.append(f"{version}.{key}: null without a reason in 'undefined'")
        latency = block.get("latency_us")
        if not isinstance(latency, dict) or any(k not in latency for k in _LATENCY):
            problems.append(f"{version}.latency_us: expected p50, p95 and p99")
        if not isinstance(block.get("hits_per_rule"), dict):
            problems.append(f"{version}.hits_per_rule: expected an object")
    significance = report["significance"]
    for key in ("mcnemar_p", "f1_diff_ci"):
        if key not in significance:
            problems.append(f"significance.{key}: missing")
    if report["decision"] not in DECISIONS:
        problems.append(f"decision: expected one of {sorted(DECISIONS)}")
    if report["risk"] not in RISKS:
        problems.append(f"risk: expected one of {sorted(RISKS)}")
    return problems
