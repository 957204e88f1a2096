"""Vectorised and line-by-line ingest give identical records and problems on hostile generated logs."""

from __future__ import annotations

import gzip
import json
import random
import tempfile
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feint.shadow.ingest.blocks import read_blocks
from feint.shadow.ingest.jsonl import KEYS, parse_json_block
from feint.shadow.ingest.reference import LINE_BYTES_MAX, PROBE_LINES
from tests.unit.shadow.ingest.differential import assert_same

pytestmark = pytest.mark.unit

# Pieces of quoted fields: escapes nginx and Apache write, broken escapes, stray quotes, bytes that
# are not UTF-8, controls, spaces, the request-line separators.
QUOTED_PIECES = [
    b"a", b"/", b"?", b"=", b" ", b"  ", b"GET", b"HTTP/1.1", b"\\\"", b"\\\\", b"\\x22", b"\\x41", b"\\xC3\\xA9",
    b"\\xff", b"\\xZZ", b"\\", b"\\x0A", b"\\x0a", b"\"", b"\xc3\xa9", b"\xff", b"\xe2\x82", b"\x00", b"\t", b"\x0b",
    b"\r", b"-", b"\xf0\x9f\x98\x80", b"%00", b"'", b"\\u00e9", b"]",
]  # fmt: skip
# Addresses and user names: valid and odd ones, and characters that sit next to the cuts of the
# vectorised reading of clean lines (quotes, brackets, tabs, vertical tabs).
IPS = [b"203.0.113.9", b"2001:DB8::1", b"2001:db8:0:0:0:0:0:1", b"::FFFF:1.2.3.4", b"-", b"01.2.3.4", b"fe80::1%eth0",
       b"x", b"1.2.3.4.5", b"::", b"\xff\xfe", b"\xc3\xa9", b"[::1]", b'a"b', b"1.2.3.4]", b"[", b"\x0b1.2.3.4"]  # fmt: skip
USERS = [b"-", b"alice", b'"', b"[x", b"]", b"a\tb", b"\x0b", b"a b", b""]
MONTHS = [b"Jan", b"Feb", b"Oct", b"Dec", b"oct", b"OCT", b"Foo", b"Sept"]


@st.composite
def quoted(draw: st.DrawFn) -> bytes:
    return b"".join(draw(st.lists(st.sampled_from(QUOTED_PIECES), max_size=8)))


@st.composite
def clf_time(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.sampled_from([b"", b"-", b"yesterday", b"10/Oct/2023:13:55:36", b"\xff", b"10/Oct/2023:13:55:36 Z"])
        )
    day = draw(st.sampled_from(["01", "1", "28", "29", "30", "31", "00", "32"]))
    month = draw(st.sampled_from(MONTHS)).decode("latin-1")
    year = draw(st.sampled_from(["2023", "2024", "1900", "0001", "1000", "9998", "9999", "0000", "999"]))
    hour, minute, second = (draw(st.sampled_from(["00", "09", "23", "24", "7", "59", "60", "61"])) for _ in range(3))
    zone = draw(st.sampled_from(["+0000", "-0700", "+2359", "-2359", "+2400", "+0160", "-0030", "+00:00", "Z"]))
    space = draw(st.sampled_from([" ", "  ", "\t"]))
    return f"{day}/{month}/{year}:{hour}:{minute}:{second}{space}{zone}".encode("latin-1")


@st.composite
def combined_line(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.sampled_from([b"", b"   ", b"\t\x0c", b"\r", b"# comment", b"garbage"]))
    if kind == 1:
        return draw(st.binary(max_size=60)).replace(b"\n", b"")
    ip = draw(st.sampled_from(IPS))
    request = draw(quoted())
    if draw(st.booleans()):
        method = draw(st.sampled_from([b"GET", b"POST", b"get", b"M-SEARCH", b"G@T", b"", b"\\x47ET"]))
        version = draw(st.sampled_from([b"", b" HTTP/1.1", b" HTTP/2.0 x", b" "]))
        request = method + b" /" + request + version
    status = draw(st.sampled_from([b"200", b"-", b"99", b"1000", b"abc", b"0"]))
    size = draw(st.sampled_from([b"123", b"-", b"", b"x"]))
    line = b"%s - %s [%s] \"%s\" %s %s" % (ip, draw(st.sampled_from(USERS)), draw(clf_time()), request,
                                          status, size)  # fmt: skip
    if draw(st.booleans()):
        line += b' "%s" "%s"' % (draw(quoted()), draw(quoted()))
    return line + draw(st.sampled_from([b"", b"", b' "-"', b" extra", b"\r", b"\r\r", b"\x0b", b" \\", b'"', b" \"x",
                                        b"\r\n\r", b"\t"]))  # fmt: skip


