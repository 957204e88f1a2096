"""The shared corpus as logs: the vectorised ingest and the line-by-line parser give identical records.

The corpus holds requests (the OWASP CRS regression tests: real attack payloads, with quotes,
backslashes, control bytes and non-ASCII text) rather than log files; each request is written as
a web server would log it, in every format Feint reads, and both ingest paths read the files in
place of a log.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from feint.shadow.crs import load_crs
from feint.shadow.record import RequestRecord
from tests.conftest import shared_data
from tests.unit.shadow.ingest.differential import assert_same

pytestmark = pytest.mark.corpus

CRS_REQUESTS_MIN = 4_000
TIME = "10/Oct/2023:13:55:36 +0000"


@pytest.fixture(scope="module")
def requests() -> list[RequestRecord]:
    records = [request.record for request in load_crs(shared_data() / "crs-regression")]
    assert len(records) > CRS_REQUESTS_MIN
    return records


def nginx(text: str | None) -> str:
    """nginx's default escaping in ``log_format``: '"', '\\' and bytes outside 32-126 as \\xHH."""
    if not text:
        return "-"
    raw = text.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{byte:02X}" if byte in (0x22, 0x5C) or not 32 <= byte <= 126 else chr(byte) for byte in raw)


def apache(text: str | None) -> str:
    """Apache's escaping: '"' and '\\' with a backslash, other control bytes as \\xhh, UTF-8 as is."""
    if not text:
        return "-"
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def combined(records: list[RequestRecord], escape: object) -> bytes:
    lines = []
    for index, record in enumerate(records):
        field = escape if callable(escape) else (lambda value: value or "-")
        status = record.sc_status if record.sc_status is not None else 200
        lines.append(
            f'{record.c_ip or "-"} - - [{TIME}] "{field(record.request_line)}" {status} {index} '
            f'"{field(record.cs_referer)}" "{field(record.cs_user_agent)}"'
        )
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def w3c(records: list[RequestRecord]) -> bytes:
    """IIS: a space inside a value is written '+', an empty value '-'."""
    header = "#Software: Microsoft Internet Information Services 10.0\n#Fields: date time c-ip cs-method "
    header += "cs-uri-stem cs-uri-query sc-status cs(User-Agent) cs(Referer) cs-host cs-version\n"

    def value(text: str | int | None) -> str:
        return "-" if text in (None, "") else str(text).replace(" ", "+").replace("\n", "+")

    rows = []
    for record in records:
        parts = ("2024-03-01", "00:00:01", record.c_ip, record.cs_method, record.cs_uri_stem, record.cs_uri_query,
                 200, record.cs_user_agent, record.cs_referer, record.cs_host, record.cs_version)  # fmt: skip
        rows.append(" ".join(value(part) for part in parts))
    return (header + "\n".join(rows) + "\n").encode("utf-8", "surrogatepass")


def json_lines(records: list[RequestRecord]) -> bytes:
    rows = [
        {"c-ip": r.c_ip, "cs-method": r.cs_method, "cs-uri-stem": r.cs_uri_stem, "cs-uri-query": r.cs_uri_query,
         "cs-user-agent": r.cs_user_agent, "cs-referer": r.cs_referer, "cs-host": r.cs_host, "request": r.request_line,
         "time": "2024-03-01T00:00:01Z", "sc-status": 200}
        for r in records
    ]  # fmt: skip
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


@pytest.mark.parametrize("escape", ["nginx", "apache", "unescaped"])
def test_crs_requests_as_combined_logs(requests: list[RequestRecord], escape: str, tmp_path: Path) -> None:
    """Every CRS request, logged with nginx's or Apache's escaping or none: identical records."""
    escaper = {"nginx": nginx, "apache": apache, "unescaped": None}[escape]
    content = combined(requests, escaper)
    path = tmp_path / "access.log"
    path.write_bytes(content)
    records = assert_same([path], tmp_path / "out.parquet")
    if escape != "unescaped":
        assert len(records) == len(requests)
    packed = tmp_path / "access.log.1.gz"
    packed.write_bytes(gzip.compress(content))
    assert len(assert_same([path, packed], tmp_path / "both.parquet")) == 2 * len(records)


def test_crs_requests_as_w3c_and_json_lines(requests: list[RequestRecord], tmp_path: Path) -> None:
    """The same requests as an IIS W3C log and as JSON lines: identical records."""
    (tmp_path / "u_ex.log").write_bytes(w3c(requests))
    (tmp_path / "events.jsonl").write_bytes(json_lines(requests))
    assert len(assert_same([tmp_path / "u_ex.log"], tmp_path / "w3c.parquet")) > CRS_REQUESTS_MIN
    assert len(assert_same([tmp_path / "events.jsonl"], tmp_path / "json.parquet")) == len(requests)
