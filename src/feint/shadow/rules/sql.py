"""Engine 2: rules compiled to one SQL query over a table of request records.

The same parse tree as the matcher, in two dialects: DuckDB (Parquet on one machine) and
ClickHouse (the same rules on a cluster). Both run RE2 for regular expressions; both fold case
the way ``record.ascii_lower`` does (ClickHouse's ``lower`` is ASCII-only; DuckDB's is Unicode,
so non-ASCII text goes through ``translate`` instead); every test is wrapped so that SQL's NULL
never reaches ``NOT`` (two-valued logic, as in Python).

The query has three layers. The innermost computes each source once (``s_*`` raw, ``l_*``
folded), as the matcher's ``_Event`` does. The middle one adds the prefilters: rules are grouped
so each group's literals (``ir.needles``) form one RE2 alternation (DuckDB) or one
``multiSearchAny`` (ClickHouse) over the folded haystack. The outer one evaluates a rule only
where its group's prefilter passed (``CASE`` evaluates its branch on the selected rows only).

Output: the requested pass-through columns, then one boolean column ``r<i>`` per rule.

Running the ClickHouse query on a cluster: create the table from the Parquet files (``CREATE
TABLE requests ENGINE = MergeTree ORDER BY id AS SELECT * FROM s3('…/*.parquet', Parquet)``, or a
``Distributed`` table over per-shard tables), then run ``select_sql(rules, relation="requests",
dialect="clickhouse")``: every column is computed row by row, so each shard evaluates its own rows
and only the result travels.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Final, Literal

from feint.shadow.rules import _re2
from feint.shadow.rules.fields import SOURCES, Source
from feint.shadow.rules.ir import LITERAL_OPS, And, Const, Expr, Hint, Not, Test, hints
from feint.shadow.rules.model import Rule

Dialect = Literal["duckdb", "clickhouse"]

# Literals per RE2 alternation: measured on 1M requests, 100 literals scan as fast as 25, while
# 250 take three times as long (the DFA no longer fits its cache) and thousands fall off a cliff.
PREFILTER_NEEDLES_MAX: Final = 100
# Up to this many literals an OR of substring tests stays a chain of contains(); above, one
# RE2 alternation (DuckDB) or one multiSearchAny (ClickHouse).
CONTAINS_CHAIN_MAX: Final = 8

_UPPER: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_COMPARE: Final = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def duckdb_literal(text: str) -> str:
    """A DuckDB string literal; control characters go through ``chr()``."""
    out: list[str] = []
    plain: list[str] = []
    for char in text:
        if ord(char) < 32 or ord(char) == 127:
            out.append("'" + "".join(plain).replace("'", "''") + "'")
            out.append(f"chr({ord(char)})")
            plain = []
        else:
            plain.append(char)
    out.append("'" + "".join(plain).replace("'", "''") + "'")
    return out[0] if len(out) == 1 else "(" + " || ".join(out) + ")"


def clickhouse_literal(text: str) -> str:
    """A ClickHouse string literal (backslash escapes)."""
    out: list[str] = []
    for char in text:
        if char in "\\'":
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


class _Dialect:
    """The few spellings that differ between DuckDB and ClickHouse."""

    def __init__(self, name: Dialect) -> None:
        self.name = name
        self.lit: Callable[[str], str] = duckdb_literal if name == "duckdb" else clickhouse_literal

    def sources(self) -> list[str]:
        """The innermost layer: raw and folded text of every source, NULL when missing."""
        nullif = "nullIf" if self.name == "clickhouse" else "NULLIF"
        stem, query = "s_cs_uri_stem", "s_cs_uri_query"
        as_text = "toString" if self.name == "clickhouse" else "CAST"
        status = "toString(sc_status)" if as_text == "toString" else "CAST(sc_status AS VARCHAR)"
        extract = (
            f"extract({stem}, {self.lit(_EXTENSION)})"
            if self.name == "clickhouse"
            else f"regexp_extract({stem}, {self.lit(_EXTENSION)}, 1)"
        )
        concat = f"concat({stem}, '?', {query})"
        raw: dict[Source, str] = {
            "c_ip": f"{nullif}(c_ip, '')",
            "cs_method": f"{nullif}(cs_method, '')",
            "cs_uri_stem": f"{nullif}(cs_uri_stem, '')",
            "cs_uri_query": f"{nullif}(cs_uri_query, '')",
            "uri": f"CASE WHEN {stem} IS NULL THEN NULL WHEN {query} IS NULL THEN {stem} ELSE {concat} END",
            "uri_extension": f"{nullif}({extract}, '')",
            "cs_user_agent": f"{nullif}(cs_user_agent, '')",
            "cs_referer": f"{nullif}(cs_referer, '')",
            "cs_host": f"{nullif}(cs_host, '')",
            "cs_version": f"{nullif}(cs_version, '')",
            "sc_status": status,
            "request_line": f"{nullif}(request_line, '')",
        }
        return [f"{raw[source]} AS s_{source}" for source in SOURCES]

    def fold(self, column: str) -> str:
        if self.name == "clickhouse":
            return f"lower({column})"
        return (
            f"CASE WHEN strlen({column}) = length({column}) THEN lower({column}) "
            f"ELSE translate({column}, '{_UPPER}', '{_UPPER.lower()}') END"
        )

    def prefilter(self, group: Sequence[Hint]) -> str:
        """Whether any hint of the group holds.

        A group reading one source tests that column: whole values by set membership, prefixes
        and suffixes by one anchored alternation each (RE2 then reads only the start or, in
        reverse, the end), substrings by one alternation. A group reading several sources
        (keyword searches) searches them as lines of one haystack, ``\n`` before and after each:
        one call per group, since per-row call overhead, not bytes, dominates.
        """
        group_sources = _sources_of(group)
        if len(group_sources) > 1:
            needles = sorted({_line_needle(hint) for hint in group})
            return self.coalesce(self.any_literal(_haystack_name(group_sources), needles))
        column = f"l_{group_sources[0]}"
        tests: list[str] = []
        for op in ("eq", "prefix", "suffix", "contains"):
            literals = sorted(hint.literal for hint in group if hint.op == op)
            if not literals:
                continue
            if op == "eq":
                tests.append(f"{column} IN ({', '.join(self.lit(n) for n in literals)})")
            elif op == "contains":
                tests.append(self.any_literal(column, literals))
            elif self.name == "clickhouse" or len(literals) <= CONTAINS_CHAIN_MAX:
                tests.extend(self.test(op, column, literal) for literal in literals)
            else:
                body = "|".join(_re2.escape(literal) for literal in literals)
                anchored = f"^(?:{body})" if op == "prefix" else f"(?:{body})$"
                tests.append(f"regexp_matches({column}, {self.lit(anchored)})")
        return self.coalesce("(" + " OR ".join(tests) + ")")

    def haystack(self, group_sources: Sequence[Source]) -> str:
        """The lines of a group's sources, each between newlines (missing ones empty)."""
        parts = [f"coalesce(l_{source}, '')" for source in group_sources]
        newline = self.lit("\n")
        return "concat(" + f", {newline}, ".join([newline, *parts, newline]) + ")"

    def any_pattern(self, column: str, patterns: Sequence[str]) -> str:
        """Whether any RE2 pattern occurs in ``column`` (alternations of bounded size)."""
        calls = [
            f"regexp_matches({column}, {self.lit('|'.join(patterns[i : i + PREFILTER_NEEDLES_MAX]))})"
            for i in range(0, len(patterns), PREFILTER_NEEDLES_MAX)
        ]
        return calls[0] if len(calls) == 1 else "(" + " OR ".join(calls) + ")"

    def any_literal(self, column: str, literals: Sequence[str]) -> str:
        """Whether any literal occurs in ``column`` (literals already folded as needed)."""
        if self.name == "duckdb":
            return self.any_pattern(column, [_re2.escape(n) for n in literals])
        calls = [
            f"multiSearchAny({column}, [{', '.join(self.lit(n) for n in batch)}])"
            for batch in (
                literals[i : i + PREFILTER_NEEDLES_MAX] for i in range(0, len(literals), PREFILTER_NEEDLES_MAX)
            )
        ]
        return calls[0] if len(calls) == 1 else "(" + " OR ".join(calls) + ")"

    def test(self, op: str, column: str, value: str) -> str:
        literal = self.lit(value)
        if op == "eq":
            return f"{column} = {literal}"
        if self.name == "clickhouse":
            return {
                "contains": f"position({column}, {literal}) > 0",
                "prefix": f"startsWith({column}, {literal})",
                "suffix": f"endsWith({column}, {literal})",
            }.get(op, f"match({column}, {literal})")
        return {
            "contains": f"contains({column}, {literal})",
            "prefix": f"starts_with({column}, {literal})",
            "suffix": f"ends_with({column}, {literal})",
        }.get(op, f"regexp_matches({column}, {literal})")

    def coalesce(self, predicate: str) -> str:
        return f"coalesce({predicate}, false)"


