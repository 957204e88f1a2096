"""Vectorised log parsers: a block of lines to records in one DuckDB query, Python only at the edges.

Each parser takes a block (``blocks.Block``) and returns the records of the lines it could read
exactly as the reference parser (``reference``) would, and the positions of the lines it refuses,
which the pipeline hands to the reference parser. The rule for what is refused is simple: a line is
taken only where the vectorised reading is the reference's reading by construction.

Combined and common: the reference regular expression, with Python's ``\\S`` written out (RE2's
``\\S`` also matches ``\\v``), run by RE2 on the line as UTF-8 text. For valid UTF-8 the two
engines match the same spans: every metacharacter of the pattern is ASCII, so no multi-byte
character is split differently. Per case:

- not valid UTF-8 (``try(decode)`` is NULL): refused; the reference writes ``\\xNN`` for such bytes;
- NUL bytes, control characters, huge values (up to ``LINE_BYTES_MAX``): taken; RE2 and Python
  treat them alike and Parquet stores them;
- no match (missing fields, a stray quote): refused, and the reference reports it malformed;
- quoted fields with a backslash (``\\"``, ``\\\\``, ``\\xHH``): taken; the unescaping is the
  reference's own function, run once per distinct value of the block;
- addresses with a ``:`` (IPv6, canonicalised by ``ipaddress``): the reference's function, once
  per distinct value; other addresses are their own canonical text (IPv4 rejects leading zeros);
- times in the usual ``dd/Mon/yyyy:HH:MM:SS +hhmm`` form: DuckDB's ``strptime``; any other time
  text (another case, single digits, year 9999 that overflows at UTC): the reference's function
  per distinct value.

W3C extended: the data lines between two ``#Fields`` headers are split on single spaces in SQL;
lines with another count of values, a status that is not plain digits, or invalid UTF-8 are
refused. JSON lines: ``jsonl``, which uses the helpers here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feint.shadow.ingest.blocks import Block
from feint.shadow.ingest.dataset import SCHEMA
from feint.shadow.ingest.reference import (
    canonical_ip,
    clf_time,
    iso_time,
    split_request,
    text_or_none,
    unescape,
    w3c_fields,
)

# Rows per Arrow record batch of the lines DuckDB scans (zero-copy slices of the block).
SCAN_BATCH_ROWS: Final = 16_384
# W3C segments (runs of lines under one #Fields header) read in SQL per block; a block with more
# (a header every few lines: hostile or broken) leaves its remaining lines to the reference.
W3C_SEGMENTS_MAX: Final = 64

_NOT_SPACE: Final = r"[^ \t\n\r\f\v]"  # Python's bytes \S: RE2's \S would also take \v
_QUOTED: Final = r'(?:[^"\\]|\\.)*'
COMBINED_PATTERN: Final = (
    rf"^({_NOT_SPACE}+) {_NOT_SPACE}+ {_NOT_SPACE}+ \[([^\]]*)\] "
    rf'"({_QUOTED})" ([0-9]{{1,3}}|-) (?:[0-9]+|-)(?: "({_QUOTED})" "({_QUOTED})")?'
)
_MONTHS: Final = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
# The one time form read in SQL; year 9999 is left out (ahead of UTC it overflows in Python).
CLF_TIME_PATTERN: Final = (
    rf"(0[1-9]|[12][0-9]|3[01])/({_MONTHS})/[1-9][0-9]{{3}}:([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9] "
    r"[+-]([01][0-9]|2[0-3])[0-5][0-9]"
)
# Years the plain form takes: four digits, not 0xxx and not 9999.
CLF_YEAR: Final = r"(?:[1-8][0-9]{3}|9(?:[0-8][0-9]{2}|9(?:[0-8][0-9]|9[0-8])))"
_CLF_TIME_PLAIN: Final = (
    rf"(?:0[1-9]|[12][0-9]|3[01])/(?:{_MONTHS})/{CLF_YEAR}:(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9] "
    r"[+-](?:[01][0-9]|2[0-3])[0-5][0-9]"
)
_CLF_TIME_CHARS: Final = 26  # "10/Oct/2023:13:55:36 +0000"
_CLEAN_FIELD: Final = r'[^ \t\n\r\f\v"]+'
# Lines of the usual shape, matched by RE2's DFA (no captures, about a third of the cost of
# extracting the groups) and then cut at their quotes: three tokens without quotes, a plain time,
# quoted fields without backslashes or quotes, then either referer and agent (anything may follow,
# as in the reference) or the end of the line (common format). On such a line the reference's
# pattern matches along the same cuts: each of its greedy parts stops where the cut is, and that
# first path succeeds. The request is a method token, a target and perhaps a version, single
# spaces apart, so ``split_request`` takes it without the method regex per row (0.18 CPU-s per 1M).
# Every other line goes through COMBINED_PATTERN with captures.
METHOD_CHARS: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CLEAN_REQUEST: Final = rf'{METHOD_CHARS} [^ "\\]+(?: [^ "\\]*)?'
CLEAN_PATTERN: Final = (
    rf'^{_CLEAN_FIELD} {_CLEAN_FIELD} {_CLEAN_FIELD} \[{_CLF_TIME_PLAIN}\] "{_CLEAN_REQUEST}" (?:[0-9]{{1,3}}|-) '
    r'(?:[0-9]+|-)(?: "[^"\\]*" "[^"\\]*"|[\r\n]*$)'
)
_BLANK: Final = r"[ \t\n\r\x0b\x0c]*"  # what bytes.strip() removes
_W3C_DATE: Final = r"[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_W3C_CLOCK: Final = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
_STATUS_DIGITS: Final = r"[0-9]{1,9}"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def text_sql(expr: str) -> str:
    """The reference's ``text_or_none``: empty and ``-`` are missing."""
    return f"NULLIF(NULLIF({expr}, ''), '-')"


