"""The line-by-line log parsers: nginx/Apache combined and common, W3C extended (IIS), JSON lines.

They are the reference. The vectorised parsers (``fast``) must give exactly the records these give,
and they hand back to these every line they do not take themselves (``pipeline`` does the
dispatch); the differential tests hold the two to it. Reading here is a stream of bounded lines
(gzip or plain, recognised by its magic bytes). The format of each file is recognised from its
first ``PROBE_LINES`` lines; a file none of whose first lines is a request in a known format is
rejected there. Lines that do not parse are counted with their line numbers (the first
``EXAMPLES_MAX`` are kept as examples), never dropped silently.

Request ids: a JSON-lines record's ``id`` (or ``c-request-id``); otherwise the 1-based line number,
or ``<file name>:<line>`` when the dataset spans several files.

JSON-lines records use the Sigma field names as keys (``c-ip``, ``cs-method``, ``cs-uri-stem``,
``cs-uri-query``, ``cs-uri`` for the whole target, ``cs-user-agent``/``c-useragent``,
``cs-referer``, ``sc-status``, ``cs-host``, ``cs-version``, ``time``, and ``request`` for the raw
request line); the record field names (``cs_uri_stem``...) are accepted too, so Feint's own
exports read back.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Final, Literal, cast

from feint.shadow.errors import TrafficFormatInvalid
from feint.shadow.ingest.dataset import STATUS_MAX, STATUS_MIN
from feint.shadow.record import RequestRecord, clean_text, request_line_of, split_target

LogFormat = Literal["combined", "w3c", "jsonl"]

PROBE_LINES: Final = 20
LINE_BYTES_MAX: Final = 64 << 10
EXAMPLES_MAX: Final = 5
EXAMPLE_CHARS_MAX: Final = 200
FILES_MAX: Final = 10_000
ID_CHARS_MAX: Final = 256
GZIP_MAGIC: Final = b"\x1f\x8b"

_COMBINED: Final = re.compile(
    rb'^(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]*)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    rb"(?P<status>\d{1,3}|-) (?:\d+|-)"
    rb'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
)
_ESCAPE: Final = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line that could not be read as a request."""

    path: str
    line: int
    reason: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "reason": self.reason, "text": self.text}


@dataclass
class IngestReport:
    """What an import read: rows written, lines rejected (with the first examples), formats."""

    output: str
    rows: int = 0
    malformed: int = 0
    examples: list[LineProblem] = field(default_factory=list)
    formats: dict[str, LogFormat] = field(default_factory=dict)

    def reject(self, problem: LineProblem) -> None:
        self.malformed += 1
        if len(self.examples) < EXAMPLES_MAX:
            self.examples.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "rows": self.rows,
            "malformed": self.malformed,
            "examples": [example.to_dict() for example in self.examples],
            "formats": dict(self.formats),
        }


class Malformed(ValueError):
    """A line of a recognised format that is not a usable request."""


