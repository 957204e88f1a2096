"""UCB1 per engagement band, over the arms (persona x profile) of that band.

The core (`ucb1_choose`, `UCB1`, `retirements`) is pure and allocation-free on the hot path; the
`Bandit` wraps it around a `BanditStore` shared by every replica (PostgreSQL, and Redis when
configured; see ``feint.camouflage.store`` and ``engine/shared.py``), whose updates are atomic
increments so that replicas never lose each other's pulls.

One pull is one session: the arm is chosen once when a client is first diverted, and the
session's normalised engagement (`reward`) is added when it ends. Pulls and rewards are
recorded together at the end, so an arm whose sessions last long (a tarpit) is not judged on
sessions still running; sessions still running are counted per process as *pending* and only
widen the exploration term, so that concurrent new sessions spread over untried arms.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from prometheus_client import Counter, Gauge

from feint.camouflage.engine.bands import Arm, Band, arms_for
from feint.errors import InvariantViolated

# An arm is retired when, after `RETIRE_PULLS_MIN` sessions, its mean reward is below
# `retire_ratio` times the band's best; a never-tried arm of the band takes its place.
RETIRE_PULLS_MIN: Final = 50
RETIRE_RATIO_DEFAULT: Final = 0.5
ACTIVE_ARMS_MIN: Final = 2
ACTIVE_ARMS_MAX: Final = 6
PENDING_SESSIONS_MAX: Final = 1_000_000
REWARD_MIN: Final = 0.0
REWARD_MAX: Final = 1.0

ARM_EFFECTIVENESS = Gauge(
    "feint_camouflage_arm_effectiveness",
    "Mean reward (normalised engagement, 0-1) of each decoy arm, as this replica last read it.",
    ["tenant", "band", "arm"],
)
ARM_PULLS = Gauge("feint_camouflage_arm_pulls", "Ended sessions of each decoy arm.", ["tenant", "band", "arm"])
ARM_ROTATIONS = Counter("feint_camouflage_arm_rotations_total", "Arms retired for low effectiveness.", ["band"])


# --- the pure core ------------------------------------------------------------------------


def ucb1_choose(pulls: Sequence[int], sums: Sequence[float], pending: Sequence[int] | None = None) -> int:
    """Index of the arm UCB1 plays next: an untried arm first (the least pending of them), else
    the highest ``mean + sqrt(2 ln N / n)``, where ``n`` also counts this process's pending pulls."""
    count = len(pulls)
    if count == 0:
        raise InvariantViolated("UCB1 needs at least one arm")
    best = -1
    if pending is None:
        total = 0
        for i in range(count):
            if pulls[i] == 0:
                return i
            total += pulls[i]
        scale = 2.0 * math.log(total)
        best_index = -1.0
        for i in range(count):
            n = pulls[i]
            index = sums[i] / n + math.sqrt(scale / n)
            if index > best_index:
                best_index, best = index, i
        return best
    untried = [i for i in range(count) if pulls[i] == 0]
    if untried:
        return min(untried, key=lambda i: pending[i])
    total = sum(pulls) + sum(pending)
    scale = 2.0 * math.log(total)
    best_index = -1.0
    for i in range(count):
        index = sums[i] / pulls[i] + math.sqrt(scale / (pulls[i] + pending[i]))
        if index > best_index:
            best_index, best = index, i
    return best


def ucb1_indices(pulls: Sequence[int], sums: Sequence[float]) -> list[float | None]:
    """The UCB1 index ``mean + sqrt(2 ln N / n)`` of each arm (None for an untried arm, which
    `ucb1_choose` plays first), without this process's pending pulls: what every replica agrees on."""
    total = sum(pulls)
    scale = 2.0 * math.log(total) if total > 0 else 0.0
    return [None if n == 0 else s / n + math.sqrt(scale / n) for n, s in zip(pulls, sums, strict=True)]


class UCB1:
    """In-process UCB1 over named arms; `select` then `update` is one round."""

    def __init__(self, arms: Sequence[str]) -> None:
        if len(set(arms)) != len(arms):
            raise InvariantViolated("arm names must be unique")
        self.arms: list[str] = list(arms)
        self.pulls: list[int] = [0] * len(arms)
        self.sums: list[float] = [0.0] * len(arms)
        self._index = {arm: i for i, arm in enumerate(arms)}

    def select(self) -> str:
        return self.arms[ucb1_choose(self.pulls, self.sums)]

    def update(self, arm: str, reward: float) -> None:
        i = self._index[arm]
        self.pulls[i] += 1
        self.sums[i] += reward

    def add_arm(self, arm: str) -> None:
        if arm in self._index:
            raise InvariantViolated(f"arm {arm} is already played")
        self._index[arm] = len(self.arms)
        self.arms.append(arm)
        self.pulls.append(0)
        self.sums.append(0.0)

    def remove_arm(self, arm: str) -> None:
        i = self._index.pop(arm)
        for lst in (self.arms, self.pulls, self.sums):
            del lst[i]
        self._index = {name: j for j, name in enumerate(self.arms)}