def _request_sql(parts: str, *, known: str) -> str:
    """``split_request`` as columns, from ``parts``: the line split on single spaces (no newline in it);
    where ``known`` holds, the request is known to have the right shape (``_CLEAN_REQUEST``).

    The target is left whole (``cs_uri_target``): ``split_targets`` cuts it into stem and query in
    Arrow (DuckDB's ``strpos``/``left``/``substr`` count characters, 0.45 CPU-s per 1M lines)."""
    ok = (
        f"(CASE WHEN {known} THEN true ELSE len({parts}) IN (2, 3) AND "
        f"regexp_full_match({parts}[1], {literal(METHOD_CHARS)}) AND {parts}[2] <> '' END)"
    )
    return f"""
        CASE WHEN {ok} THEN {parts}[1] END AS cs_method,
        CASE WHEN {ok} THEN {parts}[2] END AS cs_uri_target,
        CASE WHEN {ok} AND len({parts}) = 3 THEN NULLIF({parts}[3], '') END AS cs_version"""


_NULL_TEXT: Final = pa.scalar(None, pa.string())


def _none_if_empty(column: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(column, ""), _NULL_TEXT, column)


def split_targets(table: pa.Table) -> pa.Table:
    """``cs_uri_target`` cut at its first ``?`` into ``cs_uri_stem`` and ``cs_uri_query``, an empty
    part missing (``record.split_target``), by Arrow's byte-wise kernels."""
    target = table.column("cs_uri_target").combine_chunks().cast(pa.string())
    parts = pc.split_pattern(target, pattern="?", max_splits=1)
    stem = pc.list_element(parts, 0)
    has_query = pc.equal(pc.fill_null(pc.list_value_length(parts), 0), 2).to_numpy(zero_copy_only=False)
    second = parts.offsets.to_numpy()[:-1] + 1
    query = parts.values.take(pa.array(second, mask=~has_query))
    table = table.drop_columns(["cs_uri_target"])
    return table.append_column("cs_uri_stem", _none_if_empty(stem)).append_column("cs_uri_query", _none_if_empty(query))