def open_log(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it starts with the gzip magic."""
    with path.open("rb") as head:
        magic = head.read(len(GZIP_MAGIC))
    if magic == GZIP_MAGIC:
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its end) pairs; ``None`` for a line over ``LINE_BYTES_MAX``."""
    number = 0
    while True:
        line = stream.readline(LINE_BYTES_MAX + 1)
        if not line:
            return
        number += 1
        if len(line) > LINE_BYTES_MAX and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the line, bounded reads
                line = stream.readline(LINE_BYTES_MAX)
            yield number, None
            continue
        yield number, line.rstrip(b"\r\n")


def unescape(raw: bytes) -> str:
    """A quoted log field: nginx's ``\\xHH`` and Apache's ``\\"``/``\\\\`` undone, then text."""

    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return bytes([int(code[1:], 16)]) if len(code) == 3 else code

    return clean_text(_ESCAPE.sub(one, raw) if b"\\" in raw else raw)


def text_or_none(value: str | None) -> str | None:
    return None if value is None or value in ("", "-") else value


def canonical_ip(value: str | None) -> str | None:
    """The canonical text of an address (what CIDR tests expect), else the value as given.

    An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``, how dual-stack sockets log IPv4 clients)
    becomes the IPv4 address, so rules written for IPv4 networks apply to it."""
    value = text_or_none(value)
    if value is None:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def _status(value: object) -> int | None:
    if value is None or value in ("", "-"):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Malformed(f"status {value!r} is not a number")
    try:
        number = int(value)
    except ValueError as exc:
        raise Malformed(f"status {value!r} is not a number") from exc
    if not STATUS_MIN <= number <= STATUS_MAX:
        raise Malformed(f"status {number} out of range")
    return number


@lru_cache(maxsize=4096)  # log lines share their second; parsing dominates otherwise
def clf_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 9999 ahead of UTC, or year 1 behind
        return None


def iso_time(value: object) -> datetime | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a date at the edge of the calendar
        return None


def split_request(line: str | None) -> tuple[str | None, str | None, str | None, str | None]:
    """Method, stem, query and version of a request line; garbage leaves them ``None``."""
    if line is None:
        return None, None, None, None
    parts = line.split(" ")
    if len(parts) in (2, 3) and _TOKEN.match(parts[0]) and parts[1]:
        stem, query = split_target(parts[1])
        return parts[0], stem, query, (parts[2] or None) if len(parts) == 3 else None
    return None, None, None, None


def parse_combined(raw: bytes, request_id: str) -> RequestRecord:
    """One line of the combined (or common) log format."""
    match = _COMBINED.match(raw)
    if match is None:
        raise Malformed("not a combined/common log line")
    line = text_or_none(unescape(match["request"]))
    method, stem, query, version = split_request(line)
    referer, agent = match["referer"], match["agent"]
    return RequestRecord(
        id=request_id,
        time=clf_time(match["time"].decode("ascii", "replace")),
        c_ip=canonical_ip(clean_text(match["ip"])),
        cs_method=method,
        cs_uri_stem=stem,
        cs_uri_query=query,
        cs_user_agent=None if agent is None else text_or_none(unescape(agent)),
        cs_referer=None if referer is None else text_or_none(unescape(referer)),
        sc_status=_status(match["status"].decode()),
        cs_version=version,
        request_line=line,
    )


def w3c_fields(header: bytes) -> list[str]:
    """The field names of a ``#Fields:`` header line, lower-cased."""
    return [name.lower() for name in clean_text(header[len(b"#Fields:") :]).split()]


def parse_w3c(raw: bytes, request_id: str, fields: Sequence[str]) -> RequestRecord:
    """One data line of a W3C extended log, given the names of its ``#Fields`` header."""
    values = clean_text(raw).split(" ")
    if len(values) != len(fields):
        raise Malformed(f"{len(values)} values for {len(fields)} fields")
    row = {name: text_or_none(value) for name, value in zip(fields, values, strict=True)}
    agent = row.get("cs(user-agent)") or row.get("cs-user-agent")
    stem, query = row.get("cs-uri-stem"), row.get("cs-uri-query")
    method, version = row.get("cs-method"), row.get("cs-version")
    date, clock = row.get("date"), row.get("time")
    when = iso_time(f"{date}T{clock}") if date and clock else None
    return RequestRecord(
        id=request_id,
        time=when,
        c_ip=canonical_ip(row.get("c-ip")),
        cs_method=method,
        cs_uri_stem=stem,
        cs_uri_query=query,
        cs_user_agent=None if agent is None else agent.replace("+", " "),  # IIS writes ' ' as '+'
        cs_referer=row.get("cs(referer)") or row.get("cs-referer"),
        sc_status=_status(row.get("sc-status")),
        cs_host=row.get("cs(host)") or row.get("cs-host"),
        cs_version=version,
        request_line=request_line_of(method, stem, query, version),
    )


# The JSON-lines mapping: record field -> keys tried in order (the first whose value is not null
# wins); ``jsonl`` reads the same tables.
JSON_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "c_ip": ("c-ip", "c_ip", "src_ip"),
    "cs_method": ("cs-method", "cs_method"),
    "cs_uri_stem": ("cs-uri-stem", "cs_uri_stem", "c-uri-stem"),
    "cs_uri_query": ("cs-uri-query", "cs_uri_query", "c-uri-query"),
    "cs_user_agent": ("cs-user-agent", "cs_user_agent", "c-useragent", "cs(user-agent)"),
    "cs_referer": ("cs-referer", "cs_referer", "cs-referrer", "cs(referer)"),
    "cs_host": ("cs-host", "cs_host", "cs(host)"),
    "cs_version": ("cs-version", "cs_version"),
    "request_line": ("request", "request_line", "request-line"),
}
JSON_ID_KEYS: Final = ("id", "c-request-id")
JSON_TARGET_KEYS: Final = ("cs-uri", "c-uri", "cs_uri")  # the whole target: stem and query
# Time and status: the first key's value when the key is present (even null), else the second's.
JSON_TIME_KEYS: Final = ("time", "timestamp")
JSON_STATUS_KEYS: Final = ("sc-status", "sc_status")


