"""The parse tree both engines compile: boolean nodes over tests of one source each.

:mod:`.parse` builds it from pySigma's condition tree, folding away everything both engines
would otherwise have to agree on separately: Sigma's wildcards become one of six operations,
case-insensitive literals are folded once (ASCII, see ``record.ascii_lower``), keyword searches
become an OR over ``KEYWORD_SOURCES``, tests of fields Feint never records become constants.

Semantics, identical in both engines:

* a missing value (``None`` or ``""``) fails every test except ``null``;
* ``not`` is plain boolean negation (two-valued: SQL's NULL never leaks out of a test);
* ``regex`` searches (is not anchored); ``glob`` patterns carry their own anchors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from feint.shadow.record import ascii_lower
from feint.shadow.rules.fields import Source

Op = Literal["eq", "contains", "prefix", "suffix", "glob", "regex", "null", "num"]
Compare = Literal["lt", "lte", "gt", "gte"]

# Literal ops whose value is a plain string compared with the (folded) source text.
LITERAL_OPS: Final = frozenset({"eq", "contains", "prefix", "suffix"})


@dataclass(frozen=True, slots=True)
class Test:
    """One test of one source.

    ``value`` is the literal (folded unless ``cased``), the RE2 pattern (``glob``, ``regex``) or
    the decimal number (``num``). For a ``glob``, ``needle`` is its longest literal, folded: the
    prefilters need it and it cannot be read back from the pattern.
    """

    source: Source
    op: Op
    value: str = ""
    cased: bool = False
    needle: str = ""
    compare: Compare | None = None


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Expr


@dataclass(frozen=True, slots=True)
class Const:
    value: bool


Expr = Test | And | Or | Not | Const

TRUE: Final = Const(True)
FALSE: Final = Const(False)


def _dedupe(items: Iterable[Expr]) -> tuple[Expr, ...]:
    return tuple(dict.fromkeys(items))


def all_of(items: Iterable[Expr]) -> Expr:
    """The conjunction, flattened and with constants folded."""
    flat: list[Expr] = []
    for item in items:
        if item == FALSE:
            return FALSE
        if isinstance(item, And):
            flat.extend(item.items)
        elif item != TRUE:
            flat.append(item)
    unique = _dedupe(flat)
    if not unique:
        return TRUE
    return unique[0] if len(unique) == 1 else And(unique)


def any_of(items: Iterable[Expr]) -> Expr:
    """The disjunction, flattened and with constants folded."""
    flat: list[Expr] = []
    for item in items:
        if item == TRUE:
            return TRUE
        if isinstance(item, Or):
            flat.extend(item.items)
        elif item != FALSE:
            flat.append(item)
    unique = _dedupe(flat)
    if not unique:
        return FALSE
    return unique[0] if len(unique) == 1 else Or(unique)


def negate(item: Expr) -> Expr:
    """The negation, with double negation and constants folded."""
    if isinstance(item, Const):
        return Const(not item.value)
    if isinstance(item, Not):
        return item.item
    return Not(item)


# Sources with a handful of common values (GET, HTTP/1.1, 200): a literal of theirs says little.
WEAK_SOURCES: Final = frozenset({"cs_method", "cs_version", "sc_status"})
# Which ends of a source's value the prefilter haystack delimits with a newline (the stem starts
# the ``uri`` line; an extension follows a '.'), so a whole-value literal can carry them along.
_DELIMITED: Final[dict[str, tuple[str, str]]] = {
    "cs_uri_stem": ("\n", ""),
    "cs_uri_query": ("", ""),
    "uri_extension": (".", ""),
}


def _test_needle(test: Test) -> str:
    if test.op not in LITERAL_OPS:
        return test.needle
    value = ascii_lower(test.value)
    left, right = _DELIMITED.get(test.source, ("\n", "\n"))
    if test.op == "eq":
        return left + value + right
    if test.op == "prefix":
        return left + value
    if test.op == "suffix":
        return value + ("" if test.source == "uri_extension" else right)
    return value


def _score(part: frozenset[str], item: Expr) -> tuple[bool, int, int]:
    # Prefer literals of informative sources, then the alternative whose shortest literal is
    # longest (rarer in benign traffic), then the one with fewer literals.
    shortest = min((len(n) for n in part), default=1 << 30)
    return (not sources(item) <= WEAK_SOURCES, shortest, -len(part))


def needles(expr: Expr) -> frozenset[str] | None:
    """Folded literals of which at least one occurs in the prefilter haystack when ``expr`` holds.

    The haystack is ``"\n" + "\n".join(folded HAYSTACK_SOURCES) + "\n"``. ``None`` means no
    such set is known (the expression can hold without any literal, e.g. through ``not`` or a
    regular expression); an empty set means the expression never holds.
    """
    if isinstance(expr, Test):
        needle = _test_needle(expr)
        return frozenset({needle}) if needle else None
    if isinstance(expr, Const):
        return None if expr.value else frozenset()
    if isinstance(expr, Not):
        return None
    parts = [(needles(item), item) for item in expr.items]
    if isinstance(expr, And):
        known = [(part, item) for part, item in parts if part is not None]
        return max(known, key=lambda pair: _score(*pair))[0] if known else None
    if any(part is None for part, _ in parts):
        return None
    return frozenset().union(*(part for part, _ in parts if part is not None))


def sources(expr: Expr) -> frozenset[Source]:
    """Every source the expression reads."""
    if isinstance(expr, Test):
        return frozenset({expr.source})
    if isinstance(expr, Const):
        return frozenset()
    if isinstance(expr, Not):
        return sources(expr.item)
    return frozenset().union(*(sources(item) for item in expr.items))
