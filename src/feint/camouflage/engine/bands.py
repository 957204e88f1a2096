"""Engagement bands, engagement profiles and arms (persona x profile): pure data and rules.

A request's threat level (0-10) falls in one band; each band has its engagement profiles, from a
fast light answer to a slow trickle. An arm is one persona played with one profile; the bandit
learns per band which arm holds attackers longest. Every delay is bounded here, and the held
connections and bytes of all slowed replies together are bounded by `HoldGate`, so that the
attackers the decoy holds cannot exhaust it.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass
from typing import Final

from feint.errors import InvariantViolated, ValidationFailed

THREAT_MIN: Final = 0
THREAT_MAX: Final = 10
# Bounds on what any profile may do to one reply.
DELAY_SECONDS_MAX: Final = 10.0
TRICKLE_SECONDS_MAX: Final = 120.0
TRICKLE_CHUNKS_MAX: Final = 512
# Bounds on all slowed replies of one process together.
HELD_CONNECTIONS_MAX: Final = 512
HELD_BYTES_MAX: Final = 64 * 1024 * 1024


class Band(enum.StrEnum):
    """Engagement band of a threat level."""

    LIGHT = "light"  # 0-2: a fast, light decoy
    BALANCED = "balanced"  # 3-5: balanced, moderate delay
    COMPLEX = "complex"  # 6-8: complex, delayed responses
    MAXIMUM = "maximum"  # 9-10: fake login/admin flows, endless pages, slow trickle


BAND_RANGES: Final[dict[Band, tuple[int, int]]] = {
    Band.LIGHT: (0, 2),
    Band.BALANCED: (3, 5),
    Band.COMPLEX: (6, 8),
    Band.MAXIMUM: (9, 10),
}


def band_of(threat: int) -> Band:
    """The band of a threat level 0-10."""
    if not THREAT_MIN <= threat <= THREAT_MAX:
        raise ValidationFailed(
            f"threat level {threat} outside {THREAT_MIN}-{THREAT_MAX}",
            errors=[{"field": "threat", "problem": f"an integer {THREAT_MIN}-{THREAT_MAX}"}],
        )
    for band, (low, high) in BAND_RANGES.items():
        if low <= threat <= high:
            return band
    raise InvariantViolated(f"threat level {threat} is in no band")  # pragma: no cover - ranges cover 0-10


@dataclass(frozen=True, slots=True)
class EngagementProfile:
    """How a decoy answers: delay before the first byte, trickle of the rest, generated content."""

    name: str
    band: Band
    delay_seconds: float = 0.0  # before the first byte of every reply
    trickle_bytes: int = 0  # 0: the reply at once; else chunks of this size ...
    trickle_interval_seconds: float = 0.0  # ... one per interval
    labyrinth: bool = False  # endless generated pages, fake login and admin flows

    def __post_init__(self) -> None:
        if not 0.0 <= self.delay_seconds <= DELAY_SECONDS_MAX:
            raise InvariantViolated(f"profile {self.name}: delay {self.delay_seconds} s over {DELAY_SECONDS_MAX} s")
        if self.trickle_bytes < 0 or (self.trickle_bytes > 0) != (self.trickle_interval_seconds > 0):
            raise InvariantViolated(f"profile {self.name}: trickle needs both a chunk size and an interval")
        if self.trickle_interval_seconds > DELAY_SECONDS_MAX:
            raise InvariantViolated(f"profile {self.name}: trickle interval over {DELAY_SECONDS_MAX} s")


PROFILES: Final[tuple[EngagementProfile, ...]] = (
    EngagementProfile("instant", Band.LIGHT),
    EngagementProfile("brisk", Band.LIGHT, delay_seconds=0.05),
    EngagementProfile("steady", Band.BALANCED, delay_seconds=0.3),
    EngagementProfile("sluggish", Band.BALANCED, delay_seconds=1.0),
    EngagementProfile("delayed", Band.COMPLEX, delay_seconds=2.5),
    EngagementProfile("chunked", Band.COMPLEX, delay_seconds=0.5, trickle_bytes=1024, trickle_interval_seconds=0.5),
    EngagementProfile("labyrinth", Band.MAXIMUM, delay_seconds=1.0, labyrinth=True),
    EngagementProfile("tarpit", Band.MAXIMUM, trickle_bytes=64, trickle_interval_seconds=2.0, labyrinth=True),
)
PROFILE_BY_NAME: Final = {profile.name: profile for profile in PROFILES}


@dataclass(frozen=True, slots=True)
class Arm:
    """One persona played with one engagement profile; ``id`` is ``persona/profile``."""

    persona: str
    profile: EngagementProfile

    @property
    def id(self) -> str:
        return f"{self.persona}/{self.profile.name}"

    @property
    def band(self) -> Band:
        return self.profile.band


def arms_for(band: Band, personas: tuple[str, ...]) -> tuple[Arm, ...]:
    """Every arm of a band: each persona with each of the band's profiles, in a stable order."""
    return tuple(Arm(persona, profile) for profile in PROFILES if profile.band is band for persona in sorted(personas))