def _first(record: dict[str, Any], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is not None:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise Malformed(f"{key} is a {type(value).__name__}, not text")
            return text_or_none(clean_text(str(value)))
    return None


def parse_json(raw: bytes, default_id: str) -> RequestRecord:
    """One JSON-lines record (Sigma field names as keys)."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise Malformed(f"invalid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise Malformed("JSON value is not an object")
    record = {str(key).lower(): value for key, value in document.items()}
    values = {name: _first(record, keys) for name, keys in JSON_KEYS.items()}
    request_id = _first(record, JSON_ID_KEYS) or default_id
    if len(request_id) > ID_CHARS_MAX:
        raise Malformed(f"id longer than {ID_CHARS_MAX} characters")
    target = _first(record, JSON_TARGET_KEYS)
    if target is not None and values["cs_uri_stem"] is None:
        values["cs_uri_stem"], values["cs_uri_query"] = split_target(target)
    parsed = split_request(values["request_line"])
    for name, part in zip(("cs_method", "cs_uri_stem", "cs_uri_query", "cs_version"), parsed, strict=True):
        if values[name] is None and part is not None:
            values[name] = part
    if values["request_line"] is None:
        values["request_line"] = request_line_of(
            values["cs_method"], values["cs_uri_stem"], values["cs_uri_query"], values["cs_version"]
        )
    return RequestRecord(
        id=request_id,
        time=iso_time(record.get(JSON_TIME_KEYS[0], record.get(JSON_TIME_KEYS[1]))),
        sc_status=_status(record.get(JSON_STATUS_KEYS[0], record.get(JSON_STATUS_KEYS[1]))),
        **{name: (canonical_ip(value) if name == "c_ip" else value) for name, value in values.items()},
    )


def probe(path: Path, head: list[tuple[int, bytes | None]]) -> LogFormat:
    """The format of a file from its first lines, or :class:`TrafficFormatInvalid`."""
    lines = [(number, line) for number, line in head if line]
    if not lines:
        raise TrafficFormatInvalid("empty file: no log lines", path=str(path))
    if any(line is not None and b"\0" in line for _, line in head):
        raise TrafficFormatInvalid("binary data (NUL bytes) in the first lines", path=str(path))
    first = lines[0][1] or b""
    if first.startswith(b"#") and any(line.startswith(b"#Fields:") for _, line in lines if line):
        return "w3c"
    data = [line for _, line in lines if line and not line.startswith(b"#")]
    if first.lstrip().startswith(b"{") and _parses(parse_json, data):
        return "jsonl"
    if _parses(parse_combined, data):
        return "combined"
    raise TrafficFormatInvalid(
        f"none of the first {len(head)} lines is a combined, W3C or JSON-lines request",
        path=str(path),
        line=lines[0][0],
    )


def _parses(parser: Callable[[bytes, str], RequestRecord], lines: list[bytes]) -> bool:
    for line in lines:
        try:
            parser(line, "probe")
        except Malformed:
            continue
        return True
    return False


def parse_line(kind: LogFormat, line: bytes, request_id: str, fields: list[str] | None) -> RequestRecord:
    if kind == "jsonl":
        return parse_json(line, request_id)
    if kind == "combined":
        return parse_combined(line, request_id)
    if fields is None:
        raise Malformed("data line before any #Fields header")
    return parse_w3c(line, request_id, fields)


def read_log(path: Path, report: IngestReport, *, id_prefix: str) -> Iterator[RequestRecord]:
    """The requests of one log file; problems go to ``report``."""
    try:
        yield from _read_log(path, report, id_prefix=id_prefix)
    except (OSError, EOFError, zlib.error) as exc:
        raise TrafficFormatInvalid(f"unreadable: {exc}", path=str(path)) from exc


def _read_log(path: Path, report: IngestReport, *, id_prefix: str) -> Iterator[RequestRecord]:
    with open_log(path) as stream:
        lines = _lines(stream)
        head = [pair for _, pair in zip(range(PROBE_LINES), lines, strict=False)]
        kind = probe(path, head)
        report.formats[str(path)] = kind
        fields: list[str] | None = None
        for number, line in (*head, *lines):
            if line is None:
                report.reject(LineProblem(str(path), number, f"longer than {LINE_BYTES_MAX} bytes", ""))
                continue
            if not line.strip():
                continue
            if kind == "w3c" and line.startswith(b"#"):
                if line.startswith(b"#Fields:"):
                    fields = w3c_fields(line)
                continue
            try:
                yield parse_line(kind, line, f"{id_prefix}{number}", fields)
            except Malformed as exc:
                text = clean_text(line[:EXAMPLE_CHARS_MAX])
                report.reject(LineProblem(str(path), number, str(exc), text))
