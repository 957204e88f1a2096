"""Vectorised JSON lines: a block of lines to records in one DuckDB query, exactly as ``reference.parse_json``.

The reference reads each line with Python's ``json.loads`` (strict JSON, duplicate keys: the last
wins), lower-cases the keys and maps them (``reference.JSON_KEYS``). DuckDB's JSON reader is more
lenient (trailing commas, ``NaN``) and keeps the *first* of duplicate keys, so a line is taken here
only where the two readings are the same by construction; every other line is refused and goes to
the reference (which reads it, or reports it malformed, as before):

- the line is valid UTF-8 of at most ``LINE_BYTES_MAX`` bytes (longer ones, e.g. a 5,000-digit
  number Python refuses, go to the reference), and matches ``JSON_PATTERN``: strict JSON (RFC 8259
  strings, numbers and whitespace; no ``NaN``; no raw control characters; ``\\u`` escapes of lone
  surrogates refused, pairs taken), an object whose values nest at most two levels deep, whose
  top-level keys have no escapes. On such a line yyjson and Python's ``json`` read the same values;
- the keys the mapping reads (``KEYS``), compared lower-cased as the reference does, each occur
  at most once and only in lower case, at any depth (``KEY_TROUBLE_PATTERN``: ``C-IP``, or ``c-ip``
  twice, is refused, since which value the reference takes depends on the order of the keys);
- the value the reference would read for a field (the first key whose value is not null) is a
  string or an integer of at most 18 digits (DuckDB writes it as ``str()`` does, ``-0`` as ``0``);
  booleans, floats, arrays and objects, where the reference raises or formats a float, are refused.
  The status is a JSON integer in the 32-bit range or a string of at most 9 digits (``""``/``-``
  missing); the time a string (a plain ISO 8601 form read in SQL, any other by the reference's own
  ``iso_time`` once per distinct value), an integer epoch of at most 10 digits, or a value
  ``iso_time`` ignores (``true``, an array); an id of more than ``ID_CHARS_MAX`` characters is
  refused.

Then the fields are the reference's: ``-`` and ``""`` missing, ``cs-uri`` split when there is no
stem, the request line split into the parts that are missing, or built from them, and addresses
canonicalised by the reference's function (``fast.fix_address``).
"""

from __future__ import annotations

import re
from typing import Final

import duckdb
import numpy as np
import pyarrow.compute as pc

from feint.shadow.ingest.blocks import Block
from feint.shadow.ingest.dataset import SCHEMA
from feint.shadow.ingest.fast import (
    CLF_YEAR,
    METHOD_CHARS,
    Parsed,
    as_records,
    fix_address,
    literal,
    query_block,
    remap,
    replace_column,
    split_refused,
    text_sql,
)
from feint.shadow.ingest.reference import (
    ID_CHARS_MAX,
    JSON_ID_KEYS,
    JSON_KEYS,
    JSON_STATUS_KEYS,
    JSON_TARGET_KEYS,
    JSON_TIME_KEYS,
    iso_time,
)

# Lines longer than this go to the reference: Python refuses integers of more than 4,300 digits,
# which a shorter line cannot hold; real records are a few hundred bytes.
LINE_BYTES_MAX: Final = 4096
# Every key the mapping reads, in the order of ``json_extract``'s list.
KEYS: Final = tuple(
    dict.fromkeys(
        [*(key for keys in JSON_KEYS.values() for key in keys), *JSON_ID_KEYS, *JSON_TARGET_KEYS,
         *JSON_TIME_KEYS, *JSON_STATUS_KEYS]
    )
)  # fmt: skip
if any(key != key.lower() or not key.isascii() or '"' in key or "\\" in key for key in KEYS):  # pragma: no cover
    raise RuntimeError("the JSON keys read in SQL must be lower-case ASCII without quotes or backslashes")

_WS: Final = r"[ \t\n\r]*"
# RFC 8259 strings; a \u escape of a surrogate only as a high-low pair (Python keeps a lone one).
_STRING: Final = (
    r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}'
    r'|[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}))*"'
)
_KEY: Final = r'"[^"\\\x00-\x1f]*"'  # top-level keys: no escapes, so a key is its text
_NUMBER: Final = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_SCALAR: Final = rf"(?:{_STRING}|{_NUMBER}|true|false|null)"


def _object(key: str, value: str) -> str:
    member = rf"{key}{_WS}:{_WS}{value}{_WS}"
    return rf"\{{{_WS}(?:{member}(?:,{_WS}{member})*)?\}}"


def _nested(value: str) -> str:
    """A scalar, or an array or object of ``value``s."""
    array = rf"\[{_WS}(?:{value}{_WS}(?:,{_WS}{value}{_WS})*)?\]"
    return rf"(?:{_SCALAR}|{array}|{_object(_STRING, value)})"


# A line the fast path may read: an object of values nested at most two levels, strict JSON.
JSON_PATTERN: Final = rf"{_WS}{_object(_KEY, _nested(_nested(_SCALAR)))}{_WS}"


