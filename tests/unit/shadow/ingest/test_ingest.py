"""Traffic logs to Parquet: formats, ids, malformed lines, bounded probing, atomic output."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from feint.shadow.errors import TrafficFormatInvalid
from feint.shadow.ingest import IngestProgress, ingest
from feint.shadow.ingest.dataset import read_records
from feint.shadow.ingest.reference import EXAMPLES_MAX, LINE_BYTES_MAX, PROBE_LINES, parse_combined, parse_json
from feint.shadow.record import RequestRecord

pytestmark = pytest.mark.unit

NGINX = (
    '203.0.113.9 - alice [10/Oct/2023:13:55:36 -0700] "GET /search?q=a\\x22b HTTP/1.1" 200 2326 '
    '"https://example.com/" "Mozilla/5.0 (X11)" "-"'
)
APACHE = '2001:DB8::1 - - [10/Oct/2023:13:55:37 +0000] "POST /login HTTP/1.0" 302 - "-" "curl \\"8\\""'
COMMON = '198.51.100.2 - - [10/Oct/2023:13:55:38 +0000] "HEAD / HTTP/1.1" 404 0'
W3C = """#Software: Microsoft Internet Information Services 10.0
#Version: 1.0
#Date: 2024-03-01 00:00:00
#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) cs(Referer) sc-status cs-host
2024-03-01 00:00:01 10.0.0.1 GET /default.aspx id=3 443 - 192.0.2.1 Mozilla/5.0+(Windows+NT+10.0) - 200 shop.example
2024-03-01 00:00:02 10.0.0.1 GET /short
#Fields: date time c-ip cs-method cs-uri-stem sc-status
2024-03-01 00:00:03 192.0.2.2 DELETE /api/x 403
"""


def _ingest(tmp_path: Path, *files: tuple[str, bytes]) -> tuple[list[RequestRecord], object]:
    paths = []
    for name, content in files:
        path = tmp_path / name
        path.write_bytes(content)
        paths.append(path)
    out = tmp_path / "out.parquet"
    report = ingest(paths, out)
    return list(read_records(out)), report


def test_combined_and_common_lines(tmp_path: Path) -> None:
    """nginx and Apache escapes are undone; common lines have no referer or agent."""
    records, report = _ingest(tmp_path, ("access.log", "\n".join([NGINX, APACHE, COMMON]).encode() + b"\n"))
    first, second, third = records
    assert (first.id, first.c_ip, first.cs_method, first.cs_uri_stem, first.cs_uri_query) == (
        "1", "203.0.113.9", "GET", "/search", 'q=a"b',
    )  # fmt: skip
    assert (first.sc_status, first.cs_referer, first.cs_user_agent, first.cs_version) == (
        200, "https://example.com/", "Mozilla/5.0 (X11)", "HTTP/1.1",
    )  # fmt: skip
    assert first.request_line == 'GET /search?q=a"b HTTP/1.1'
    assert first.time == datetime(2023, 10, 10, 20, 55, 36, tzinfo=UTC)
    assert (second.c_ip, second.cs_user_agent, second.cs_referer) == ("2001:db8::1", 'curl "8"', None)
    assert (third.cs_method, third.sc_status, third.cs_user_agent) == ("HEAD", 404, None)
    assert report.formats == {str(tmp_path / "access.log"): "combined"}  # type: ignore[attr-defined]


def test_garbage_request_lines_are_kept(tmp_path: Path) -> None:
    """A request line that is not METHOD TARGET VERSION keeps its raw text, parts missing."""
    line = '192.0.2.9 - - [10/Oct/2023:13:55:36 +0000] "\\x16\\x03\\x01\\x00" 400 150 "-" "-"'
    records, _ = _ingest(tmp_path, ("a.log", f"{NGINX}\n{line}\n".encode()))
    assert records[1].cs_method is None and records[1].cs_uri_stem is None
    assert records[1].request_line == "\x16\x03\x01\x00"
    assert records[1].sc_status == 400


def test_w3c_extended(tmp_path: Path) -> None:
    """#Fields drives the columns, may change mid-file, '+' in agents is a space."""
    records, report = _ingest(tmp_path, ("u_ex.log", W3C.encode()))
    assert [r.id for r in records] == ["5", "8"]
    first, second = records
    assert (first.cs_uri_stem, first.cs_uri_query, first.cs_user_agent, first.cs_host) == (
        "/default.aspx", "id=3", "Mozilla/5.0 (Windows NT 10.0)", "shop.example",
    )  # fmt: skip
    assert first.request_line == "GET /default.aspx?id=3"
    assert first.time == datetime(2024, 3, 1, 0, 0, 1, tzinfo=UTC)
    assert (second.cs_method, second.sc_status, second.cs_user_agent) == ("DELETE", 403, None)
    assert report.malformed == 1  # type: ignore[attr-defined]
    assert report.examples[0].line == 6  # type: ignore[attr-defined]