# One row per line that is not blank: ``ok`` when read here, else refused. The ``*_raw`` columns
# hold a value only where Python must finish it (escapes, odd times). The line keeps its trailing
# "\r" and "\n" (trimming every line costs a copy of each): the pattern is anchored at the start
# only and each of its possible last tokens ('"', a digit, '-') is neither "\r" nor "\n", so a match
# never reaches them and the groups are those of the trimmed line; the blank test allows both.
_COMBINED_SQL: Final = f"""
WITH raw AS (
    SELECT pos, n, try(decode(b)) AS txt FROM lines
), tiers AS (
    SELECT pos, n, txt, CASE WHEN regexp_matches(txt, {literal(CLEAN_PATTERN)}) THEN string_split(txt, '"') END AS q
    FROM raw
), matched AS (
    SELECT pos, n, txt, q IS NOT NULL AS clean, CASE WHEN q IS NOT NULL THEN
        {{'ip': split_part(q[1], ' ', 1), 'time': left(right(q[1], {_CLF_TIME_CHARS + 2}), {_CLF_TIME_CHARS}),
          'request': q[2], 'status': split_part(q[3], ' ', 2), 'referer': COALESCE(q[4], ''),
          'agent': COALESCE(q[6], '')}}
        ELSE regexp_extract(txt, {literal(COMBINED_PATTERN)}, ['ip', 'time', 'request', 'status', 'referer', 'agent'])
        END AS g
    FROM tiers
), fields AS (
    SELECT pos, n, clean, COALESCE(g.ip <> '', false) AS ok, g.ip AS ip, g.time AS time_text,
        CASE WHEN clean THEN true ELSE
            regexp_full_match(g.time, {literal(CLF_TIME_PATTERN)}) AND NOT contains(g.time, '/9999:') END
            AS time_plain,
        {text_sql("g.request")} AS request_line, g.request AS request, g.status AS status, g.referer AS referer,
        g.agent AS agent
    FROM matched
    WHERE txt IS NULL OR g.ip <> '' OR NOT regexp_full_match(txt, {literal(_BLANK)})
), split AS (
    SELECT *, string_split(request_line, ' ') AS parts FROM fields
)
SELECT pos, ok, $prefix || n AS id,
    CASE WHEN time_plain THEN try_strptime(time_text, '%d/%b/%Y:%H:%M:%S %z') END AS time,
    {text_sql("ip")} AS c_ip,
    {_request_sql("parts", known="clean")},
    {text_sql("agent")} AS cs_user_agent,
    {text_sql("referer")} AS cs_referer,
    CASE WHEN ok AND status <> '-' THEN CAST(status AS INTEGER) END AS sc_status,
    CAST(NULL AS VARCHAR) AS cs_host,
    request_line,
    CASE WHEN ok AND NOT time_plain THEN time_text END AS time_raw,
    CASE WHEN contains(request, '\\') THEN request END AS request_raw,
    CASE WHEN contains(referer, '\\') THEN referer END AS referer_raw,
    CASE WHEN contains(agent, '\\') THEN agent END AS agent_raw
FROM split
"""


@dataclass
class Parsed:
    """Records read in SQL (``SCHEMA`` plus ``pos``) and lines refused, with their W3C fields."""

    table: pa.Table
    refused: list[tuple[int, list[str] | None]] = field(default_factory=list)


def lines_table(block: Block) -> pa.Table:
    """The block as the ``lines`` relation the queries read: position, line number, bytes."""
    positions = np.arange(len(block.lines), dtype=np.int64)
    table = pa.table({"pos": positions, "n": positions + block.first, "b": block.lines})
    # DuckDB gives each record batch of an Arrow table to one thread: a block in one batch ran on a
    # single core (2.45 s for four blocks with two threads, 1.23 s in batches of 16,384 rows).
    return pa.Table.from_batches(table.to_batches(max_chunksize=SCAN_BATCH_ROWS), schema=table.schema)


def remap(
    column: pa.Array, mask: pa.Array, function: Callable[[Any], Any], type_: pa.DataType, *, base: pa.Array
) -> pa.Array:
    """``base`` with the values where ``mask`` holds replaced by ``function`` of ``column``'s value
    there, called once per distinct value."""
    mask = pc.fill_null(mask, False)
    base = base.cast(type_)
    if not pc.any(mask).as_py():
        return base
    values = column.filter(mask)
    distinct = pc.unique(values)
    mapped = pa.array([function(value) for value in distinct.to_pylist()], type_)
    return pc.replace_with_mask(base, mask, mapped.take(pc.index_in(values, value_set=distinct)))


# Values finished in Python (addresses canonicalised, escaped fields undone), remembered across
# blocks: clients, agents and scanners' payloads come back (25 µs an IPv6 address otherwise).
ADDRESSES_CACHED_MAX: Final = 1 << 16
ESCAPED_CACHED_MAX: Final = 1 << 16
_canonical_ip: Final = lru_cache(maxsize=ADDRESSES_CACHED_MAX)(canonical_ip)


def fix_address(table: pa.Table) -> pa.Table:
    """IPv6 (and anything else with a ``:``) canonicalised by the reference's function."""
    column = table.column("c_ip").combine_chunks()
    distinct = pc.unique(column.filter(pc.fill_null(pc.match_substring(column, ":"), False))).to_pylist()
    # Most servers log the canonical form already (nginx does): rebuild the column only for the others.
    changed = [value for value in distinct if _canonical_ip(value) != value]
    if not changed:
        return table
    mask = pc.is_in(column, value_set=pa.array(changed, pa.string()))
    fixed = remap(column, mask, _canonical_ip, pa.string(), base=column)
    return table.set_column(table.schema.get_field_index("c_ip"), "c_ip", fixed)


@lru_cache(maxsize=ESCAPED_CACHED_MAX)
def _unquote(raw: str) -> str | None:
    # The text came from valid UTF-8 bytes, so its bytes are the line's bytes.
    return text_or_none(unescape(raw.encode("utf-8")))


