"""Turning decisions into the two slices a guard compares.

A decision is what the gateway logged for one request: which slice judged it (the canary's
candidate or production), whether it was diverted, how long the evaluation took, whether the
gateway failed, and what the feedback says of its client (benign, bot, or nothing). The live
controller sums them in SQL over the decision log (:mod:`feint.shadow.canary.live`); the
simulator keeps them here, in memory. Both produce the same :class:`SliceStats`.
"""

from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from feint.shadow.canary.guards import LATENCY_SAMPLES_MAX, SliceStats
from feint.shadow.canary.service import Window

Label = Literal["benign", "bot"] | None
DECISIONS_IN_MEMORY_MAX: Final = 5_000_000


@dataclass(frozen=True, slots=True)
class Decision:
    at: datetime
    canary: bool
    diverted: bool
    latency_us: float
    error: bool
    label: Label


@dataclass
class _Tally:
    requests: int = 0
    errors: int = 0
    benign: int = 0
    benign_diverted: int = 0
    bots: int = 0
    bots_diverted: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, d: Decision) -> None:
        self.requests += 1
        self.errors += d.error
        if d.label == "benign":
            self.benign += 1
            self.benign_diverted += d.diverted
        elif d.label == "bot":
            self.bots += 1
            self.bots_diverted += d.diverted
        if len(self.latencies) < LATENCY_SAMPLES_MAX:
            self.latencies.append(d.latency_us)

    def stats(self) -> SliceStats:
        return SliceStats(
            requests=self.requests,
            errors=self.errors,
            benign=self.benign,
            benign_diverted=self.benign_diverted,
            bots=self.bots,
            bots_diverted=self.bots_diverted,
            latencies_us=tuple(self.latencies),
        )


class MemorySource:
    """Decisions of one or more rollouts kept in memory, in time order per rollout."""

    def __init__(self, *, decisions_max: int = DECISIONS_IN_MEMORY_MAX) -> None:
        self._decisions: dict[uuid.UUID, list[Decision]] = {}
        self._times: dict[uuid.UUID, list[datetime]] = {}
        self._count = 0
        self._max = decisions_max

    def record(self, rollout_id: uuid.UUID, decision: Decision) -> None:
        if self._count >= self._max:
            raise OverflowError(f"more than {self._max} decisions in memory; replay a smaller file")
        times = self._times.setdefault(rollout_id, [])
        if times and decision.at < times[-1]:
            raise ValueError(f"decisions must be recorded in time order ({decision.at} after {times[-1]})")
        times.append(decision.at)
        self._decisions.setdefault(rollout_id, []).append(decision)
        self._count += 1

    async def window(self, *, tenant_id: uuid.UUID, rollout_id: uuid.UUID, since: datetime, until: datetime) -> Window:
        times = self._times.get(rollout_id, [])
        decisions = self._decisions.get(rollout_id, [])
        lo = bisect.bisect_left(times, since)
        hi = bisect.bisect_left(times, until)
        production, canary = _Tally(), _Tally()
        for d in decisions[lo:hi]:
            (canary if d.canary else production).add(d)
        return Window(production=production.stats(), canary=canary.stats())