@dataclass(frozen=True, slots=True)
class ArmStats:
    """One arm of one band of one tenant, as stored."""

    arm: str
    band: Band
    pulls: int
    reward_sum: float
    active: bool

    @property
    def effectiveness(self) -> float:
        """Mean reward per ended session; 0 before the first."""
        return self.reward_sum / self.pulls if self.pulls else 0.0


def retirements(
    stats: Sequence[ArmStats], *, ratio: float, pulls_min: int = RETIRE_PULLS_MIN, keep: int = ACTIVE_ARMS_MIN
) -> list[str]:
    """Active arms to retire: tried at least ``pulls_min`` times and below ``ratio`` x the best
    mean; the weakest first, never leaving fewer than ``keep`` active."""
    active = [s for s in stats if s.active]
    tried = [s for s in active if s.pulls >= pulls_min]
    if not tried:
        return []
    best = max(s.effectiveness for s in tried)
    weak = sorted((s for s in tried if s.effectiveness < ratio * best), key=lambda s: s.effectiveness)
    return [s.arm for s in weak[: max(0, len(active) - keep)]]


def initial_active(arms: Sequence[Arm], *, active_max: int = ACTIVE_ARMS_MAX) -> list[str]:
    """The arms a band starts with: alternate profiles and personas so that both vary."""
    by_profile: dict[str, list[Arm]] = {}
    for arm in arms:
        by_profile.setdefault(arm.profile.name, []).append(arm)
    chosen: list[str] = []
    columns = list(by_profile.values())
    for row in range(max((len(c) for c in columns), default=0)):
        for column in columns:
            if row < len(column) and len(chosen) < active_max:
                chosen.append(column[(row + len(chosen)) % len(column)].id)
    return chosen


def clamp_reward(reward: float) -> float:
    if math.isnan(reward):
        raise InvariantViolated("a reward cannot be NaN")
    return min(REWARD_MAX, max(REWARD_MIN, reward))


# --- shared state -------------------------------------------------------------------------