_EXTENSION: Final = r"\.([^./]*)$"


def _sources_of(group: Sequence[Hint]) -> list[Source]:
    return sorted({hint.source for hint in group})


def _haystack_name(group_sources: Sequence[Source]) -> str:
    return "hay_" + "_".join(str(SOURCES.index(source)) for source in group_sources)


def _line_needle(hint: Hint) -> str:
    literal = hint.literal
    return {"eq": f"\n{literal}\n", "prefix": f"\n{literal}", "suffix": f"{literal}\n"}.get(hint.op, literal)


def _budget(group: Sequence[Hint]) -> int:
    """The size of the largest alternation a group's prefilter builds (sets do not count)."""
    if len(_sources_of(group)) > 1:
        return len({_line_needle(hint) for hint in group})
    return max(sum(1 for hint in group if hint.op == op) for op in ("prefix", "suffix", "contains"))


def _column(test: Test) -> str:
    folded = not test.cased and test.op not in ("regex", "null", "num")
    return ("l_" if folded else "s_") + test.source


def _leaf(test: Test, dialect: _Dialect) -> str:
    if test.op == "null":
        return f"(s_{test.source} IS NULL)"
    if test.op == "num":
        return dialect.coalesce(f"sc_status {_COMPARE[test.compare or 'gte']} {test.value}")
    return dialect.coalesce(dialect.test(test.op, _column(test), test.value))


