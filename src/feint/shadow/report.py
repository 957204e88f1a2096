"""``report.html``: one self-contained page a person reads in a minute.

Inline SVG drawn here (no scripts, no external files): ROC curves, both confusion matrices, the
latency distribution of the compiled matcher, hits per rule, and sample requests on which the
versions disagree. Every value from the report passes through :func:`html.escape`: request
fields are attacker-controlled text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Final

RULES_SHOWN_MAX: Final = 25
TEXT_CHARS_MAX: Final = 120
TITLE_CHARS_MAX: Final = 58
_COLOURS: Final = {"production": "#6b7280", "candidate": "#2563eb"}
_DECISION_COLOURS: Final = {
    "APPROVE_FULL_DEPLOYMENT": "#15803d",
    "APPROVE_CANARY": "#b45309",
    "REJECT": "#b91c1c",
}
_METRICS: Final = (
    ("tp", "true positives"), ("fp", "false positives"), ("tn", "true negatives"),
    ("fn", "false negatives"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
    ("fpr", "false-positive rate"), ("accuracy", "accuracy"), ("mcc", "MCC"),
    ("kappa", "Cohen's kappa"), ("auc_roc", "AUC-ROC"), ("chi2_p", "chi-square p"),
)  # fmt: skip
_STYLE: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#111827}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #e5e7eb}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .6rem;border-bottom:1px solid
#f3f4f6;text-align:left;vertical-align:top}th{background:#f9fafb}.num{text-align:right;
font-variant-numeric:tabular-nums}.badge{display:inline-block;color:#fff;padding:.2rem .6rem;
border-radius:.3rem;font-weight:600}.grid{display:flex;gap:2rem;flex-wrap:wrap}.pass{color:#15803d}
.fail{color:#b91c1c}.muted{color:#6b7280}code{font-size:12px;word-break:break-all}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return _e(value)


def _clip(value: object) -> str:
    text = "" if value is None else str(value)
    return _e(text if len(text) <= TEXT_CHARS_MAX else text[:TEXT_CHARS_MAX] + "…")


def _svg(width: int, height: int, body: Sequence[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">' + "".join(body) + "</svg>"
    )


def roc_svg(report: dict[str, Any], size: int = 300) -> str:
    """Both ROC curves over the diagonal of chance."""
    pad, span = 36, size - 48
    body = [
        f'<rect x="{pad}" y="8" width="{span}" height="{span}" fill="#fff" stroke="#d1d5db"/>',
        f'<line x1="{pad}" y1="{8 + span}" x2="{pad + span}" y2="8" stroke="#e5e7eb" stroke-dasharray="4"/>',
        f'<text x="{pad + span / 2}" y="{size - 6}" text-anchor="middle" font-size="11">FPR</text>',
        f'<text x="10" y="{8 + span / 2}" font-size="11" transform="rotate(-90 10 {8 + span / 2})" '
        'text-anchor="middle">TPR</text>',
    ]
    for offset, version in enumerate(("production", "candidate")):
        points = report[version].get("roc") or []
        if points:
            path = " ".join(f"{pad + x * span:.1f},{8 + (1 - y) * span:.1f}" for x, y in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{_COLOURS[version]}" stroke-width="2"/>')
        auc = _num(report[version].get("auc_roc"), 3)
        body.append(
            f'<text x="{pad + span - 4}" y="{8 + span - 8 - 14 * offset}" text-anchor="end" font-size="11" '
            f'fill="{_COLOURS[version]}">{_e(version)} AUC {auc}</text>'
        )
    return _svg(size, size, body, "ROC curves")


def confusion_svg(block: dict[str, Any], title: str, size: int = 200) -> str:
    """A 2x2 confusion matrix shaded by count."""
    cells = ((block["tp"], "TP", 0, 0), (block["fn"], "FN", 1, 0), (block["fp"], "FP", 0, 1), (block["tn"], "TN", 1, 1))
    largest = max(max(count for count, *_ in cells), 1)
    cell, pad = (size - 40) // 2, 30
    body = [
        f'<text x="{pad + cell}" y="12" text-anchor="middle" font-size="12" font-weight="600">{_e(title)}</text>',
        f'<text x="{pad + cell / 2}" y="26" text-anchor="middle" font-size="10">flagged</text>',
        f'<text x="{pad + 1.5 * cell}" y="26" text-anchor="middle" font-size="10">passed</text>',
        f'<text x="4" y="{pad + cell / 2}" font-size="10">attack</text>',
        f'<text x="4" y="{pad + 1.5 * cell}" font-size="10">benign</text>',
    ]
    for count, name, column, row in cells:
        shade = 0.12 + 0.8 * (count / largest)
        x, y = pad + column * cell, pad + row * cell
        side = cell - 2
        body.append(f'<rect x="{x}" y="{y}" width="{side}" height="{side}" fill="#2563eb" fill-opacity="{shade:.2f}"/>')
        middle = f'x="{x + cell / 2}" y="{y + cell / 2}" text-anchor="middle"'
        body.append(f'<text {middle} font-size="12">{name} {_num(count)}</text>')
    return _svg(size + 40, size, body, f"confusion matrix of {title}")


def latency_svg(report: dict[str, Any], width: int = 560, height: int = 180) -> str:
    """Histograms of per-request matcher latency, both versions, on shared bins."""
    body = [f'<line x1="30" y1="{height - 24}" x2="{width - 8}" y2="{height - 24}" stroke="#9ca3af"/>']
    edges: list[float] = []
    for offset, version in enumerate(("production", "candidate")):
        latency = report[version].get("latency_us") or {}
        histogram = latency.get("histogram")
        if not histogram:
            continue
        counts, edges = histogram["counts"], histogram["edges"]
        tallest, bar = max(max(counts), 1), (width - 40) / len(counts)
        for index, count in enumerate(counts):
            high = (height - 40) * count / tallest
            x = 30 + index * bar + offset * bar / 2
            title = f"{_e(version)}: {count} requests, {edges[index]:.1f}–{edges[index + 1]:.1f} µs"
            body.append(
                f'<rect x="{x:.1f}" y="{height - 24 - high:.1f}" width="{bar / 2 - 1:.1f}" height="{high:.1f}" '
                f'fill="{_COLOURS[version]}"><title>{title}</title></rect>'
            )
        body.append(
            f'<text x="{width - 8}" y="{14 + 14 * offset}" text-anchor="end" font-size="11" '
            f'fill="{_COLOURS[version]}">{_e(version)} p50 {_num(latency["p50"], 3)} µs, '
            f"p99 {_num(latency['p99'], 3)} µs</text>"
        )
    if edges:
        body.append(f'<text x="30" y="{height - 8}" font-size="10">{edges[0]:.0f} µs</text>')
        body.append(
            f'<text x="{width - 8}" y="{height - 8}" text-anchor="end" font-size="10">≥ {edges[-2]:.0f} µs</text>'
        )
    return _svg(width, height, body, "matcher latency distribution")


def hits_svg(report: dict[str, Any], width: int = 1000) -> str:
    """The rules with the most hits, split into labeled attacks and labeled benign requests."""
    merged: dict[str, dict[str, Any]] = {}
    for version in ("production", "candidate"):
        for key, rule in report[version]["hits_per_rule"].items():
            merged.setdefault(key, {**rule, "in": []})["in"].append(version)
    ranked = sorted(merged.values(), key=lambda rule: -rule["hits"])[:RULES_SHOWN_MAX]
    row, label_width = 18, 420
    largest = max((rule["hits"] for rule in ranked), default=0) or 1
    body: list[str] = []
    for index, rule in enumerate(ranked):
        y = index * row
        scale = (width - label_width - 80) / largest
        attack, benign = rule["hits_attack"] * scale, rule["hits_benign"] * scale
        other = (rule["hits"] - rule["hits_attack"] - rule["hits_benign"]) * scale
        where = "both" if len(rule["in"]) == 2 else rule["in"][0]
        title = str(rule["title"])
        title = title if len(title) <= TITLE_CHARS_MAX else title[: TITLE_CHARS_MAX - 1] + "…"
        body.append(f'<text x="0" y="{y + 13}" font-size="11">{_e(title)} ({_e(where)})</text>')
        body.append(f'<rect x="{label_width}" y="{y + 3}" width="{attack:.1f}" height="12" fill="#b91c1c"/>')
        x = label_width + attack
        body.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{benign:.1f}" height="12" fill="#f59e0b"/>')
        x += benign
        body.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{other:.1f}" height="12" fill="#d1d5db"/>')
        x += other + 4
        body.append(f'<text x="{x:.1f}" y="{y + 13}" font-size="11">{_num(rule["hits"])}</text>')
    return _svg(width, max(row * len(ranked), row), body, "hits per rule")


def _metrics_table(report: dict[str, Any]) -> str:
    rows = []
    for key, name in _METRICS:
        cells = []
        for version in ("production", "candidate"):
            value = report[version].get(key)
            reason = report[version].get("undefined", {}).get(key)
            shown = _num(value) if value is not None else f'<span title="{_e(reason)}">— ({_e(reason)})</span>'
            cells.append(f'<td class="num">{shown}</td>')
        rows.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
    return "<table><tr><th></th><th>production</th><th>candidate</th></tr>" + "".join(rows) + "</table>"


def _checks_table(report: dict[str, Any]) -> str:
    rows = [
        f'<tr><td>{_e(check["name"])}</td><td class="{"pass" if check["passed"] else "fail"}">'
        f'{"pass" if check["passed"] else "fail"}</td><td class="num">{_num(check["value"])}</td>'
        f'<td class="num">{_num(check["threshold"])}</td><td class="muted">{_e(check["detail"])}</td></tr>'
        for check in report["checks"]
    ]
    return (
        "<table><tr><th>check</th><th></th><th>value</th><th>threshold</th><th></th></tr>" + "".join(rows) + "</table>"
    )


def _disagreements_table(report: dict[str, Any]) -> str:
    samples = report["disagreements"]["samples"]
    if not samples:
        return '<p class="muted">The versions agree on every request.</p>'
    rows = []
    for sample in samples:
        request = sample.get("request") or {}
        target = (request.get("cs_uri_stem") or "") + (
            "?" + request["cs_uri_query"] if request.get("cs_uri_query") else ""
        )
        label = {None: "unlabeled", 0: "benign", 1: "attack"}.get(sample.get("label"), "?")
        rows.append(
            f"<tr><td><code>{_clip(sample['id'])}</code></td><td>{_e(label)}</td>"
            f"<td>{'flag' if sample['production'] else 'pass'}</td><td>{'flag' if sample['candidate'] else 'pass'}</td>"
            f"<td><code>{_clip(request.get('cs_method'))} {_clip(target)}</code><br>"
            f"<span class='muted'>{_clip(request.get('cs_user_agent'))}</span></td></tr>"
        )
    return (
        "<table><tr><th>id</th><th>label</th><th>production</th><th>candidate</th><th>request</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_html(report: dict[str, Any]) -> str:
    """The page for a report of :mod:`feint.shadow.schema`."""
    decision = report["decision"]
    colour = _DECISION_COLOURS.get(decision, "#374151")
    dataset, significance = report["dataset"], report["significance"]
    ci = significance.get("f1_diff_ci")
    interval = "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"
    summary = (
        f'<p><span class="badge" style="background:{colour}">{_e(decision)}</span> '
        f"{_e(report['decision_reason'])} · risk <b>{_e(report['risk'])}</b> · confidence "
        f"<b>{_num(report['confidence'], 3)}</b> that the candidate is better on "
        f"{_e(significance.get('objective', 'f1'))} · difference {_e(significance.get('objective', 'f1'))} "
        f"{_e(str(int(100 * significance.get('ci_level', 0.95))))}% CI {_e(interval)} · McNemar p "
        f"{_num(significance['mcnemar_p'], 3)}</p>"
        f'<p class="muted">{_num(dataset["rows"])} requests, {_num(dataset["labeled"])} labeled '
        f"({_num(dataset.get('attacks'))} attacks, {_num(dataset.get('benign'))} benign), "
        f"{_num(dataset['unlabeled'])} unlabeled, {_num(dataset['malformed'])} malformed lines; "
        f"{_num(report['disagreements']['count'])} requests judged differently.</p>"
    )
    sections = [
        f"<h1>Shadow evaluation: {_e(report['production']['name'])} → {_e(report['candidate']['name'])}</h1>",
        summary,
        "<h2>Checks</h2>", _checks_table(report),
        "<h2>Metrics</h2>", _metrics_table(report),
        '<h2>ROC and confusion matrices</h2><div class="grid">', roc_svg(report),
        confusion_svg(report["production"], "production"), confusion_svg(report["candidate"], "candidate"), "</div>",
        "<h2>Matcher latency per request</h2>", latency_svg(report),
        "<h2>Hits per rule</h2><p class='muted'>red: labeled attacks · amber: labeled benign · grey: unlabeled</p>",
        hits_svg(report),
        "<h2>Requests the versions judge differently</h2>", _disagreements_table(report),
        f'<p class="muted">schema {_e(report["schema_version"])} · generated {_e(report["generated_at"])} · '
        f'{_num(report["elapsed_seconds"], 3)} s</p>',
    ]  # fmt: skip
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Feint shadow evaluation</title><style>{_STYLE}</style></head><body>"
        + "".join(sections)
        + "</body></html>"
    )
