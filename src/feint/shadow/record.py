"""The request record every part of the shadow service reads: one HTTP request, as logged.

Field names follow the Sigma ``webserver`` taxonomy with ``-`` written as ``_``. Text is valid
Unicode (no lone surrogates) so it can be stored in Parquet and searched by RE2 as UTF-8; bytes that
were not UTF-8 are kept as ``\\xNN`` escapes, as nginx writes them. An empty value is a missing
value: ``""`` and ``None`` mean the same thing to both engines (web logs write ``-`` for both).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

# Column order of the Parquet datasets (``traffic.SCHEMA``) and of ``RequestRecord``.
RECORD_FIELDS: Final = (
    "id",
    "time",
    "c_ip",
    "cs_method",
    "cs_uri_stem",
    "cs_uri_query",
    "cs_user_agent",
    "cs_referer",
    "sc_status",
    "cs_host",
    "cs_version",
    "request_line",
)

_ASCII_LOWER: Final = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """One request with the Sigma webserver fields Feint records; absent values are ``None``."""

    id: str
    time: datetime | None = None
    c_ip: str | None = None
    cs_method: str | None = None
    cs_uri_stem: str | None = None
    cs_uri_query: str | None = None
    cs_user_agent: str | None = None
    cs_referer: str | None = None
    sc_status: int | None = None
    cs_host: str | None = None
    cs_version: str | None = None
    request_line: str | None = None


def ascii_lower(text: str) -> str:
    """``text`` with A-Z folded to a-z and every other character unchanged.

    Sigma matches plain strings case-insensitively. Folding ASCII letters only is the one rule
    Python, DuckDB and ClickHouse can all apply identically (their Unicode ``lower`` functions
    disagree on letters such as U+0130), so it is the rule of both engines.
    """
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def clean_text(raw: bytes | str) -> str:
    """Bytes or text made safe to store: invalid UTF-8 and lone surrogates become ``\\xNN``."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return raw.encode("utf-8", "surrogatepass").decode("utf-8", "backslashreplace")
    return raw


def split_target(target: str) -> tuple[str | None, str | None]:
    """The stem and query of a request target; an empty part is ``None``."""
    stem, sep, query = target.partition("?")
    return (stem or None), (query if sep and query else None)


def request_line_of(method: str | None, stem: str | None, query: str | None, version: str | None) -> str | None:
    """The request line a log would have shown, for sources that log only its parts."""
    if method is None and stem is None:
        return None
    target = (stem or "") + ("" if query is None else "?" + query)
    return " ".join(part for part in (method, target, version) if part)
