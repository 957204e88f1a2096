"""Sigma rules: parsing (pySigma), the field mapping, and the two engines compiled from one tree.

Public API::

    parse_rules(text, *, path) -> list[Rule]          one YAML document stream
    load_rules(path) -> list[Rule]                    a file or a folder of *.yml / *.yaml
    starter_rules() -> list[Rule]                     Feint's own rules, the first production set
    rule_set(rules, *, name, weights, threshold) -> RuleSet
    compile_matcher(rule_set) -> Matcher              engine 1: Matcher.evaluate(record) -> Verdict
    select_sql(rules, *, relation, dialect, columns)  engine 2: DuckDB or ClickHouse SQL
    LEVEL_WEIGHTS                                     Sigma level -> weight, shared with the gateway
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from feint.shadow.rules.fields import FIELD_MAP, KEYWORD_SOURCES, RESPONSE_FIELDS
from feint.shadow.rules.matcher import Matcher, Verdict, compile_matcher
from feint.shadow.rules.model import LEVEL_DEFAULT, LEVEL_WEIGHTS, Rule, RuleSet, rule_set
from feint.shadow.rules.parse import load_rules, parse_rules
from feint.shadow.rules.sql import select_sql


def starter_rules_path() -> Path:
    """The folder of Feint's starter rules inside the installed package."""
    return Path(str(resources.files("feint.shadow").joinpath("starter_rules")))


def starter_rules() -> list[Rule]:
    """Feint's own starter rule set (installed as the production version on first start)."""
    return load_rules(starter_rules_path())


__all__ = [
    "FIELD_MAP",
    "KEYWORD_SOURCES",
    "LEVEL_DEFAULT",
    "LEVEL_WEIGHTS",
    "RESPONSE_FIELDS",
    "Matcher",
    "Rule",
    "RuleSet",
    "Verdict",
    "compile_matcher",
    "load_rules",
    "parse_rules",
    "rule_set",
    "select_sql",
    "starter_rules",
    "starter_rules_path",
]