def _literals(op: str, column: str, values: list[str], dialect: _Dialect) -> str:
    if op == "eq" and len(values) > 1:
        listed = ", ".join(dialect.lit(value) for value in values)
        return dialect.coalesce(f"{column} IN ({listed})")
    if op == "contains" and len(values) > CONTAINS_CHAIN_MAX:
        return dialect.coalesce(dialect.any_literal(column, values))
    tests = [dialect.coalesce(dialect.test(op, column, value)) for value in values]
    return tests[0] if len(tests) == 1 else "(" + " OR ".join(tests) + ")"


def expr_sql(expr: Expr, dialect: Dialect | _Dialect = "duckdb") -> str:
    """One boolean SQL expression over the ``s_*``/``l_*`` columns; never NULL."""
    spelled = dialect if isinstance(dialect, _Dialect) else _Dialect(dialect)
    if isinstance(expr, Test):
        return _leaf(expr, spelled)
    if isinstance(expr, Const):
        return "true" if expr.value else "false"
    if isinstance(expr, Not):
        return f"(NOT {expr_sql(expr.item, spelled)})"
    if isinstance(expr, And):
        return "(" + " AND ".join(expr_sql(item, spelled) for item in expr.items) + ")"
    groups: dict[tuple[str, str], list[str]] = {}
    rest: list[str] = []
    for item in expr.items:
        if isinstance(item, Test) and item.op in LITERAL_OPS:
            groups.setdefault((item.op, _column(item)), []).append(item.value)
        else:
            rest.append(expr_sql(item, spelled))
    merged = [_literals(op, column, values, spelled) for (op, column), values in groups.items()]
    return "(" + " OR ".join(merged + rest) + ")"


