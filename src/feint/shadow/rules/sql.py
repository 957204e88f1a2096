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

Memoised dimensions (DuckDB): the user agent, referer and host of real traffic take a few
thousand values, and request lines and targets repeat too. A memoised dimension (``DIMENSIONS``:
the raw columns its sources derive from) gets a table of its own, evaluated once per distinct key
and joined back on the key: every maximal subexpression of a rule that reads that dimension only,
and each prefilter's hints on it, become one boolean column of that table. A prefilter group is
then the OR of its per-dimension parts (each hint still holds only if its part passes), so the
result is the same, row for row; only the cost moves from rows to distinct values.

Running the ClickHouse query on a cluster: create the table from the Parquet files (``CREATE
TABLE requests ENGINE = MergeTree ORDER BY id AS SELECT * FROM s3('…/*.parquet', Parquet)``, or a
``Distributed`` table over per-shard tables), then run ``select_sql(rules, relation="requests",
dialect="clickhouse")``: every column is computed row by row, so each shard evaluates its own rows
and only the result travels.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Final, Literal

from feint.shadow.rules import _re2
from feint.shadow.rules.fields import SOURCES, Source
from feint.shadow.rules.ir import LITERAL_OPS, And, Const, Expr, Hint, Not, Test, hints, sources
from feint.shadow.rules.model import Rule

Dialect = Literal["duckdb", "clickhouse"]

# Literals per RE2 alternation: measured on 1M requests, 100 literals scan as fast as 25, while
# 250 take three times as long (the DFA no longer fits its cache) and thousands fall off a cliff.
PREFILTER_NEEDLES_MAX: Final = 100
# Up to this many literals an OR of substring tests stays a chain of contains(); above, one
# RE2 alternation (DuckDB) or one multiSearchAny (ClickHouse).
CONTAINS_CHAIN_MAX: Final = 8

# The raw columns each memoisable dimension's sources derive from (its join key).
DIMENSIONS: Final[dict[str, tuple[str, ...]]] = {
    "agent": ("cs_user_agent",),
    "referer": ("cs_referer",),
    "host": ("cs_host",),
    "line": ("request_line",),
    "target": ("cs_uri_stem", "cs_uri_query"),
}
_DIMENSION_OF: Final[dict[Source, str]] = {
    "cs_user_agent": "agent",
    "cs_referer": "referer",
    "cs_host": "host",
    "request_line": "line",
    "cs_uri_stem": "target",
    "cs_uri_query": "target",
    "uri": "target",
    "uri_extension": "target",
}

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

    def sources(self, computed: Collection[Source] = SOURCES) -> list[str]:
        """The innermost layer: raw text of the ``computed`` sources, NULL when missing."""
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
        return [f"{raw[source]} AS s_{source}" for source in SOURCES if source in computed]

    def fold(self, column: str) -> str:
        if self.name == "clickhouse":
            return f"lower({column})"
        return (
            f"CASE WHEN strlen({column}) = length({column}) THEN lower({column}) "
            f"ELSE translate({column}, '{_UPPER}', '{_UPPER.lower()}') END"
        )

    def prefilter(self, group: Sequence[Hint], stacks: set[tuple[Source, ...]]) -> str:
        """Whether any hint of the group holds.

        A group reading one source tests that column: whole values by set membership, prefixes
        and suffixes by one anchored alternation each (RE2 then reads only the start or, in
        reverse, the end), substrings by one alternation. A group reading several sources
        (keyword searches) searches them as lines of one haystack, ``\n`` before and after each:
        one call per group, since per-row call overhead, not bytes, dominates. The haystacks used
        are added to ``stacks``.
        """
        group_sources = _sources_of(group)
        if len(group_sources) > 1:
            stacks.add(tuple(group_sources))
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


class _Memo:
    """The memoised dimensions and, per dimension, the expressions its table computes."""

    def __init__(self, dimensions: Collection[str]) -> None:
        self.dimensions = frozenset(dimensions)
        self.columns: dict[str, dict[str, str]] = {name: {} for name in sorted(self.dimensions)}
        self.stacks: dict[str, set[tuple[Source, ...]]] = {name: set() for name in self.dimensions}

    def dimension(self, read: Iterable[Source]) -> str | None:
        """The memoised dimension holding every source in ``read``, if there is one."""
        found = {_DIMENSION_OF.get(source) for source in read}
        only = found.pop() if len(found) == 1 else None
        return only if only in self.dimensions else None

    def covers(self, read: Iterable[Source]) -> bool:
        """Whether every source in ``read`` belongs to a memoised dimension."""
        return all(_DIMENSION_OF.get(source) in self.dimensions for source in read)

    def ref(self, dimension: str, predicate: str) -> str:
        """The column of the dimension's table that holds ``predicate`` (one per distinct text)."""
        columns = self.columns[dimension]
        return columns.setdefault(predicate, f"m_{dimension}_{len(columns)}")