class BanditStore(Protocol):
    """Bandit state shared by replicas; every write is one atomic step."""

    async def arms(self, *, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        """Every arm of the band, retired ones included."""
        ...

    async def ensure(self, *, tenant_id: uuid.UUID, band: Band, arms: Sequence[str], active: Sequence[str]) -> None:
        """Add the arms not yet stored (``active`` ones active); existing rows stay as they are."""
        ...

    async def record(self, *, tenant_id: uuid.UUID, band: Band, arm: str, reward: float) -> None:
        """One ended session: pulls + 1 and reward_sum + reward, atomically. An arm with no row
        (its band's rows were removed while the session ran) gets one, active, with this session."""
        ...

    async def rotate(self, *, tenant_id: uuid.UUID, band: Band, retire: str, explore: str | None) -> bool:
        """Retire ``retire`` and activate ``explore`` in one step, only if ``retire`` is still active
        (so that two replicas deciding at once rotate once); True when this call did it."""
        ...


class MemoryBanditStore:
    """In-process state: one process only (tests, and `feint up` without Redis uses PostgreSQL)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[uuid.UUID, Band, str], ArmStats] = {}

    async def arms(self, *, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        return [s for (t, b, _), s in sorted(self._rows.items()) if t == tenant_id and b is band]

    async def ensure(self, *, tenant_id: uuid.UUID, band: Band, arms: Sequence[str], active: Sequence[str]) -> None:
        for arm in arms:
            self._rows.setdefault((tenant_id, band, arm), ArmStats(arm, band, 0, 0.0, arm in active))

    async def record(self, *, tenant_id: uuid.UUID, band: Band, arm: str, reward: float) -> None:
        old = self._rows.get((tenant_id, band, arm)) or ArmStats(arm, band, 0, 0.0, True)
        self._rows[(tenant_id, band, arm)] = ArmStats(arm, band, old.pulls + 1, old.reward_sum + reward, old.active)

    async def rotate(self, *, tenant_id: uuid.UUID, band: Band, retire: str, explore: str | None) -> bool:
        old = self._rows.get((tenant_id, band, retire))
        if old is None or not old.active:
            return False
        self._rows[(tenant_id, band, retire)] = ArmStats(retire, band, old.pulls, old.reward_sum, False)
        if explore is not None:
            new = self._rows[(tenant_id, band, explore)]
            self._rows[(tenant_id, band, explore)] = ArmStats(explore, band, new.pulls, new.reward_sum, True)
        return True


class Bandit:
    """Chooses an arm per session and learns from its reward; state in a shared `BanditStore`."""

    def __init__(
        self,
        store: BanditStore,
        *,
        personas: tuple[str, ...],
        retire_ratio: float = RETIRE_RATIO_DEFAULT,
        pulls_min: int = RETIRE_PULLS_MIN,
        active_max: int = ACTIVE_ARMS_MAX,
    ) -> None:
        if not personas:
            raise InvariantViolated("the bandit needs at least one persona")
        self.store = store
        self.personas = personas
        self.retire_ratio = retire_ratio
        self.pulls_min = pulls_min
        self.active_max = active_max
        self._pending: dict[tuple[uuid.UUID, Band, str], int] = {}
        self._ensured: set[tuple[uuid.UUID, Band]] = set()

    def catalog(self, band: Band) -> tuple[Arm, ...]:
        return arms_for(band, self.personas)

    async def _stats(self, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        if (tenant_id, band) not in self._ensured:
            arms = self.catalog(band)
            await self.store.ensure(
                tenant_id=tenant_id,
                band=band,
                arms=[a.id for a in arms],
                active=initial_active(arms, active_max=self.active_max),
            )
            self._ensured.add((tenant_id, band))
        return await self.store.arms(tenant_id=tenant_id, band=band)

    async def select(self, *, tenant_id: uuid.UUID, band: Band) -> Arm:
        """The arm for a new session of ``band``; it is pending until `update` (or `abandon`)."""
        known = {a.id: a for a in self.catalog(band)}
        active = [s for s in await self._stats(tenant_id, band) if s.active and s.arm in known]
        if not active:
            raise InvariantViolated(f"band {band} of tenant {tenant_id} has no active arm")
        pending = [self._pending.get((tenant_id, band, s.arm), 0) for s in active]
        chosen = active[ucb1_choose([s.pulls for s in active], [s.reward_sum for s in active], pending)]
        key = (tenant_id, band, chosen.arm)
        if len(self._pending) < PENDING_SESSIONS_MAX or key in self._pending:
            self._pending[key] = self._pending.get(key, 0) + 1
        return known[chosen.arm]

    def abandon(self, *, tenant_id: uuid.UUID, band: Band, arm: str) -> None:
        """Forget a pending pull without a reward (the session was dropped, e.g. on shutdown)."""
        key = (tenant_id, band, arm)
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    async def update(self, *, tenant_id: uuid.UUID, band: Band, arm: str, reward: float) -> list[str]:
        """Record a session's reward; returns the arms this call retired (rotation), if any."""
        self.abandon(tenant_id=tenant_id, band=band, arm=arm)
        await self.store.record(tenant_id=tenant_id, band=band, arm=arm, reward=clamp_reward(reward))
        stats = await self.store.arms(tenant_id=tenant_id, band=band)
        self._publish(tenant_id, stats)
        retired: list[str] = []
        fresh = [s.arm for s in stats if not s.active and s.pulls == 0]
        for weak in retirements(stats, ratio=self.retire_ratio, pulls_min=self.pulls_min):
            explore = fresh.pop(0) if fresh else None
            if await self.store.rotate(tenant_id=tenant_id, band=band, retire=weak, explore=explore):
                ARM_ROTATIONS.labels(band.value).inc()
                retired.append(weak)
        return retired

    async def stats(self, *, tenant_id: uuid.UUID, band: Band) -> list[ArmStats]:
        stats = await self._stats(tenant_id, band)
        self._publish(tenant_id, stats)
        return stats

    def _publish(self, tenant_id: uuid.UUID, stats: Sequence[ArmStats]) -> None:
        publish(tenant_id, stats)


def publish(tenant_id: uuid.UUID, stats: Sequence[ArmStats]) -> None:
    """Set the Prometheus gauges of these arms (the bandit after each update; the management API
    after each read, so that /metrics and /v1/arms show the same figures)."""
    tenant = str(tenant_id)
    for s in stats:
        ARM_EFFECTIVENESS.labels(tenant, s.band.value, s.arm).set(s.effectiveness)
        ARM_PULLS.labels(tenant, s.band.value, s.arm).set(s.pulls)
