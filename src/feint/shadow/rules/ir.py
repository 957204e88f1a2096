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


@dataclass(frozen=True, slots=True, order=True)
class Hint:
    """A necessary condition: the folded ``source`` text equals (``eq``), starts with, ends with
    or contains ``literal``. Prefilters test a rule's hints before the rule itself."""

    source: Source
    op: Op
    literal: str


Hints = frozenset[Hint]


def _hint(test: Test) -> Hint | None:
    if test.op in LITERAL_OPS:
        return Hint(test.source, test.op, ascii_lower(test.value))
    if test.op == "glob" and test.needle:
        return Hint(test.source, "contains", test.needle)
    return None


def _score(found: tuple[Hints, bool]) -> tuple[bool, int, int]:
    # Prefer hints on informative sources, then the alternative whose shortest literal is
    # longest (rarer in benign traffic), then the one with fewer hints.
    part, weak = found
    shortest = min((len(hint.literal) for hint in part), default=1 << 30)
    return (not weak, shortest, -len(part))


def _hints(expr: Expr) -> tuple[Hints, bool] | None:
    """The hint set and whether it comes only from ``WEAK_SOURCES``."""
    if isinstance(expr, Test):
        hint = _hint(expr)
        return None if hint is None else (frozenset({hint}), expr.source in WEAK_SOURCES)
    if isinstance(expr, Const):
        return None if expr.value else (frozenset(), False)
    if isinstance(expr, Not):
        return None
    parts = [_hints(item) for item in expr.items]
    known = [part for part in parts if part is not None]
    if isinstance(expr, And):
        return max(known, key=_score) if known else None
    if len(known) < len(parts):
        return None
    return frozenset().union(*(p for p, _ in known)), any(weak for _, weak in known)


def hints(expr: Expr, *, strong: bool = False) -> Hints | None:
    """Hints of which at least one holds whenever ``expr`` holds.

    ``None`` means no such set is known (the expression can hold through ``not`` or a regular
    expression alone); an empty set means the expression never holds. With ``strong``, a set
    drawn from ``WEAK_SOURCES`` (the method is ``get``) counts as unknown: it would pass almost
    every request and make a prefilter shared with other rules useless.
    """
    found = _hints(expr)
    if found is None or (strong and found[1]):
        return None
    return found[0]


# Which ends of a source's value the matcher's haystack delimits with a newline (the stem starts
# the ``uri`` line; an extension follows a '.'), so a whole-value literal can carry them along.
_DELIMITED: Final[dict[str, tuple[str, str]]] = {
    "cs_uri_stem": ("\n", ""),
    "cs_uri_query": ("", ""),
    "uri_extension": (".", ""),
}


def haystack_needle(hint: Hint) -> str:
    """The literal the hint puts in ``"\n" + "\n".join(folded HAYSTACK_SOURCES) + "\n"``."""
    left, right = _DELIMITED.get(hint.source, ("\n", "\n"))
    if hint.source == "uri_extension":
        right = ""
    if hint.op == "eq":
        return left + hint.literal + right
    if hint.op == "prefix":
        return left + hint.literal
    if hint.op == "suffix":
        return hint.literal + right
    return hint.literal


def needles(expr: Expr, *, strong: bool = False) -> frozenset[str] | None:
    """The hints of ``expr`` as literals of the matcher's haystack (see :func:`hints`)."""
    found = hints(expr, strong=strong)
    return None if found is None else frozenset(haystack_needle(hint) for hint in found)


def sources(expr: Expr) -> frozenset[Source]:
    """Every source the expression reads."""
    if isinstance(expr, Test):
        return frozenset({expr.source})
    if isinstance(expr, Const):
        return frozenset()
    if isinstance(expr, Not):
        return sources(expr.item)
    return frozenset().union(*(sources(item) for item in expr.items))