def expr_sql(expr: Expr, dialect: Dialect | _Dialect = "duckdb", memo: _Memo | None = None) -> str:
    """One boolean SQL expression over the ``s_*``/``l_*`` columns; never NULL.

    With ``memo``, a subexpression reading one memoised dimension only becomes a column of that
    dimension's table (``m_*``), and the expression reads that column instead.
    """
    spelled = dialect if isinstance(dialect, _Dialect) else _Dialect(dialect)
    if memo is not None:
        dimension = memo.dimension(sources(expr))
        if dimension is not None:
            return memo.ref(dimension, expr_sql(expr, spelled))
    if isinstance(expr, Test):
        return _leaf(expr, spelled)
    if isinstance(expr, Const):
        return "true" if expr.value else "false"
    if isinstance(expr, Not):
        return f"(NOT {expr_sql(expr.item, spelled, memo)})"
    if isinstance(expr, And):
        return "(" + " AND ".join(expr_sql(item, spelled, memo) for item in expr.items) + ")"
    groups: dict[tuple[str, str, Source], list[str]] = {}
    rest: list[str] = []
    for item in expr.items:
        if isinstance(item, Test) and item.op in LITERAL_OPS:
            groups.setdefault((item.op, _column(item), item.source), []).append(item.value)
        else:
            rest.append(expr_sql(item, spelled, memo))
    merged: list[str] = []
    for (op, column, source), values in groups.items():
        predicate = _literals(op, column, values, spelled)
        dimension = None if memo is None else memo.dimension((source,))
        merged.append(predicate if memo is None or dimension is None else memo.ref(dimension, predicate))
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


def _prefilter(spelled: _Dialect, group: Sequence[Hint], stacks: set[tuple[Source, ...]], memo: _Memo | None) -> str:
    """A group's prefilter; with ``memo``, the OR of one part per dimension (memoised parts are
    columns of their dimension's table), since a hint holds only if its own part passes."""
    if memo is None:
        return spelled.prefilter(group, stacks)
    by_dimension: dict[str, list[Hint]] = {}
    rest: list[Hint] = []
    for hint in group:
        dimension = memo.dimension((hint.source,))
        if dimension is None:
            rest.append(hint)
        else:
            by_dimension.setdefault(dimension, []).append(hint)
    parts = [
        memo.ref(dimension, spelled.prefilter(part, memo.stacks[dimension]))
        for dimension, part in sorted(by_dimension.items())
    ]
    if rest:
        parts.append(spelled.prefilter(rest, stacks))
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _evaluated(
    spelled: _Dialect, *, relation: str, keep: Sequence[str], computed: Collection[Source],
    stacks: Collection[tuple[Source, ...]], outputs: Sequence[str], everything: bool = False,
) -> str:  # fmt: skip
    """``keep`` (or, with ``everything``, every column) and ``outputs`` over ``relation``, through
    the layers of the ``computed`` sources (raw, then folded, then the haystacks in ``stacks``)."""
    inner = f"SELECT {', '.join([*keep, *spelled.sources(computed)])} FROM {relation}"
    chosen = [source for source in SOURCES if source in computed]
    folded = [f"{spelled.fold(f's_{source}')} AS l_{source}" for source in chosen]
    middle_columns = [*keep, *(f"s_{source}" for source in chosen), *folded]
    middle = f"SELECT {', '.join(middle_columns)} FROM ({inner}) AS raw_sources"
    if stacks:
        extra = ", ".join(f"{spelled.haystack(part)} AS {_haystack_name(part)}" for part in sorted(stacks))
        middle = f"SELECT *, {extra} FROM ({middle}) AS stacked"
    return f"SELECT {', '.join(['*' if everything else ', '.join(keep), *outputs])} FROM ({middle}) AS folded"


def _dimension_table(spelled: _Dialect, memo: _Memo, dimension: str, values_from: str) -> str:
    """One row per distinct key of the dimension: the key (``k_<dimension>_<i>``) and its columns."""
    keys = DIMENSIONS[dimension]
    computed = [source for source, owner in _DIMENSION_OF.items() if owner == dimension]
    outputs = [f"{predicate} AS {name}" for predicate, name in memo.columns[dimension].items()]
    distinct = f"(SELECT DISTINCT {', '.join(keys)} FROM {values_from}) AS distinct_{dimension}"
    evaluated = _evaluated(
        spelled, relation=distinct, keep=keys, computed=computed, stacks=memo.stacks[dimension], outputs=outputs
    )
    renamed = ", ".join(f"{key} AS k_{dimension}_{index}" for index, key in enumerate(keys))
    return f"SELECT {renamed}, * EXCLUDE ({', '.join(keys)}) FROM ({evaluated}) AS evaluated_{dimension}"


