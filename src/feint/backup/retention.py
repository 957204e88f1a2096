"""Which backups to keep: the newest of each of the last N days, N weeks and N months (pure).

Grandfather-father-son: a backup is kept when it is the newest one of a day among the
``daily`` most recent days that have backups, or of an ISO week among the ``weekly`` most
recent weeks, or of a month among the ``monthly`` most recent months; everything else goes.
The newest backup is always kept, whatever the numbers. Times are UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from feint.errors import ValidationFailed

KEEP_MAX = 10_000


@dataclass(frozen=True)
class Policy:
    daily: int
    weekly: int
    monthly: int

    def __post_init__(self) -> None:
        for name in ("daily", "weekly", "monthly"):
            value = getattr(self, name)
            if not 0 <= value <= KEEP_MAX:
                raise ValidationFailed(
                    f"--keep-{name} must be 0-{KEEP_MAX}, not {value}",
                    errors=[{"field": f"keep_{name}", "problem": f"0-{KEEP_MAX}"}],
                )


def _newest_per(ids: Sequence[tuple[str, datetime]], bucket: Callable[[datetime], str], count: int) -> set[str]:
    chosen: dict[str, str] = {}
    for backup_id, at in sorted(ids, key=lambda item: item[1], reverse=True):
        key = bucket(at)
        if key not in chosen:
            if len(chosen) == count:
                break
            chosen[key] = backup_id
    return set(chosen.values())


def plan(backups: Sequence[tuple[str, datetime]], policy: Policy) -> tuple[list[str], list[str]]:
    """(kept, dropped) ids, each oldest first."""
    if not backups:
        return [], []
    keep = _newest_per(backups, lambda at: at.strftime("%Y-%m-%d"), policy.daily)
    keep |= _newest_per(backups, lambda at: "{:04d}-W{:02d}".format(*at.isocalendar()[:2]), policy.weekly)
    keep |= _newest_per(backups, lambda at: at.strftime("%Y-%m"), policy.monthly)
    keep.add(max(backups, key=lambda item: item[1])[0])
    ordered = [b for b, _ in sorted(backups, key=lambda item: item[1])]
    return [b for b in ordered if b in keep], [b for b in ordered if b not in keep]