def replace_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def _fix_combined(table: pa.Table) -> pa.Table:
    """Escaped quoted fields and odd times, by the reference's functions, per distinct value."""
    for name, raw in (("cs_referer", "referer_raw"), ("cs_user_agent", "agent_raw")):
        column = table.column(raw).combine_chunks()
        if column.null_count < len(column):
            fixed = remap(column, pc.is_valid(column), _unquote, pa.string(), base=table.column(name).combine_chunks())
            table = replace_column(table, name, fixed)
    raw_request = table.column("request_raw").combine_chunks()
    if raw_request.null_count < len(raw_request):
        escaped = pc.is_valid(raw_request)
        values = raw_request.filter(escaped)
        distinct = pc.unique(values)
        parsed = [_escaped_request(value) for value in distinct.to_pylist()]
        where = pc.index_in(values, value_set=distinct)
        for index, name in enumerate(("request_line", "cs_method", "cs_uri_stem", "cs_uri_query", "cs_version")):
            mapped = pa.array([row[index] for row in parsed], pa.string()).take(where)
            column = table.column(name).combine_chunks().cast(pa.string())
            table = replace_column(table, name, pc.replace_with_mask(column, escaped, mapped))
    time_type = SCHEMA.field("time").type
    text = table.column("time_raw").combine_chunks()
    if text.null_count < len(text):
        fixed_time = remap(
            text, pc.is_valid(text), _odd_clf_time, time_type, base=table.column("time").combine_chunks()
        )
        table = replace_column(table, "time", fixed_time)
    return fix_address(table)


def _odd_clf_time(text: str) -> datetime | None:
    return clf_time(text.encode("utf-8").decode("ascii", "replace"))


@lru_cache(maxsize=ESCAPED_CACHED_MAX)
def _escaped_request(raw: str) -> tuple[str | None, ...]:
    line = _unquote(raw)
    return (line, *split_request(line))


def as_records(table: pa.Table) -> pa.Table:
    """The dataset columns (and ``pos``) of a query's table, typed as ``SCHEMA``."""
    columns = [table.column("pos").cast(pa.int64())]
    columns += [table.column(f.name).cast(f.type) for f in SCHEMA]
    return pa.Table.from_arrays(columns, schema=pa.schema([pa.field("pos", pa.int64()), *SCHEMA]))


def split_refused(table: pa.Table) -> tuple[pa.Table, list[int]]:
    """The rows read (``ok``) and the positions of the others."""
    ok = pc.fill_null(table.column("ok"), False)
    if pc.all(ok).as_py():
        return table, []
    refused = table.column("pos").filter(pc.invert(ok)).to_pylist()
    return table.filter(ok), refused


def query_block(connection: duckdb.DuckDBPyConnection, block: Block, sql: str, *, prefix: str) -> pa.Table:
    """``sql`` over the block's ``lines`` (``lines_table``), with ``$prefix`` bound."""
    connection.register("lines", lines_table(block))
    try:
        return connection.sql(sql, params={"prefix": prefix}).to_arrow_table()
    finally:
        connection.unregister("lines")


def parse_combined_block(connection: duckdb.DuckDBPyConnection, block: Block, *, prefix: str) -> Parsed:
    """Combined and common lines of a block; see the module's notes for what is refused."""
    table, refused = split_refused(query_block(connection, block, _COMBINED_SQL, prefix=prefix))
    return Parsed(as_records(_fix_combined(split_targets(table))), [(position, None) for position in refused])