def test_json_lines(tmp_path: Path) -> None:
    """Sigma field names as keys, ids from the record or the line, targets and lines split."""
    lines = [
        {"id": "req-1", "cs-method": "GET", "cs-uri-stem": "/a", "cs-uri-query": "x=1", "c-useragent": "UA",
         "sc-status": "201", "time": "2024-01-02T03:04:05Z", "c-ip": "::FFFF:1.2.3.4"},
        {"cs-uri": "/b?y=2", "cs-method": "POST", "sc-status": 500, "time": 1700000000},
        {"request": "PUT /c?z HTTP/2.0", "cs-host": "h", "cs_referer": "r"},
        {"id": 7, "cs-method": "GET", "cs-uri-stem": "/d"},
    ]  # fmt: skip
    content = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    records, _ = _ingest(tmp_path, ("d.jsonl", content.encode()))
    assert [r.id for r in records] == ["req-1", "2", "3", "7"]
    assert (records[0].sc_status, records[0].cs_user_agent, records[0].c_ip) == (201, "UA", "1.2.3.4")
    assert records[0].time == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (records[1].cs_uri_stem, records[1].cs_uri_query, records[1].request_line) == ("/b", "y=2", "POST /b?y=2")
    assert records[1].time is not None
    assert (records[2].cs_method, records[2].cs_uri_stem, records[2].cs_uri_query, records[2].cs_version) == (
        "PUT", "/c", "z", "HTTP/2.0",
    )  # fmt: skip
    assert (records[2].cs_host, records[2].cs_referer) == ("h", "r")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"sc-status": "abc"}', "not a number"),
        (b'{"sc-status": true}', "not a number"),
        (b'{"sc-status": 99999999999}', "out of range"),
        (b'{"cs-method": {"a": 1}}', "not text"),
        (b'{"id": "' + b"x" * 300 + b'"}', "id longer"),
    ],
)
def test_json_lines_problems(line: bytes, reason: str) -> None:
    """Each malformed JSON record is refused with its reason."""
    with pytest.raises(ValueError, match=reason):
        parse_json(line, "1")


def test_several_files_and_gzip(tmp_path: Path) -> None:
    """Ids become '<file name>:<line>' across files; gzip is recognised by its magic bytes."""
    records, _ = _ingest(
        tmp_path, ("a.log", f"{NGINX}\n".encode()), ("b.log.gz", gzip.compress(f"{COMMON}\n{COMMON}\n".encode()))
    )
    assert [r.id for r in records] == ["a.log:1", "b.log.gz:1", "b.log.gz:2"]


def test_malformed_lines_are_counted_with_examples(tmp_path: Path) -> None:
    """Lines that do not parse are counted; the first few are kept with their line numbers."""
    lines = [NGINX] + ["garbage"] * (EXAMPLES_MAX + 3) + ["x" * (LINE_BYTES_MAX + 10), NGINX]
    records, report = _ingest(tmp_path, ("a.log", ("\n".join(lines) + "\n").encode()))
    assert len(records) == 2
    assert report.malformed == EXAMPLES_MAX + 4  # type: ignore[attr-defined]
    assert [e.line for e in report.examples] == list(range(2, 2 + EXAMPLES_MAX))  # type: ignore[attr-defined]
    assert report.to_dict()["examples"][0]["reason"] == "not a combined/common log line"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"\n\n", "empty file"),
        (b"\x00\x01binary\x00" * 50, "binary"),
        (b"\n".join([b"hello world, this is a letter"] * (PROBE_LINES + 50)), "none of the first"),
        (b'{"just": "json"}\n' * 3 + NGINX.encode(), None),
    ],
)
def test_files_that_are_not_logs_fail_early(tmp_path: Path, content: bytes, reason: str | None) -> None:
    """Recognition reads only the first lines; a failed import leaves no output file."""
    path = tmp_path / "x.log"
    path.write_bytes(content)
    out = tmp_path / "out.parquet"
    if reason is None:
        assert ingest([path], out).rows == 3
        return
    with pytest.raises(TrafficFormatInvalid, match=reason):
        ingest([path], out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]


def test_corrupt_gzip_and_empty_arguments(tmp_path: Path) -> None:
    """A truncated gzip stream and an empty file list are clear errors."""
    path = tmp_path / "a.log.gz"
    path.write_bytes(gzip.compress(f"{NGINX}\n".encode() * 1000)[:200])
    with pytest.raises(TrafficFormatInvalid):
        ingest([path], tmp_path / "out.parquet")
    with pytest.raises(TrafficFormatInvalid, match="no traffic"):
        ingest([], tmp_path / "out.parquet")


def test_progress_and_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are read in blocks; progress counts lines, rows and bytes up to the whole file."""
    monkeypatch.setattr("feint.shadow.ingest.pipeline.BLOCK_BYTES", len(NGINX) * 2 + 5)
    monkeypatch.setattr("feint.shadow.ingest.pipeline._Meter.INTERVAL_SECONDS", 0.0)
    path = tmp_path / "a.log"
    path.write_text(f"{NGINX}\n" * 5)
    seen: list[IngestProgress] = []
    report = ingest([path], tmp_path / "out.parquet", on_progress=seen.append)
    assert report.rows == 5
    assert [progress.rows for progress in seen] == [2, 4, 5, 5]
    assert seen[-1].lines == 5
    assert seen[-1].bytes_done == seen[-1].bytes_total == path.stat().st_size
    assert seen[-1].lines_per_second > 0


def test_clf_time_and_status_edge_cases() -> None:
    """An unparseable time is missing; '-' status is missing; odd IPs are kept as text."""
    line = b'not-an-ip - - [yesterday] "GET / HTTP/1.1" - 0 "-" "-"'
    parsed = parse_combined(line, "1")
    assert (parsed.time, parsed.sc_status, parsed.c_ip) == (None, None, "not-an-ip")