def _joined(
    spelled: _Dialect, memo: _Memo, relation: str, values_from: str, named: str | None
) -> tuple[str, list[str], list[tuple[str, str]]]:
    """The relation with the columns of every used dimension table joined on, their names, and
    the tables (name, query) the joined relation reads by name (with ``named``, their prefix)."""
    used = [dimension for dimension, columns in memo.columns.items() if columns]
    carried = [name for dimension in used for name in memo.columns[dimension].values()]
    joins, tables = "", []
    for dimension in used:
        on = " AND ".join(
            f"base.{key} IS NOT DISTINCT FROM dim_{dimension}.k_{dimension}_{index}"
            for index, key in enumerate(DIMENSIONS[dimension])
        )
        table = _dimension_table(spelled, memo, dimension, values_from)
        if named is not None:
            tables.append((f"{named}{dimension}", table))
        read = f"({table})" if named is None else f"{named}{dimension}"
        joins += f" LEFT JOIN {read} AS dim_{dimension} ON {on}"
    listed = "".join(f", {name}" for name in carried)
    return f"(SELECT base.*{listed} FROM (SELECT * FROM {relation}) AS base{joins}) AS memoised", carried, tables


def select_sql(
    rules: Sequence[Rule],
    *,
    relation: str,
    dialect: Dialect = "duckdb",
    columns: Sequence[str] = ("id",),
    hot: Collection[int] = (),
    memoise: Collection[str] = (),
    values_from: str | None = None,
) -> str:
    """A query returning ``columns`` and one boolean ``r<i>`` per rule, row for row.

    ``hot`` lists rules (by index) known to pass their prefilter often, e.g. measured on a
    sample with ``Matcher.prefilter_rates``; it changes the cost of the query, never its result.
    ``memoise`` names ``DIMENSIONS`` evaluated once per distinct key (DuckDB only; see the module
    docstring), their keys read from ``values_from`` (default: ``relation``), which must hold
    every row of ``relation``; it too changes the cost, never the result.
    """
    return _select(rules, relation, dialect, columns, hot, memoise, values_from, None)[1]


def select_parts(
    rules: Sequence[Rule],
    *,
    relation: str,
    columns: Sequence[str] = ("id",),
    hot: Collection[int] = (),
    memoise: Collection[str] = (),
    values_from: str | None = None,
    prefix: str = "memo_",
) -> tuple[list[tuple[str, str]], str]:
    """:func:`select_sql` for DuckDB with the dimension tables apart: ``(name, query)`` pairs to
    create first (``CREATE TEMP TABLE name AS query``), and the query that reads them by name.

    Created tables have exact sizes, so DuckDB builds its join hash tables on them; inlined, their
    ``DISTINCT`` may be estimated larger than the requests, which then get hashed instead.
    """
    return _select(rules, relation, "duckdb", columns, hot, memoise, values_from, prefix)


def _select(
    rules: Sequence[Rule], relation: str, dialect: Dialect, columns: Sequence[str], hot: Collection[int],
    memoise: Collection[str], values_from: str | None, named: str | None,
) -> tuple[list[tuple[str, str]], str]:  # fmt: skip
    unknown = sorted(set(memoise) - set(DIMENSIONS))
    if unknown:
        raise ValueError(f"unknown dimensions: {', '.join(unknown)}")
    if memoise and dialect != "duckdb":
        raise ValueError("memoised dimensions need DuckDB")
    spelled = _Dialect(dialect)
    memo = _Memo(memoise) if memoise else None
    groups, group_of = _groups(rules, hot)
    passthrough = list(columns)
    outputs: list[str] = []
    gated: set[int] = set()
    for index, rule in enumerate(rules):
        if hints(rule.expr) == frozenset():
            outputs.append(f"false AS r{index}")
            continue
        predicate = expr_sql(rule.expr, spelled, memo)
        group = group_of[index]
        # A rule read wholly from memoised tables costs a few column reads: no gate is cheaper.
        if group is not None and not (memo is not None and memo.covers(sources(rule.expr))):
            predicate = f"CASE WHEN pf_{group} THEN {predicate} ELSE false END"
            gated.add(group)
        outputs.append(f"{predicate} AS r{index}")
    stacks: set[tuple[Source, ...]] = set()
    prefilters = [f"{_prefilter(spelled, groups[i], stacks, memo)} AS pf_{i}" for i in sorted(gated)]
    selected = ", ".join([*passthrough, *outputs]) if outputs or passthrough else "1 AS empty"
    base, carried, computed, tables = relation, list[str](), set(SOURCES), list[tuple[str, str]]()
    if memo is not None:
        base, carried, tables = _joined(spelled, memo, relation, values_from or relation, named)
        computed = {source for source in SOURCES if _DIMENSION_OF.get(source) not in memo.dimensions}
    keep = [*passthrough, "sc_status", *carried]
    filtered = _evaluated(
        spelled, relation=base, keep=keep, computed=computed, stacks=stacks, outputs=prefilters, everything=True
    )
    return tables, f"SELECT {selected} FROM ({filtered}) AS prefiltered"
