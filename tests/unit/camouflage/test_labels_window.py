"""The labels window and file: durations and instants parse, bad ones name their field, and the
file is the one the shadow service's labels reader accepts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feint.camouflage import labels
from feint.errors import ValidationFailed
from feint.shadow.labels import load_labels

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        (" 24h ", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-12-01T00:00:00Z", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T01:00:00+01:00", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T00:00:00", datetime(2026, 12, 1, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_instants_and_durations(text: str, expected: datetime) -> None:
    """A duration counts back from now; an ISO 8601 instant without an offset is UTC."""
    assert labels.instant(text, field="since", now=NOW) == expected


@pytest.mark.parametrize(
    ("since", "until", "field"),
    [
        ("yesterday", None, "query.since"),
        ("-5m", None, "query.since"),
        ("1h", "2h", "query.until"),  # until before since
        ("1h", "1h", "query.until"),  # empty window
        ("2000-01-01T00:00:00Z", "2001-01-02T00:00:00Z", "query.since"),  # longer than WINDOW_DAYS_MAX
        ("1h", "tomorrow", "query.until"),
    ],
)
def test_bad_windows_name_the_field(since: str, until: str | None, field: str) -> None:
    """Every window that is not one is a 422 naming the field it came from."""
    with pytest.raises(ValidationFailed) as caught:
        labels.window(since, until, now=NOW, field_prefix="query.")
    assert caught.value.errors[0]["field"] == field


def test_window_defaults_to_now() -> None:
    span = labels.window("1h", None, now=NOW)
    assert (span.since, span.until) == (NOW - timedelta(hours=1), NOW)


def test_file_is_what_shadow_reads(tmp_path: Path) -> None:
    """to_csv's output loads in the shadow service's reader with every label and no problem."""
    rows = [("0b6f6a1e-8d4e-4a53-9a56-6d2f6ee0a001", 1), ("0b6f6a1e-8d4e-4a53-9a56-6d2f6ee0a002", 0)]
    path = tmp_path / "labels.csv"
    path.write_text(labels.to_csv(rows))
    report = load_labels(path, tmp_path / "labels.parquet")
    assert (report.labeled, report.malformed, report.duplicates) == (2, 0, 0)
    table = pq.read_table(tmp_path / "labels.parquet").to_pylist()
    assert [(r["id"], r["label"]) for r in table] == rows
    assert labels.to_csv([]) == "id,label\n"


def test_allow_list_setting_parsed() -> None:
    """FEINT_CAMOUFLAGE_ALLOW_CLIENTS: commas, blanks and empty parts ignored."""
    from feint.settings import Settings

    settings = Settings(camouflage_allow_clients=" 10.0.0.1, ,abc ,", env="test")
    assert labels.allowed_clients(settings) == ["10.0.0.1", "abc"]