def _spellings(key: str) -> list[str]:
    """Patterns of every spelling of ``key`` with an upper-case letter (the first one at each place)."""
    return [
        re.escape(key[:index]) + re.escape(char.upper()) + f"(?i:{re.escape(key[index + 1 :])})"
        for index, char in enumerate(key)
        if char != char.upper()
    ]


def _member(spelling: str) -> str:
    # Strict JSON: a string right after "{" or "," and followed by ":" is a key (at any depth).
    return rf'[{{,]{_WS}"{spelling}"{_WS}:'


# A key the mapping reads written with an upper-case letter, or twice: which value the reference
# takes then depends on the order of the keys (``json.loads`` keeps the last, DuckDB the first).
KEY_TROUBLE_PATTERN: Final = "|".join(
    [_member("(?:" + "|".join(spelling for key in KEYS for spelling in _spellings(key)) + ")")]
    + [f"{_member(re.escape(key))}.*{_member(re.escape(key))}" for key in KEYS]
)
_INTEGER: Final = r"-?[0-9]{1,18}"
_STATUS_TEXT: Final = r"-?[0-9]{1,9}"
_STATUS_NUMBER: Final = r"-?[0-9]{1,10}"
_EPOCH: Final = r"[0-9]{1,10}"
# The time form read in SQL (``datetime.isoformat``'s, with ``Z`` or a space allowed); years
# 0xxx and 9999 are left to Python, where an offset can take them out of the calendar.
ISO_TIME_PATTERN: Final = (
    rf"{CLF_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_PATHS: Final = "[" + ", ".join(literal(f'$."{key}"') for key in KEYS) + "]"
_FIELD_KEYS: Final = {**JSON_KEYS, "id": JSON_ID_KEYS, "target": JSON_TARGET_KEYS}


def _value(key: str) -> str:
    """The JSON text of a key's value: NULL when the key is absent, ``'null'`` when its value is."""
    return f"v[{KEYS.index(key) + 1}]"


def _first(keys: tuple[str, ...]) -> str:
    """The JSON text of the first of ``keys`` whose value is not null (``reference._first``)."""
    return "COALESCE(" + ", ".join(f"NULLIF({_value(key)}, 'null')" for key in keys) + ")"


def _present_or(keys: tuple[str, str]) -> str:
    """``record.get(first, record.get(second))`` as JSON text, NULL for null."""
    return f"NULLIF(CASE WHEN {_value(keys[0])} IS NOT NULL THEN {_value(keys[0])} ELSE {_value(keys[1])} END, 'null')"


def _text(json: str) -> str:
    """``str()`` of a JSON string or integer given as JSON text; NULL for any other value."""
    return f"""CASE WHEN {json}[1] = '"' THEN
            CASE WHEN contains({json}, '\\') THEN json_extract_string({json}, '$') ELSE {json}[2:-2] END
        WHEN regexp_full_match({json}, {literal(_INTEGER)}) THEN {json}
        END"""


def _string(json: str) -> str:
    """A JSON string's text, NULL for any other value."""
    return f"""CASE WHEN {json}[1] = '"' THEN
            CASE WHEN contains({json}, '\\') THEN json_extract_string({json}, '$') ELSE {json}[2:-2] END END"""


def _split_target(target: str) -> tuple[str, str]:
    """``record.split_target`` in SQL: stem and query, an empty part NULL."""
    mark = f"strpos({target}, '?')"
    stem = f"NULLIF(CASE WHEN {mark} = 0 THEN {target} ELSE left({target}, {mark} - 1) END, '')"
    query = f"CASE WHEN {mark} > 0 THEN NULLIF(substr({target}, {mark} + 1), '') END"
    return stem, query


# Python's ``re.match`` of ``^token$`` also takes a token followed by one "\n" (``$`` matches before
# a final newline), which a JSON string can hold.
_METHOD: Final = literal(METHOD_CHARS + r"\n?")
_RL_OK: Final = f"(len(parts) IN (2, 3) AND regexp_full_match(parts[1], {_METHOD}) AND parts[2] <> '')"
_RL_STEM, _RL_QUERY = _split_target("parts[2]")
_TARGET_STEM, _TARGET_QUERY = _split_target("target")
_STATUS_OK: Final = f"""(j_status IS NULL OR status_text IN ('', '-')
    OR COALESCE(status BETWEEN {_INT32_MIN} AND {_INT32_MAX}, false))"""
_TIME_OK: Final = (
    f"(j_time IS NULL OR j_time[1] IN ('\"', 't', 'f', '[', '{{') OR regexp_full_match(j_time, {literal(_EPOCH)}))"
)

_JSON_SQL: Final = f"""
WITH raw AS (
    SELECT pos, n, CASE WHEN octet_length(b) <= {LINE_BYTES_MAX} THEN try(decode(b)) END AS txt FROM lines
), strict AS (
    SELECT pos, n, txt FROM raw
    WHERE regexp_full_match(txt, {literal(JSON_PATTERN)}) AND NOT regexp_matches(txt, {literal(KEY_TROUBLE_PATTERN)})
), keyed AS (
    SELECT pos, n, CAST(json_extract(txt, {_PATHS}) AS VARCHAR[]) AS v FROM strict
), firsts AS (
    SELECT pos, n,
        {", ".join(f"{_first(keys)} AS j_{name}" for name, keys in _FIELD_KEYS.items())},
        {_present_or(JSON_TIME_KEYS)} AS j_time, {_present_or(JSON_STATUS_KEYS)} AS j_status
    FROM keyed
), texts AS (
    SELECT *,
        {", ".join(f"{_text(f'j_{name}')} AS t_{name}" for name in _FIELD_KEYS)},
        {_string("j_time")} AS time_text, {_string("j_status")} AS status_text
    FROM firsts
), fields AS (
    SELECT pos, n, j_time, j_status, status_text, time_text,
        NOT ({" OR ".join(f"(j_{name} IS NOT NULL AND t_{name} IS NULL)" for name in _FIELD_KEYS)})
            AS texts_ok,
        {", ".join(f"{text_sql(f't_{name}')} AS {name}" for name in _FIELD_KEYS)},
        CASE WHEN j_status[1] = '"' THEN
                CASE WHEN regexp_full_match(status_text, {literal(_STATUS_TEXT)}) THEN CAST(status_text AS BIGINT) END
            WHEN regexp_full_match(j_status, {literal(_STATUS_NUMBER)}) THEN CAST(j_status AS BIGINT) END AS status,
        string_split({text_sql("t_request_line")}, ' ') AS parts
    FROM texts
), joined AS (
    SELECT *,
        COALESCE(id, $prefix || n) AS record_id,
        CASE WHEN target IS NOT NULL AND cs_uri_stem IS NULL THEN {_TARGET_STEM} ELSE cs_uri_stem END AS stem,
        CASE WHEN target IS NOT NULL AND cs_uri_stem IS NULL THEN {_TARGET_QUERY} ELSE cs_uri_query END AS query,
        {_RL_OK} AS rl_ok
    FROM fields
), parts AS (
    SELECT *,
        COALESCE(cs_method, CASE WHEN rl_ok THEN parts[1] END) AS method,
        COALESCE(stem, CASE WHEN rl_ok THEN {_RL_STEM} END) AS stem_,
        COALESCE(query, CASE WHEN rl_ok THEN {_RL_QUERY} END) AS query_,
        COALESCE(cs_version, CASE WHEN rl_ok AND len(parts) = 3 THEN NULLIF(parts[3], '') END) AS version
    FROM joined
)
SELECT pos,
    COALESCE(texts_ok AND {_STATUS_OK} AND {_TIME_OK} AND length(record_id) <= {ID_CHARS_MAX}, false) AS ok,
    record_id AS id,
    CASE WHEN regexp_full_match(time_text, {literal(ISO_TIME_PATTERN)}) THEN try_cast(time_text AS TIMESTAMPTZ)
        WHEN regexp_full_match(j_time, {literal(_EPOCH)}) THEN to_timestamp(CAST(j_time AS BIGINT)) END AS time,
    CASE WHEN NOT regexp_full_match(time_text, {literal(ISO_TIME_PATTERN)}) THEN time_text END AS time_raw,
    c_ip, method AS cs_method, stem_ AS cs_uri_stem, query_ AS cs_uri_query, cs_user_agent, cs_referer,
    CAST(CASE WHEN status BETWEEN {_INT32_MIN} AND {_INT32_MAX} THEN status END AS INTEGER) AS sc_status,
    cs_host, version AS cs_version,
    CASE WHEN request_line IS NOT NULL THEN request_line
        WHEN method IS NULL AND stem_ IS NULL THEN NULL
        ELSE concat_ws(' ', method, NULLIF(COALESCE(stem_, '') || COALESCE('?' || query_, ''), ''), version)
        END AS request_line
FROM parts
"""


def parse_json_block(connection: duckdb.DuckDBPyConnection, block: Block, *, prefix: str) -> Parsed:
    """JSON lines of a block; see the module's notes for what is refused."""
    table, _ = split_refused(query_block(connection, block, _JSON_SQL, prefix=prefix))
    refused = np.ones(len(block.lines), dtype=np.bool_)  # lines that failed the pattern left no row
    refused[table.column("pos").to_numpy()] = False
    text = table.column("time_raw").combine_chunks()
    if text.null_count < len(text):
        fixed = remap(text, pc.is_valid(text), iso_time, SCHEMA.field("time").type,
                      base=table.column("time").combine_chunks())  # fmt: skip
        table = replace_column(table, "time", fixed)
    return Parsed(as_records(fix_address(table)), [(int(position), None) for position in np.flatnonzero(refused)])
