"""The differential check shared by the unit and corpus tiers: the ingest pipeline (vectorised, with
the reference for refused lines) against the reference parser alone, on the same files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from feint.shadow.errors import TrafficFormatInvalid
from feint.shadow.ingest import ingest
from feint.shadow.ingest.dataset import read_records
from feint.shadow.ingest.pipeline import _prefixes
from feint.shadow.ingest.reference import IngestReport, read_log
from feint.shadow.record import RequestRecord


def reference(paths: Sequence[Path]) -> tuple[list[RequestRecord], dict[str, Any]]:
    """Records and report of the line-by-line parser alone."""
    report = IngestReport(output="")
    records: list[RequestRecord] = []
    for path, prefix in zip(paths, _prefixes(paths), strict=True):
        records += read_log(path, report, id_prefix=prefix)
    return records, _problems(report)


def _problems(report: IngestReport) -> dict[str, Any]:
    summary = report.to_dict()
    return {"malformed": summary["malformed"], "examples": summary["examples"], "formats": summary["formats"]}


def assert_same(paths: Sequence[Path], out: Path) -> list[RequestRecord]:
    """Both paths give the same records, in the same order, and the same problems; returns them.

    A file that is not a log must be refused by both, with the same message."""
    try:
        expected, expected_problems = reference(paths)
    except TrafficFormatInvalid as exc:
        refusal = exc.detail
    else:
        refusal = None
    if refusal is not None:
        with pytest.raises(TrafficFormatInvalid) as raised:
            ingest(paths, out)
        assert raised.value.detail == refusal
        return []
    report = ingest(paths, out)
    records = list(read_records(out))
    assert report.rows == len(records)
    for got, want in zip(records, expected, strict=False):
        assert got == want, f"line {want.id}: vectorised {got} != reference {want}"
    assert len(records) == len(expected)
    assert _problems(report) == expected_problems
    return records