def parse_arm(arm_id: str, personas: tuple[str, ...]) -> Arm:
    """The arm named ``persona/profile``; ValidationFailed naming what is unknown."""
    persona, _, profile = arm_id.partition("/")
    if persona not in personas or profile not in PROFILE_BY_NAME:
        raise ValidationFailed(
            f"no arm {arm_id[:80]!r}",
            errors=[{"field": "arm", "problem": f"persona/profile with persona in {sorted(personas)}"}],
        )
    return Arm(persona, PROFILE_BY_NAME[profile])


def schedule(size: int, profile: EngagementProfile) -> tuple[tuple[float, int, int], ...]:
    """When each slice of a ``size``-byte reply is written: ``(delay_seconds, start, end)``.

    The first slice waits ``delay_seconds``; a trickle profile then sends ``trickle_bytes`` per
    interval. A reply too long to trickle within `TRICKLE_SECONDS_MAX` / `TRICKLE_CHUNKS_MAX`
    sends its remainder in the last slice (the hold is bounded; the answer stays whole).
    """
    if size < 0:
        raise InvariantViolated("a reply cannot have a negative size")
    if profile.trickle_bytes == 0 or size == 0:
        return ((profile.delay_seconds, 0, size),)
    slices: list[tuple[float, int, int]] = []
    held = profile.delay_seconds
    start = 0
    delay = profile.delay_seconds
    chunks_max = min(TRICKLE_CHUNKS_MAX, int((TRICKLE_SECONDS_MAX - held) / profile.trickle_interval_seconds) + 1)
    while start < size:
        end = size if len(slices) == chunks_max - 1 else min(size, start + profile.trickle_bytes)
        slices.append((delay, start, end))
        held += delay
        start = end
        delay = profile.trickle_interval_seconds
    return tuple(slices)


def hold_seconds(plan: tuple[tuple[float, int, int], ...]) -> float:
    """How long a reply written on ``plan`` keeps its connection."""
    return sum(delay for delay, _, _ in plan)


class HoldGate:
    """Admits slowed replies while the held connections and bytes stay within their limits.

    The decoy server gives no callback when a reply is done, so each admission is remembered
    with the time its plan ends; expired ones are dropped before each decision. A refused reply
    is answered at once (fast, still a decoy): the attacker loses nothing, the decoy keeps going.
    """

    def __init__(self, *, connections_max: int = HELD_CONNECTIONS_MAX, bytes_max: int = HELD_BYTES_MAX) -> None:
        self.connections_max = connections_max
        self.bytes_max = bytes_max
        self._ends: list[tuple[float, int]] = []  # heap of (end time, bytes)
        self.held_bytes = 0
        self.refused = 0

    @property
    def held(self) -> int:
        return len(self._ends)

    def admit(self, *, now: float, seconds: float, size: int) -> bool:
        """True when a reply of ``size`` bytes may be held for ``seconds``; counts it until then."""
        while self._ends and self._ends[0][0] <= now:
            self.held_bytes -= heapq.heappop(self._ends)[1]
        if seconds <= 0:
            return True
        if len(self._ends) >= self.connections_max or self.held_bytes + size > self.bytes_max:
            self.refused += 1
            return False
        heapq.heappush(self._ends, (now + seconds, size))
        self.held_bytes += size
        return True
