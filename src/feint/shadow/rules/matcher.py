"""Engine 1: a rule set compiled to Python closures that judge one request at a time.

This is the engine of the live gateway, so the work per request is bounded and mostly in C:

1. the sources are computed and folded once per request (``_Event``);
2. one RE2 set search over the folded sources (``fields.HAYSTACK_SOURCES``) tells which rules can
   possibly match: each rule is represented by the literals it cannot match without
   (``ir.needles``), so a benign request usually skips every rule at the cost of one DFA pass;
3. only those rules (and the few with no such literals) run their closures, in which an OR of
   literals over one source is a single ``startswith``/``endswith`` call with a tuple, a set
   lookup, or one RE2 alternation.

The semantics are those of :mod:`.ir`; ``tests/unit/shadow/test_differential.py`` holds the
engine to the SQL engine request by request.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from feint.errors import InvariantViolated
from feint.shadow.record import RequestRecord, ascii_lower
from feint.shadow.rules import _re2
from feint.shadow.rules.fields import HAYSTACK_SOURCES, SOURCES
from feint.shadow.rules.ir import LITERAL_OPS, And, Const, Expr, Not, Test, needles
from feint.shadow.rules.model import WEIGHT_UNITS, Rule, RuleSet, score_units

# Up to this many literals an OR of substring tests is a Python loop; above, one RE2 search.
CONTAINS_LOOP_MAX: Final = 8

_INDEX: Final = {source: index for index, source in enumerate(SOURCES)}
_HAYSTACK: Final = tuple(_INDEX[source] for source in HAYSTACK_SOURCES)
_STATUS: Final = _INDEX["sc_status"]
_COMPARE: Final[dict[str, Callable[[float, float], bool]]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


class _Event:
    """The sources of one request, raw and folded, in ``SOURCES`` order."""

    __slots__ = ("low", "status", "text")

    def __init__(self, record: RequestRecord) -> None:
        stem = record.cs_uri_stem or None
        query = record.cs_uri_query or None
        if stem is None:
            uri = extension = None
        else:
            uri = stem if query is None else f"{stem}?{query}"
            segment = stem[stem.rfind("/") + 1 :]
            dot = segment.rfind(".")
            extension = (segment[dot + 1 :] or None) if dot >= 0 else None
        status = record.sc_status
        self.status = status
        self.text: list[str | None] = [
            record.c_ip or None,
            record.cs_method or None,
            stem,
            query,
            uri,
            extension,
            record.cs_user_agent or None,
            record.cs_referer or None,
            record.cs_host or None,
            record.cs_version or None,
            None if status is None else str(status),
            record.request_line or None,
        ]
        self.low: list[str | None] = [None if value is None else ascii_lower(value) for value in self.text]

    def haystack(self) -> bytes:
        low = self.low
        joined = "\n".join([low[i] for i in _HAYSTACK if low[i] is not None])  # type: ignore[misc]
        return f"\n{joined}\n".encode("utf-8", "surrogatepass")


Predicate = Callable[[_Event], bool]


def _test(test: Test) -> Predicate:
    index, value = _INDEX[test.source], test.value
    field = "text" if test.cased or test.op in ("regex", "null") else "low"
    if test.op == "null":
        return lambda event: event.text[index] is None
    if test.op == "num":
        compare, number = _COMPARE[test.compare or "gte"], float(value)
        return lambda event: event.status is not None and compare(event.status, number)
    if test.op == "eq":
        if field == "text":
            return lambda event: event.text[index] == value
        return lambda event: event.low[index] == value
    if test.op in ("glob", "regex"):
        regex = _re2.Regex(value)
        return _on(field, index, regex.search)
    method = {"contains": str.__contains__, "prefix": str.startswith, "suffix": str.endswith}
    check = method[test.op]
    return _on(field, index, lambda text: check(text, value))


def _on(field: str, index: int, check: Callable[[str], bool]) -> Predicate:
    if field == "text":

        def on_text(event: _Event) -> bool:
            text = event.text[index]
            return text is not None and check(text)

        return on_text

    def on_low(event: _Event) -> bool:
        text = event.low[index]
        return text is not None and check(text)

    return on_low


def _literals(op: str, field: str, index: int, values: tuple[str, ...]) -> Predicate:
    """One predicate for an OR of literal tests of the same kind on the same source."""
    if op == "eq":
        members = frozenset(values)
        if field == "text":
            return lambda event: event.text[index] in members
        return lambda event: event.low[index] in members
    if op == "prefix":
        return _on(field, index, lambda text: text.startswith(values))
    if op == "suffix":
        return _on(field, index, lambda text: text.endswith(values))
    if len(values) <= CONTAINS_LOOP_MAX:
        return _on(field, index, lambda text: any(value in text for value in values))
    regex = _re2.Regex("|".join(_re2.escape(value) for value in values))
    return _on(field, index, regex.search)


def _compile(expr: Expr) -> Predicate:
    if isinstance(expr, Test):
        return _test(expr)
    if isinstance(expr, Const):
        constant = expr.value
        return lambda event: constant
    if isinstance(expr, Not):
        inner = _compile(expr.item)
        return lambda event: not inner(event)
    if isinstance(expr, And):
        return _chain([_compile(item) for item in expr.items], conjunction=True)
    groups: dict[tuple[str, str, int], list[str]] = {}
    rest: list[Predicate] = []
    for item in expr.items:
        if isinstance(item, Test) and item.op in LITERAL_OPS:
            key = (item.op, "text" if item.cased else "low", _INDEX[item.source])
            groups.setdefault(key, []).append(item.value)
        else:
            rest.append(_compile(item))
    merged = [_literals(op, field, index, tuple(v)) for (op, field, index), v in groups.items()]
    return _chain(merged + rest, conjunction=False)


def _chain(predicates: Sequence[Predicate], *, conjunction: bool) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    first, rest = predicates[0], _chain(predicates[1:], conjunction=conjunction)
    if conjunction:
        return lambda event: first(event) and rest(event)
    return lambda event: first(event) or rest(event)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule set says about one request."""

    flagged: bool
    score: float
    hits: tuple[str, ...]


