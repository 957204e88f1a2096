"""Compiled rules, rule sets and the one table of level weights.

``LEVEL_WEIGHTS`` is shared with the gateway: the weighted score of a request is the sum of the
weights of the rules it fires, on the gateway's 0-10 threat scale (one critical rule alone
reaches 10). A rule set flags a request when any rule fires (``threshold`` is ``None``, the
default) or when the weighted score reaches ``threshold``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from feint.errors import InvariantViolated
from feint.shadow.rules.ir import Expr

LEVEL_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {"informational": 1.0, "low": 2.0, "medium": 4.0, "high": 7.0, "critical": 10.0}
)
# Sigma makes ``level`` optional; a rule without one counts as a medium finding.
LEVEL_DEFAULT: Final = "medium"
RULES_PER_SET_MAX: Final = 10_000
# Scores are sums of weights in whole millionths so that every engine adds them exactly, in any
# order, and compares them with a threshold identically.
WEIGHT_UNITS: Final = 1_000_000
WEIGHT_MAX: Final = 1_000_000.0


def score_units(weight: float) -> int:
    """A weight (or threshold) in millionths, the unit scores are added in."""
    return round(weight * WEIGHT_UNITS)


@dataclass(frozen=True, slots=True)
class Rule:
    """One Sigma rule compiled to the engines' parse tree.

    ``key`` is the Sigma ``id`` (or ``sha256:<16 hex>`` of the content when the rule has none);
    ``content_hash`` is the SHA-256 of the rule's canonical content.
    """

    key: str
    title: str
    level: str
    expr: Expr
    content_hash: str
    post_response: bool = False
    author: str | None = None
    path: str = "<memory>"
    unrecorded_fields: tuple[str, ...] = ()

    @property
    def weight(self) -> float:
        """The default weight of the rule, from its level."""
        return LEVEL_WEIGHTS[self.level]


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules with their weights; flags on any match or on a weighted score threshold."""

    rules: tuple[Rule, ...]
    weights: Mapping[str, float] = field(default_factory=dict)
    threshold: float | None = None
    name: str = "rule set"

    def __post_init__(self) -> None:
        if len(self.rules) > RULES_PER_SET_MAX:
            raise InvariantViolated(f"a rule set holds at most {RULES_PER_SET_MAX} rules")
        keys = [rule.key for rule in self.rules]
        if len(set(keys)) != len(keys):
            duplicated = sorted({key for key in keys if keys.count(key) > 1})
            raise InvariantViolated(f"rule keys must be unique in a rule set: {duplicated}")
        unknown = set(self.weights) - set(keys)
        if unknown:
            raise InvariantViolated(f"weights name rules not in the set: {sorted(unknown)}")
        if not all(0 <= weight <= WEIGHT_MAX for weight in self.weights.values()):
            raise InvariantViolated(f"rule weights must lie in [0, {WEIGHT_MAX}]")
        if self.threshold is not None and not 0 < self.threshold <= WEIGHT_MAX * len(self.rules):
            raise InvariantViolated("a threshold must be positive and reachable")

    def weight_of(self, rule: Rule) -> float:
        """The rule's weight in this set: its own, or its level's."""
        return self.weights.get(rule.key, rule.weight)

    @property
    def content_hash(self) -> str:
        """SHA-256 over the rules' content, weights and threshold (order-independent)."""
        digest = hashlib.sha256()
        for rule in sorted(self.rules, key=lambda rule: rule.key):
            digest.update(f"{rule.key}\0{rule.content_hash}\0{self.weight_of(rule)!r}\n".encode())
        digest.update(f"threshold={self.threshold!r}".encode())
        return digest.hexdigest()


def rule_set(
    rules: Iterable[Rule],
    *,
    name: str = "rule set",
    weights: Mapping[str, float] | None = None,
    threshold: float | None = None,
) -> RuleSet:
    """A rule set from rules; keyword-only options say how it flags."""
    return RuleSet(tuple(rules), dict(weights or {}), threshold, name)
