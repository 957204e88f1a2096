"""Labels CSV: header, malformed lines, duplicates and conflicts, gzip."""

from __future__ import annotations

import gzip
from pathlib import Path

import duckdb
import pytest

from feint.shadow import labels as labels_module
from feint.shadow.errors import LabelsInvalid
from feint.shadow.labels import LABEL_LINE_BYTES_MAX, load_labels

pytestmark = pytest.mark.unit


def _load(tmp_path: Path, content: bytes, name: str = "labels.csv") -> tuple[object, list[tuple[str, int]]]:
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "labels.parquet"
    report = load_labels(path, out)
    rows = duckdb.connect().execute(f"SELECT id, label FROM read_parquet('{out}') ORDER BY line").fetchall()
    return report, rows


def test_labels_with_every_kind_of_problem(tmp_path: Path) -> None:
    """Bad labels, empty ids, wrong column counts and conflicts are malformed, with line numbers."""
    content = b'\xef\xbb\xbfid,label\n1,1\n2,0\n3,x\n4,1\n4,0\n5,1\n5,1\n,1\n"6,a",1\n7\n\n8 , 0 \n'
    report, rows = _load(tmp_path, content)
    assert rows == [("1", 1), ("2", 0), ("5", 1), ("6,a", 1), ("8", 0)]
    summary = report.to_dict()  # type: ignore[attr-defined]
    assert (summary["labeled"], summary["malformed"], summary["duplicates"]) == (5, 5, 1)
    reasons = {(e["line"], e["reason"]) for e in summary["examples"]}
    assert (4, "label 'x' is not 0 or 1") in reasons
    assert (9, "empty id") in reasons
    assert (11, "1 columns, expected 2 (id,label)") in reasons
    assert (5, "id labelled 0 and 1") in reasons


def test_gzip_and_long_lines(tmp_path: Path) -> None:
    """Gzip files read like plain ones; an overlong line is malformed and skipped whole."""
    long_line = b"x" * (LABEL_LINE_BYTES_MAX + 100) + b",1\n"
    report, rows = _load(tmp_path, gzip.compress(b"id,label\n" + long_line + b"9,1\n"), "l.csv.gz")
    assert rows == [("9", 1)]
    assert report.malformed == 1  # type: ignore[attr-defined]
    assert "longer than" in report.examples[0].reason  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"request,verdict\n1,1\n", "first line"), (b"id,label\n1,maybe\n", "no usable label"), (b"", "first line")],
)
def test_unusable_files(tmp_path: Path, content: bytes, reason: str) -> None:
    """A wrong header or a file without one usable label is refused."""
    with pytest.raises(LabelsInvalid, match=reason):
        _load(tmp_path, content)


def test_clean_files_take_the_fast_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean file is read in one Arrow pass, with the same rows and lines as the exact reader."""
    content = b"id,label\n" + b"".join(f"id-{i},{i % 2}\r\n".encode() for i in range(1000)) + b'"x,y",1\n'
    _, exact = _load(tmp_path, content.replace(b"id-0,0", b"id-0,0\n"))  # a blank line: exact reader
    monkeypatch.setattr(labels_module, "_exact", lambda *args: pytest.fail("the exact reader ran"))
    report, fast = _load(tmp_path, content)
    assert fast == exact and len(fast) == 1001
    lines = (
        duckdb.connect()
        .execute(f"SELECT min(line), max(line) FROM read_parquet('{tmp_path / 'labels.parquet'}')")
        .fetchall()
    )
    assert lines == [(2, 1002)]
    assert (report.labeled, report.malformed) == (1001, 0)  # type: ignore[attr-defined]
