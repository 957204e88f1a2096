"""Which metric names a PromQL expression reads, and which ones Feint really has.

`referenced` lists every metric selector of an expression: it drops strings, label matchers,
range and subquery brackets and the label lists of ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right``, then keeps each identifier that is neither a function call nor a
keyword. `exported` reads a Prometheus text exposition (what ``/metrics`` answers) and expands
each family into the series names it produces (``_total``, ``_bucket``/``_sum``/``_count``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parent.parent
RULES_DIR = DEPLOY / "prometheus" / "rules"
CONTRACT_FILE = DEPLOY / "prometheus" / "metrics-contract.yaml"
DASHBOARDS_DIR = DEPLOY / "grafana" / "dashboards"

EXPR_CHARS_MAX = 20_000
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
     "inf", "nan", "atan2", "start", "end"}
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?(?:\d+[a-zA-Z]+)+")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|[A-Za-z_:][A-Za-z0-9_:]*|\S")
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",)}  # fmt: skip


class PromQLShapeError(ValueError):
    """An expression this extractor cannot read (unbalanced brackets, or too long)."""


def referenced(expr: str) -> set[str]:
    """The metric names ``expr`` selects (not functions, keywords, labels or durations)."""
    if len(expr) > EXPR_CHARS_MAX:
        raise PromQLShapeError(f"expression of {len(expr)} characters exceeds {EXPR_CHARS_MAX}")
    text = _STRING.sub(" ", expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    if any(c in text for c in "{}[]"):
        raise PromQLShapeError(f"unbalanced brackets in {expr[:120]!r}")
    tokens = _TOKEN.findall(text)
    names: set[str] = set()
    for i, token in enumerate(tokens):
        if not (token[0].isalpha() or token[0] in "_:"):
            continue
        if token in KEYWORDS:
            continue
        if i + 1 < len(tokens) and tokens[i + 1] == "(":
            continue  # a function or an aggregation
        names.add(token)
    return names


def exported(exposition: str) -> set[str]:
    """Every series name a text exposition's families produce, samples or not."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


@dataclass(frozen=True)
class Contract:
    """Names that are allowed without being exported yet (Feint's own) or ever (third parties)."""

    feint: dict[str, str]  # name → type
    external: frozenset[str]

    def names(self) -> set[str]:
        out = set(self.external)
        for name, kind in self.feint.items():
            if kind == "histogram":
                out.update(name + s for s in _SUFFIXES["histogram"])
            out.add(name)
        return out


def load_contract(path: Path = CONTRACT_FILE) -> Contract:
    data = yaml.safe_load(path.read_text())
    feint = {str(m["name"]): str(m["type"]) for m in data.get("feint") or []}
    external = frozenset(str(m["name"]) for m in data.get("external") or [])
    return Contract(feint=feint, external=external)


@dataclass(frozen=True)
class Use:
    """One expression and where it is (file and rule or panel), for error messages."""

    where: str
    expr: str


def rule_uses(rules_dir: Path = RULES_DIR) -> Iterator[Use]:
    for path in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                yield Use(f"{path.name}: {group['name']}/{name}", str(rule["expr"]))


def recorded(rules_dir: Path = RULES_DIR) -> set[str]:
    out: set[str] = set()
    for path in sorted(rules_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.update(str(r["record"]) for r in group["rules"] if "record" in r)
    return out


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows nest their panels


def dashboard_uses(dashboards_dir: Path = DASHBOARDS_DIR) -> Iterator[Use]:
    for path in sorted(dashboards_dir.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if "expr" in target:
                    yield Use(f"{path.name}: panel {panel.get('title')!r} {target.get('refId')}", target["expr"])
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*[A-Za-z_][A-Za-z0-9_]*\)", str(text or ""))
            if variable.get("type") == "query" and match:
                yield Use(f"{path.name}: variable {variable.get('name')}", match.group(1))


def unknown(uses: Iterable[Use], known: set[str]) -> list[str]:
    """One line per metric name an expression uses that ``known`` lacks."""
    return [
        f"{use.where}: {name} is neither exported, recorded nor in the metrics contract"
        for use in uses
        for name in sorted(referenced(use.expr) - known)
    ]