def _w3c_sql(fields: Sequence[str]) -> str:
    """The query reading lines of positions ``$lo``..``$hi`` under the header ``fields``."""
    last = {name: index for index, name in enumerate(fields)}  # a repeated name: the last wins

    def value(*names: str) -> str:
        found = [f"{text_sql(f'vals[{last[name] + 1}]')}" for name in names if name in last]
        return (
            "CAST(NULL AS VARCHAR)" if not found else found[0] if len(found) == 1 else f"COALESCE({', '.join(found)})"
        )

    method, stem, query, version = (value(n) for n in ("cs-method", "cs-uri-stem", "cs-uri-query", "cs-version"))
    target = f"NULLIF(COALESCE({stem}, '') || COALESCE('?' || {query}, ''), '')"
    date, clock, status = value("date"), value("time"), value("sc-status")
    plain_time = (
        f"(regexp_full_match({date}, {literal(_W3C_DATE)}) AND regexp_full_match({clock}, {literal(_W3C_CLOCK)}))"
    )
    return f"""
WITH raw AS (
    SELECT pos, n, rtrim(try(decode(b)), chr(13) || chr(10)) AS txt FROM lines WHERE pos >= $lo AND pos < $hi
), split AS (
    SELECT pos, n, txt, string_split(txt, ' ') AS vals FROM raw
    WHERE txt IS NULL OR NOT regexp_full_match(txt, {literal(_BLANK)})
), rows AS (
    SELECT pos, n, vals, COALESCE(len(vals) = {len(fields)}
        AND ({status} IS NULL OR regexp_full_match({status}, {literal(_STATUS_DIGITS)})), false) AS ok
    FROM split
)
SELECT pos, ok, $prefix || n AS id,
    CASE WHEN {plain_time} THEN CAST(try_strptime({date} || 'T' || {clock}, '%Y-%m-%dT%H:%M:%S') AS TIMESTAMPTZ)
        END AS time,
    CASE WHEN {date} IS NOT NULL AND {clock} IS NOT NULL AND NOT {plain_time} THEN {date} || 'T' || {clock} END
        AS time_text,
    {value("c-ip")} AS c_ip, {method} AS cs_method, {stem} AS cs_uri_stem, {query} AS cs_uri_query,
    replace({value("cs(user-agent)", "cs-user-agent")}, '+', ' ') AS cs_user_agent,
    {value("cs(referer)", "cs-referer")} AS cs_referer,
    CASE WHEN ok THEN CAST({status} AS INTEGER) END AS sc_status,
    {value("cs(host)", "cs-host")} AS cs_host, {version} AS cs_version,
    CASE WHEN {method} IS NOT NULL OR {stem} IS NOT NULL THEN concat_ws(' ', {method}, {target}, {version}) END
        AS request_line
FROM rows
"""


class W3cParser:
    """W3C extended logs; the ``#Fields`` header in force carries from block to block."""

    def __init__(self) -> None:
        self.fields: list[str] | None = None
        self._queries: dict[tuple[str, ...], str] = {}

    def parse(self, connection: duckdb.DuckDBPyConnection, block: Block, *, prefix: str) -> Parsed:
        """Data lines of a block in SQL, per run of lines under one header."""
        headers = pc.indices_nonzero(pc.starts_with(block.lines, b"#")).to_pylist()
        tables: list[pa.Table] = []
        refused: list[tuple[int, list[str] | None]] = []
        connection.register("lines", lines_table(block))
        try:
            start = 0
            for index, stop in enumerate([*headers, len(block.lines)]):
                if index >= W3C_SEGMENTS_MAX:  # the rest line by line, headers still in force
                    self._by_line(block, start, set(headers), refused)
                    break
                if stop > start:
                    self._segment(connection, prefix, start, stop, tables, refused)
                if stop < len(block.lines):
                    self._header(block, stop)
                start = stop + 1
        finally:
            connection.unregister("lines")
        table = pa.concat_tables(tables) if tables else empty_records()
        return Parsed(table, sorted(refused, key=lambda item: item[0]))

    def _by_line(
        self, block: Block, start: int, headers: set[int], refused: list[tuple[int, list[str] | None]]
    ) -> None:
        for position in range(start, len(block.lines)):
            if position in headers:
                self._header(block, position)
            else:
                refused.append((position, self.fields))

    def _header(self, block: Block, position: int) -> None:
        header = block.lines[position].as_py().rstrip(b"\r\n")
        if header.startswith(b"#Fields:"):
            self.fields = w3c_fields(header)

    def _segment(
        self, connection: duckdb.DuckDBPyConnection, prefix: str, start: int, stop: int,
        tables: list[pa.Table], refused: list[tuple[int, list[str] | None]],
    ) -> None:  # fmt: skip
        if self.fields is None:  # data before any header: the reference says so, line by line
            refused += [(pos, None) for pos in range(start, stop)]
            return
        key = tuple(self.fields)
        if key not in self._queries:
            self._queries[key] = _w3c_sql(self.fields)
        parameters = {"prefix": prefix, "lo": start, "hi": stop}
        table = connection.sql(self._queries[key], params=parameters).to_arrow_table()
        table, positions = split_refused(table)
        refused += [(pos, self.fields) for pos in positions]
        text = table.column("time_text").combine_chunks()
        times = table.column("time").combine_chunks()
        table = replace_column(
            table, "time", remap(text, pc.is_valid(text), iso_time, SCHEMA.field("time").type, base=times)
        )
        tables.append(as_records(fix_address(table)))


def empty_records() -> pa.Table:
    """No records, in the parsers' layout (``pos`` and ``SCHEMA``)."""
    return pa.schema([pa.field("pos", pa.int64()), *SCHEMA]).empty_table()