class Matcher:
    """A rule set compiled for per-request evaluation; build once, call per request."""

    def __init__(self, rules: RuleSet) -> None:
        self.rule_set = rules
        self.rules: tuple[Rule, ...] = rules.rules
        self._predicates = [_compile(rule.expr) for rule in self.rules]
        self._units = [score_units(rules.weight_of(rule)) for rule in self.rules]
        self._threshold = None if rules.threshold is None else score_units(rules.threshold)
        self._always: list[int] = []
        patterns: list[str] = []
        self._owner: list[int] = []
        for index, rule in enumerate(self.rules):
            required = needles(rule.expr)
            if required is None:
                self._always.append(index)
            elif required:
                patterns.append("|".join(_re2.escape(n) for n in sorted(required)))
                self._owner.append(index)
        self._prefilter = _re2.RegexSet(patterns)
        self._check_prefilter(patterns)

    def _check_prefilter(self, patterns: list[str]) -> None:
        # The prefilter may only skip rules that cannot match; a set RE2 could not build would
        # silently skip them all, so each rule's own literals must select the rule.
        for member, index in enumerate(self._owner):
            for needle in sorted(needles(self.rules[index].expr) or ()):
                if member not in self._prefilter.matches(needle.encode("utf-8", "surrogatepass")):
                    raise InvariantViolated(f"prefilter of rule {self.rules[index].key} misses {needle!r}")
        if len(patterns) != self._prefilter.size:  # pragma: no cover - RegexSet raises first
            raise InvariantViolated("prefilter lost patterns")

    def _fired(self, event: _Event) -> list[int]:
        predicates = self._predicates
        owner = self._owner
        fired = [index for index in self._always if predicates[index](event)]
        candidates = self._prefilter.matches(event.haystack()) if owner else []
        fired.extend(owner[m] for m in candidates if predicates[owner[m]](event))
        if candidates and self._always:
            fired.sort()
        return fired

    def prefilter_rates(self, records: Sequence[RequestRecord]) -> list[float | None]:
        """Per rule, the share of ``records`` that pass its prefilter (``None``: it has none)."""
        passed = [0] * len(self.rules)
        for record in records:
            for member in self._prefilter.matches(_Event(record).haystack()):
                passed[self._owner[member]] += 1
        owned = set(self._owner)
        total = max(len(records), 1)
        return [passed[index] / total if index in owned else None for index in range(len(self.rules))]

    def hits(self, record: RequestRecord) -> list[bool]:
        """Whether each rule (in rule-set order) matches the request."""
        result = [False] * len(self.rules)
        for index in self._fired(_Event(record)):
            result[index] = True
        return result

    def evaluate(self, record: RequestRecord) -> Verdict:
        """The rule set's verdict on one request."""
        fired = self._fired(_Event(record))
        units = sum(self._units[index] for index in fired)
        flagged = bool(fired) if self._threshold is None else units >= self._threshold
        return Verdict(
            flagged=flagged,
            score=units / WEIGHT_UNITS,
            hits=tuple(self.rules[index].key for index in sorted(fired)),
        )


def compile_matcher(rules: RuleSet) -> Matcher:
    """Engine 1 for a rule set."""
    return Matcher(rules)