def _groups(rules: Sequence[Rule], hot: Collection[int] = ()) -> tuple[list[list[Hint]], list[int | None]]:
    """Prefilter groups (their hints) and each rule's group (``None``: always evaluated).

    Rules whose hints read the same sources share groups, so a group scans only those columns
    (most rules look at the target alone, a short column) and each alternation stays small. A
    *hot* rule, whose hints hold on much of the traffic, would make its group pass for everyone:
    it is evaluated on every row instead.
    """
    by_sources: dict[frozenset[Source], list[int]] = {}
    group_of: list[int | None] = [None] * len(rules)
    found = [hints(rule.expr, strong=True) for rule in rules]
    for index, required in enumerate(found):
        if required and index not in hot:
            key = frozenset(hint.source for hint in required)
            by_sources.setdefault(key, []).append(index)
    groups: list[list[Hint]] = []
    for key in sorted(by_sources, key=sorted):
        current: list[Hint] = []
        for index in by_sources[key]:
            ordered = sorted(found[index] or ())
            if current and _budget([*current, *ordered]) > PREFILTER_NEEDLES_MAX:
                groups.append(current)
                current = []
            current.extend(hint for hint in ordered if hint not in current)
            group_of[index] = len(groups)
        groups.append(current)
    return groups, group_of


def select_sql(
    rules: Sequence[Rule],
    *,
    relation: str,
    dialect: Dialect = "duckdb",
    columns: Sequence[str] = ("id",),
    hot: Collection[int] = (),
) -> str:
    """A query returning ``columns`` and one boolean ``r<i>`` per rule, row for row.

    ``hot`` lists rules (by index) known to pass their prefilter often, e.g. measured on a
    sample with ``Matcher.prefilter_rates``; it changes the cost of the query, never its result.
    """
    spelled = _Dialect(dialect)
    groups, group_of = _groups(rules, hot)
    passthrough = list(columns)
    keep = ", ".join([*passthrough, "sc_status"])
    sources = ", ".join(spelled.sources())
    folded = ", ".join(f"{spelled.fold(f's_{source}')} AS l_{source}" for source in SOURCES)
    prefilters = ", ".join(f"{spelled.prefilter(group)} AS pf_{index}" for index, group in enumerate(groups))
    outputs: list[str] = []
    for index, rule in enumerate(rules):
        if hints(rule.expr) == frozenset():
            outputs.append(f"false AS r{index}")
            continue
        predicate = expr_sql(rule.expr, spelled)
        group = group_of[index]
        if group is not None:
            predicate = f"CASE WHEN pf_{group} THEN {predicate} ELSE false END"
        outputs.append(f"{predicate} AS r{index}")
    selected = ", ".join([*passthrough, *outputs]) if outputs or passthrough else "1 AS empty"
    inner = f"SELECT {keep}, {sources} FROM {relation}"
    middle_columns = ", ".join([*passthrough, "sc_status", *(f"s_{s}" for s in SOURCES), folded])
    middle = f"SELECT {middle_columns} FROM ({inner}) AS raw_sources"
    stacks = {
        _haystack_name(sources_): spelled.haystack(sources_)
        for sources_ in (_sources_of(group) for group in groups)
        if len(sources_) > 1
    }
    if stacks:
        extra = ", ".join(f"{expression} AS {name}" for name, expression in stacks.items())
        middle = f"SELECT *, {extra} FROM ({middle}) AS stacked"
    filtered = f"SELECT *{', ' + prefilters if prefilters else ''} FROM ({middle}) AS folded"
    return f"SELECT {selected} FROM ({filtered}) AS prefiltered"