W3C_FIELDS = ["date", "time", "c-ip", "cs-method", "cs-uri-stem", "cs-uri-query", "sc-status", "cs(User-Agent)",
              "cs-user-agent", "cs(Referer)", "cs-referer", "cs-host", "cs(Host)", "cs-version", "s-port", "time"]  # fmt: skip
W3C_VALUES = ["-", "", "+", "a+b", "2024-03-01", "2024-02-30", "0000-01-01", "2024-3-1", "00:00:01", "24:00:00",
              "23:59:59.5", "1", "+5", "1_0", "\u0663", "200", "99999999999", "2001:DB8::1", "1.2.3.4", "GET", "/x?y",
              "\u00e9", "Mozilla/5.0+(X11)", "\t"]  # fmt: skip


@st.composite
def w3c_log(draw: st.DrawFn) -> bytes:
    lines: list[bytes] = []
    fields: list[str] = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.integers(0, 9))
        if kind == 0 or (not fields and draw(st.booleans())):
            fields = draw(st.lists(st.sampled_from(W3C_FIELDS), min_size=1, max_size=10))
            lines.append(("#Fields: " + " ".join(fields)).encode())
        elif kind == 1:
            lines.append(draw(st.sampled_from([b"#Software: IIS", b"", b"  ", b"\xff\xfe", b"#Fields:"])))
        else:
            count = len(fields) + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
            values = [draw(st.sampled_from(W3C_VALUES)) for _ in range(max(count, 0))]
            lines.append(" ".join(values).encode() + draw(st.sampled_from([b"", b"\r"])))
    return b"#Software: Microsoft Internet Information Services 10.0\n" + b"\n".join(lines) + b"\n"


PROBE = b'192.0.2.1 - - [10/Oct/2023:13:55:36 +0000] "GET / HTTP/1.1" 200 1 "-" "-"'


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    lines=st.lists(combined_line(), min_size=1, max_size=40),
    compress=st.booleans(),
    terminated=st.booleans(),
    probed=st.booleans(),
)
def test_combined_and_common_lines_agree(lines: list[bytes], compress: bool, terminated: bool, probed: bool) -> None:
    """Every generated combined/common line, hostile or not, gives the same record or problem."""
    head = [PROBE] * (PROBE_LINES if probed else 1)  # hostile lines inside and after the probed head
    content = b"\n".join([*head, *lines]) + (b"\n" if terminated else b"")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "access.log"
        path.write_bytes(gzip.compress(content) if compress else content)
        assert_same([path], Path(scratch) / "out.parquet")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=w3c_log())
def test_w3c_lines_agree(content: bytes) -> None:
    """Headers changing mid-file, missing and extra values, odd statuses and times: same records."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "u_ex.log"
        path.write_bytes(content)
        assert_same([path], Path(scratch) / "out.parquet")


def _seeded_lines(seed: int, count: int) -> list[bytes]:
    """Many hostile lines from the strategies, drawn reproducibly without hypothesis's shrinking."""
    rng = random.Random(seed)
    return [_draw(rng) for _ in range(count)]


def _draw(rng: random.Random) -> bytes:
    quoted_ = lambda: b"".join(rng.choice(QUOTED_PIECES) for _ in range(rng.randrange(9)))  # noqa: E731
    time_ = (f"{rng.choice(['01', '29', '31', '1'])}/{rng.choice(MONTHS).decode()}/{rng.choice(['2024', '9999', '1000'])}:"
             f"{rng.choice(['00', '23', '24'])}:59:{rng.choice(['00', '60'])} {rng.choice(['+0000', '-2359', '+0130'])}")  # fmt: skip
    line = b'%s - %s [%s] "%s %s HTTP/1.1" %s 1' % (rng.choice(IPS), rng.choice(USERS[:5]), time_.encode(),
                                                   rng.choice([b"GET", b"g t"]), quoted_(),
                                                   rng.choice([b"200", b"-", b"x"]))  # fmt: skip
    if rng.random() < 0.8:
        line += b' "%s" "%s"' % (quoted_(), quoted_())
    return line


