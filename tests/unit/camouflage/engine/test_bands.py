"""Bands, profiles, reply schedules and the hold gate: every delay and hold is bounded."""

from __future__ import annotations

import itertools

import pytest

from feint.camouflage.engine.bands import (
    DELAY_SECONDS_MAX,
    PROFILES,
    TRICKLE_CHUNKS_MAX,
    TRICKLE_SECONDS_MAX,
    Band,
    EngagementProfile,
    HoldGate,
    arms_for,
    band_of,
    hold_seconds,
    parse_arm,
    schedule,
)
from feint.errors import InvariantViolated, ValidationFailed

pytestmark = pytest.mark.unit


def test_band_of_each_threat_level() -> None:
    """0-2 light, 3-5 balanced, 6-8 complex, 9-10 maximum; outside 0-10 is refused."""
    assert [band_of(t) for t in range(11)] == [Band.LIGHT] * 3 + [Band.BALANCED] * 3 + [Band.COMPLEX] * 3 + [
        Band.MAXIMUM
    ] * 2
    for bad in (-1, 11):
        with pytest.raises(ValidationFailed):
            band_of(bad)


def test_every_band_has_profiles_and_arms() -> None:
    """Each band has at least two profiles; arms are persona x profile and parse back."""
    for band in Band:
        assert len([p for p in PROFILES if p.band is band]) >= 2
        arms = arms_for(band, ("nginx", "apache"))
        assert len(arms) == 2 * len([p for p in PROFILES if p.band is band])
        assert parse_arm(arms[0].id, ("nginx", "apache")) == arms[0]
    assert all(p.labyrinth for p in PROFILES if p.band is Band.MAXIMUM)
    with pytest.raises(ValidationFailed):
        parse_arm("iis/instant", ("nginx",))


def test_profiles_refuse_unbounded_delays() -> None:
    """A profile with a delay over the limit, or half a trickle, cannot be built."""
    with pytest.raises(InvariantViolated):
        EngagementProfile("x", Band.LIGHT, delay_seconds=DELAY_SECONDS_MAX + 1)
    with pytest.raises(InvariantViolated):
        EngagementProfile("x", Band.LIGHT, trickle_bytes=10)


@pytest.mark.parametrize("size", [0, 1, 100, 5_000, 10_000_000])
def test_schedules_cover_the_reply_within_bounds(size: int) -> None:
    """Every byte is sent once, in order, and no reply is held past the trickle limits."""
    for profile in PROFILES:
        plan = schedule(size, profile)
        assert plan[0][1] == 0 and plan[-1][2] == size
        assert all(a[2] == b[1] for a, b in itertools.pairwise(plan))
        assert len(plan) <= TRICKLE_CHUNKS_MAX
        assert hold_seconds(plan) <= TRICKLE_SECONDS_MAX + DELAY_SECONDS_MAX
    with pytest.raises(InvariantViolated):
        schedule(-1, PROFILES[0])


def test_hold_gate_bounds_connections_and_bytes() -> None:
    """The gate admits up to its limits, refuses beyond them, and frees holds when they end."""
    gate = HoldGate(connections_max=2, bytes_max=1_000)
    assert gate.admit(now=0, seconds=10, size=100)
    assert gate.admit(now=0, seconds=10, size=100)
    assert not gate.admit(now=1, seconds=10, size=100)  # connections
    assert gate.admit(now=1, seconds=0, size=100)  # an unheld reply is always fine
    assert gate.admit(now=11, seconds=10, size=900)  # both earlier holds ended
    assert not gate.admit(now=11, seconds=10, size=200)  # bytes
    assert gate.refused == 2 and gate.held == 1
