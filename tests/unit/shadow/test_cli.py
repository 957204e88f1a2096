"""The ``feint shadow`` sub-commands, through Typer's test runner."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feint.shadow import synth
from feint.shadow.cli import shadow_app
from feint.shadow.ingest.dataset import write_records
from feint.shadow.rules import starter_rules_path
from feint.shadow.schema import validate_report

pytestmark = pytest.mark.unit

runner = CliRunner()
LOG = '203.0.113.9 - - [10/Oct/2023:13:55:36 +0000] "GET /?q=../../etc/passwd HTTP/1.1" 200 1 "-" "nikto"\n'


def test_evaluate_writes_json_and_html(tmp_path: Path) -> None:
    """evaluate writes a valid report.json and report.html and prints the decision."""
    rng = random.Random(1)
    traffic = tmp_path / "t.parquet"
    write_records(traffic, [synth.benign(rng, str(i)) for i in range(300)])
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\n" + "".join(f"{i},0\n" for i in range(300)))
    production = tmp_path / "prod.yml"
    production.write_text((starter_rules_path() / "feint_jndi_lookup.yml").read_text())
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    result = runner.invoke(
        shadow_app,
        ["evaluate", "--production", str(production), "--candidate", str(starter_rules_path()), "--traffic",
         str(traffic), "--labels", str(labels), "--out", str(out), "--html", str(page), "--fpr-max", "0.05",
         "--threads", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "report written" in result.output
    report = json.loads(out.read_text())
    assert validate_report(report) == []
    assert report["inputs"]["thresholds"]["fpr_max"] == 0.05
    assert page.read_text().startswith("<!doctype html>")


def test_evaluate_reports_bad_input(tmp_path: Path) -> None:
    """Missing rules or a bad objective exit with status 2 and a message, not a traceback."""
    common = ["--traffic", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "o.json")]
    result = runner.invoke(shadow_app, ["evaluate", "--production", str(tmp_path / "none"), "--candidate",
                                        str(starter_rules_path()), *common])  # fmt: skip
    assert result.exit_code == 2
    assert "no Sigma file or folder" in result.output
    assert "pass --tenant" in result.output
    result = runner.invoke(shadow_app, ["evaluate", "--production", str(starter_rules_path()), "--candidate",
                                        str(starter_rules_path()), "--objective", "auc", *common])  # fmt: skip
    assert result.exit_code == 2


def test_ingest(tmp_path: Path) -> None:
    """ingest writes the dataset and prints the import report; a non-log exits with 2."""
    log = tmp_path / "access.log"
    log.write_text(LOG * 3 + "junk\n")
    out = tmp_path / "d.parquet"
    result = runner.invoke(shadow_app, ["ingest", str(log), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert (summary["rows"], summary["malformed"]) == (3, 1)
    letter = tmp_path / "letter.txt"
    letter.write_text("Dear reader,\n" * 40)
    result = runner.invoke(shadow_app, ["ingest", str(letter), "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2
    assert "none of the first" in result.output


def test_ingest_globs_and_progress_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A glob over rotated and gzipped logs makes one dataset with '<file>:<line>' ids; the progress
    bar shows lines and lines/s."""
    import gzip
    import io

    from rich.console import Console

    from feint.shadow.cli import _ingest_meter, _ingest_progress
    from feint.shadow.ingest import ingest
    from feint.shadow.ingest.dataset import read_records

    (tmp_path / "access.log").write_text(LOG * 2)
    (tmp_path / "access.log.1").write_text(LOG)
    (tmp_path / "access.log.2.gz").write_bytes(gzip.compress(LOG.encode() * 3))
    out = tmp_path / "d.parquet"
    result = runner.invoke(shadow_app, ["ingest", str(tmp_path / "access.log*"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids = [record.id for record in read_records(out)]
    assert ids == ["access.log:1", "access.log:2", "access.log.1:1", "access.log.2.gz:1", "access.log.2.gz:2",
                   "access.log.2.gz:3"]  # fmt: skip
    monkeypatch.setattr("feint.shadow.ingest.pipeline._Meter.INTERVAL_SECONDS", 0.0)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160)
    with _ingest_progress(console) as bar:
        ingest([tmp_path / "access.log*"], tmp_path / "e.parquet", on_progress=_ingest_meter(bar))
        bar.refresh()
        shown = screen.getvalue()
    assert "importing" in shown
    assert "lines/s" in shown
    assert "6 lines" in shown
