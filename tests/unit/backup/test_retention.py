"""Retention: the newest backup of each recent day, week and month is kept; the rest goes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from feint.backup.retention import Policy, plan
from feint.errors import ValidationFailed

pytestmark = pytest.mark.unit


def _daily(days: int) -> list[tuple[str, datetime]]:
    start = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    return [(f"b{i:03d}", start + timedelta(days=i)) for i in range(days)]


def test_keeps_last_n_days_only_when_weeks_and_months_are_zero() -> None:
    """daily=7 keeps the seven newest daily backups and drops the rest."""
    kept, dropped = plan(_daily(30), Policy(daily=7, weekly=0, monthly=0))
    assert kept == [f"b{i:03d}" for i in range(23, 30)]
    assert len(dropped) == 23


def test_months_keep_the_newest_of_each_month() -> None:
    """monthly=3 over 100 days keeps the last backup of each of the three newest months."""
    backups = _daily(100)  # 2026-01-01 .. 2026-04-10
    kept, _ = plan(backups, Policy(daily=0, weekly=0, monthly=3))
    by_id = dict(backups)
    assert [by_id[k].strftime("%m-%d") for k in kept] == ["02-28", "03-31", "04-10"]


def test_weeks_are_iso_weeks() -> None:
    """weekly=2 keeps the newest backup of each of the two newest ISO weeks."""
    backups = _daily(14)  # Thu 2026-01-01 .. Wed 2026-01-14
    kept, _ = plan(backups, Policy(daily=0, weekly=2, monthly=0))
    by_id = dict(backups)
    assert [by_id[k].strftime("%a %d") for k in kept] == ["Sun 11", "Wed 14"]


def test_newest_always_kept_and_empty_input() -> None:
    """Zero everywhere still keeps the newest backup; no backups: nothing to do."""
    kept, dropped = plan(_daily(3), Policy(daily=0, weekly=0, monthly=0))
    assert kept == ["b002"] and dropped == ["b000", "b001"]
    assert plan([], Policy(daily=1, weekly=1, monthly=1)) == ([], [])


def test_negative_counts_refused() -> None:
    """A negative count is a validation error naming the option."""
    with pytest.raises(ValidationFailed, match="--keep-weekly"):
        Policy(daily=1, weekly=-1, monthly=1)