def test_large_hostile_file_in_many_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 hostile lines, a huge line and blank lines, read in small blocks: identical."""
    monkeypatch.setattr("feint.shadow.ingest.pipeline.BLOCK_BYTES", 200_000)
    lines = [PROBE] * PROBE_LINES + _seeded_lines(7, 20_000)
    lines[5_000:5_000] = [b"x" * (LINE_BYTES_MAX + 1), b"", b"y" * LINE_BYTES_MAX, b"z" * (3 * 200_000)]
    path = tmp_path / "big.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records = assert_same([path], tmp_path / "out.parquet")
    assert len(records) > 10_000


def test_json_lines_and_several_files_agree(tmp_path: Path) -> None:
    """JSON lines and a dataset of several files, gzip among them."""
    rows = [{"id": "a", "cs-method": "GET", "cs-uri": "/x?y=1"}, {"request": "POST /z HTTP/1.1", "time": 5},
            {"sc-status": "abc"}, {"c-ip": "2001:DB8::2", "CS-HOST": "h"}]  # fmt: skip
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (tmp_path / "access.log").write_bytes(PROBE + b"\n" + _draw(random.Random(1)) + b"\n")
    (tmp_path / "access.log.1.gz").write_bytes(gzip.compress(b"\n".join([PROBE] * PROBE_LINES + _seeded_lines(2, 50))))
    paths = [tmp_path / "events.jsonl", tmp_path / "access.log", tmp_path / "access.log.1.gz"]
    records = assert_same(paths, tmp_path / "out.parquet")
    assert records[0].id == "a" and records[3].id == "access.log:1"


# JSON lines: keys the mapping reads (and their case variants, escapes and duplicates), other keys,
# values of every JSON type, hostile strings, broken syntax Python refuses and DuckDB would accept.
JSON_KEY_NAMES = [*KEYS, "C-IP", "Time", "SC-STATUS", "Request", "cs-Host", "c\\u002dip", "ti\\u006de", "other", "",
                  "c-ip ", "\u00e9", "c-\u0130p", "request\\n", "\u212aey"]  # fmt: skip
JSON_STRINGS = [
    "", "-", "a", "/x?y=1", "/?", "?q", "GET / HTTP/1.1", "GET\\n /a HTTP/1.1", "get  /x", "G@T /x HTTP/1.1",
    "POST /z HTTP/1.1 x", "\\\"", "\\\\", "\\/", "\\u00e9", "\u00e9", "\\ud83d\\ude00", "\U0001f600", "\\ud800",
    "\\udc00x", "\\ud83d\\ud83d", "\\u0000", "\\u001f", "\t", "\x7f", "\\q", "\\u12", "2001:DB8::1", "::FFFF:1.2.3.4",
    "1.2.3.4", "200", " 200", "+5", "1_0", "\u0663", "-0", "007", "99999999999", "2147483648", "-2147483648",
    "2024-03-01T00:00:01Z", "2024-03-01 00:00:01.5", "2024-03-01T00:00:01.1234567", "2024-03-01T00:00:01+05:30",
    "2024-02-30T00:00:00", "2024-03-01", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
    "2024-03-01T24:00:00", "2024-03-01T00:00:01+24:00", "2024-03-01T00:00:01z", "20240301T000001", "x" * 300,
]  # fmt: skip
JSON_CLEAN_STRINGS = [text for text in JSON_STRINGS
                      if text not in ("\t", "\\q", "\\u12", "\\ud800", "\\udc00x", "\\ud83d\\ud83d")]  # fmt: skip
JSON_OTHER_VALUES = ["null", "true", "false", "0", "-0", "200", "404.0", "1e5", "1E400", "12345678901234567890123",
                     "2147483648", "-1", "1700000000", "99999999999", "1.5", "NaN", "Infinity", "-Infinity", "[]",
                     "[1, \"a\"]", "{}", "{\"a\": {\"b\": [1]}}", "[[[1]]]", "{\"a\": [{\"b\": {\"c\": 1}}]}", "01",
                     "+1", ".5", "'a'", "tru", "9" * 4301]  # fmt: skip
JSON_BYTES = [b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xef\xbb\xbf"]


@st.composite
def json_value(draw: st.DrawFn, *, hostile: bool) -> bytes:
    if draw(st.integers(0, 3 if hostile else 9)) == 0:
        return draw(
            st.sampled_from(JSON_OTHER_VALUES if hostile else ["null", "0", "-0", "200", "1700000000"])
        ).encode()
    pieces = draw(st.lists(st.sampled_from(JSON_STRINGS if hostile else JSON_CLEAN_STRINGS), max_size=3))
    text = "".join(pieces).encode("utf-8", "surrogatepass")
    if hostile and draw(st.integers(0, 15)) == 0:
        text += draw(st.sampled_from(JSON_BYTES))
    return b'"' + text + b'"'


@st.composite
def json_line(draw: st.DrawFn) -> bytes:
    """Half the lines near what a logger writes (mapped keys once each, strings), half hostile throughout."""
    kind = draw(st.integers(0, 24))
    if kind == 0:
        return draw(st.sampled_from([b"", b"  ", b"[1]", b'"x"', b"null", b"{", b"{}}", b"{} {}", b"\xef\xbb\xbf{}"]))
    if kind == 1:
        return draw(st.binary(max_size=40)).replace(b"\n", b"")
    hostile = draw(st.booleans())
    names = JSON_KEY_NAMES if hostile else [*KEYS, "other", "explanation"]
    keys = draw(st.lists(st.sampled_from(names), max_size=8, unique=not hostile))
    members = []
    for key in keys:
        space = draw(st.sampled_from([b"", b"", b" ", b"\t", b"\r", b"\x0b"] if hostile else [b"", b" "]))
        members.append(b'"%s"%s:%s%s' % (key.encode(), space, space, draw(json_value(hostile=hostile))))
    endings = [b"}", b"}", b"}", b",}", b"} ", b"}\r", b"} x", b"}\x00", b"]"] if hostile else [b"}"]
    line = b"{" + b",".join(members) + draw(st.sampled_from(endings))
    if draw(st.integers(0, 30)) == 0:
        line = b'{"pad": "' + b"p" * draw(st.sampled_from([4070, 4100, 70_000])) + b'", ' + line[1:]
    return draw(st.sampled_from([b"", b"", b" ", b"\t"])) + line


JSON_PROBE = b'{"c-ip": "192.0.2.1", "request": "GET / HTTP/1.1", "sc-status": 200}'


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=st.lists(json_line(), min_size=1, max_size=40), compress=st.booleans(), probed=st.booleans())
def test_json_lines_agree(lines: list[bytes], compress: bool, probed: bool) -> None:
    """Every generated JSON line, hostile or not, gives the same record or problem on both paths."""
    head = [JSON_PROBE] * (PROBE_LINES if probed else 1)
    content = b"\n".join([*head, *lines]) + b"\n"
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "events.jsonl"
        path.write_bytes(gzip.compress(content) if compress else content)
        assert_same([path], Path(scratch) / "out.parquet")


def test_json_lines_as_the_gateway_writes_them(tmp_path: Path) -> None:
    """Decision-log records (nested explanation, ``\\u`` escapes, surrogate pairs) are read by the fast path."""
    rows = [
        {"id": f"d{index}", "time": f"2026-12-02T14:{index % 60:02d}:00.{index:06d}+00:00",
         "c-ip": ["203.0.113.9", "2001:DB8::1", None][index % 3], "cs-method": "GET",
         "cs-uri-stem": "/caf\u00e9" if index % 2 else "/x", "cs-uri-query": None if index % 5 else "q=\U0001f600",
         "cs-user-agent": 'Mozilla "5.0" \\', "sc-status": [200, None, "404"][index % 3], "request": None,
         "explanation": [{"signal": "rule", "points": 4.0, "detail": "x"}], "rules": ["a"], "canary": False}
        for index in range(300)
    ]  # fmt: skip
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))
    records = assert_same([path], tmp_path / "out.parquet")
    assert len(records) == 300
    block = next(read_blocks(path))
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'").fetchall()
    assert parse_json_block(connection, block, prefix="").refused == []


JSON_EDGE_LINES = [
    b'{"request": "GET\\n /a?b HTTP/1.1"}',  # re.match("^token$") takes "GET\n"
    b'{"request": "GET\\n\\n /a HTTP/1.1"}',
    b'{"c-ip": -0, "cs-method": 12, "id": 123456789012345678901234, "cs-host": 1.0, "cs-version": 1e2}',
    b'{"other": ' + b"9" * 4301 + b', "c-ip": "1.2.3.4"}',  # Python refuses more than 4,300 digits
    b'{"other": ' + b"9" * 4300 + b', "c-ip": "1.2.3.4"}',
    b'{"c-ip": "a", "c-ip": "b"}', b'{"C-IP": "a", "c-ip": "b"}', b'{"c-ip": "b", "C-IP": "a"}',
    b'{"c-ip": "a", "x": {"c-ip": "b"}}', b'{"c\\u002dip": "a", "c-ip": "b"}', b'{"c-ip": "a", "c-ip": null}',
    b'{"time": null, "timestamp": "2024-03-01T00:00:00Z"}', b'{"timestamp": "2024-03-01T00:00:00Z"}',
    b'{"time": true}', b'{"time": [1]}', b'{"time": 1.5}', b'{"time": -1}', b'{"time": 99999999999}',
    b'{"time": "2024-03-01T00:00:00.5"}', b'{"time": "2024-03-01T00:00:00.123456+05:30"}', b'{"time": ""}',
    b'{"time": "2024-03-01T00:00:00z"}', b'{"time": "0999-03-01T00:00:00+01:00"}', b'{"time": "2024-02-29 12:00:00"}',
    b'{"sc-status": null, "sc_status": 200}', b'{"sc_status": "404"}', b'{"sc-status": 2147483648}',
    b'{"sc-status": -2147483648}', b'{"sc-status": "-"}', b'{"sc-status": ""}', b'{"sc-status": " 200"}',
    b'{"sc-status": true}', b'{"sc-status": 200.0}', b'{"sc-status": "0200"}',
    b'{"cs-uri-stem": "-", "cs-uri-query": "q", "cs-uri": "/t?u"}', b'{"cs-uri": "?"}', b'{"cs-uri": "/a?"}',
    b'{"cs-uri-stem": "/s", "cs-uri": true}', b'{"cs-method": "GET", "cs-uri-query": "q"}',
    b'{"request": "GET /a?b HTTP/1.1", "cs-method": "POST", "cs-uri-stem": ""}', b'{"request": "-"}',
    b'{"id": ""}', b'{"id": "-", "c-request-id": "r"}', b'{"id": "' + b"i" * 257 + b'"}', b'{"id": "' + b"i" * 256 + b'"}',
    b'{"cs-user-agent": "\\u0000\\u00e9\\ud83d\\ude00\\/\\"", "cs-referer": "\\ud800"}', b'{"a": NaN}', b'{"a": 1,}',
    b'{"cs-host": "h"}\r', b' {"cs-host": "h"} ', b'{"cs-host": "\x7f\xc3\xa9"}', b'{"cs-host": "\xed\xa0\x80"}',
    b'{"a": {"b": {"c": {"d": 1}}}, "cs-host": "deep"}', b'{"a": [[[1]]], "cs-host": "deep"}', b"{}",
]  # fmt: skip


def test_json_edge_lines_agree(tmp_path: Path) -> None:
    """Hand-picked JSON lines at each rule of the fast path (keys, types, times, statuses, nesting): identical."""
    path = tmp_path / "edges.jsonl"
    path.write_bytes(b"\n".join([JSON_PROBE, *JSON_EDGE_LINES]) + b"\n")
    assert len(assert_same([path], tmp_path / "out.parquet")) > len(JSON_EDGE_LINES) // 2
