"""UCB1: convergence and logarithmic regret on Bernoulli arms, rotation, and the shared Bandit."""

from __future__ import annotations

import math
import random
import uuid

import pytest

from feint.camouflage.engine.bandit import (
    UCB1,
    ArmStats,
    Bandit,
    MemoryBanditStore,
    clamp_reward,
    initial_active,
    retirements,
    ucb1_choose,
)
from feint.camouflage.engine.bands import Band, arms_for
from feint.errors import InvariantViolated

pytestmark = pytest.mark.unit

MEANS = (0.2, 0.35, 0.5, 0.75)  # arm 3 is best; gaps 0.55, 0.4, 0.25
CONVERGENCE_ROUNDS = 5_000
BEST_SHARE_MIN = 0.90


def simulate(rounds: int, seed: int) -> tuple[UCB1, float]:
    """Play ``rounds`` of UCB1 on Bernoulli arms with `MEANS`; the bandit and its pseudo-regret."""
    rng = random.Random(seed)
    bandit = UCB1([f"arm{i}" for i in range(len(MEANS))])
    regret = 0.0
    for _ in range(rounds):
        arm = bandit.select()
        i = int(arm[3:])
        bandit.update(arm, 1.0 if rng.random() < MEANS[i] else 0.0)
        regret += max(MEANS) - MEANS[i]
    return bandit, regret


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_converges_to_the_best_arm(seed: int) -> None:
    """After 5,000 rounds at least 90% of all pulls went to the arm with the highest mean."""
    bandit, _ = simulate(CONVERGENCE_ROUNDS, seed)
    assert bandit.pulls[3] / CONVERGENCE_ROUNDS >= BEST_SHARE_MIN


def test_regret_grows_logarithmically() -> None:
    """Regret stays under the UCB1 bound (Auer et al. 2002) and grows ~log T, not ~T, from 10k to 100k."""
    gaps = [max(MEANS) - m for m in MEANS if m < max(MEANS)]
    regrets = {}
    for rounds in (10_000, 100_000):
        _, regret = simulate(rounds, seed=7)
        bound = sum(8 / g for g in gaps) * math.log(rounds) + (1 + math.pi**2 / 3) * sum(gaps)
        assert regret <= bound
        regrets[rounds] = regret
    # Linear regret would grow 10x; logarithmic grows by ln(1e5)/ln(1e4) = 1.25 asymptotically.
    assert regrets[100_000] / regrets[10_000] < 2.5
    assert regrets[100_000] / math.log(100_000) < 2 * regrets[10_000] / math.log(10_000)


def test_untried_arm_first_and_invalid_inputs() -> None:
    """Every arm is tried once before any is repeated; an empty arm list or NaN reward is refused."""
    bandit = UCB1(["a", "b", "c"])
    seen = []
    for _ in range(3):
        arm = bandit.select()
        seen.append(arm)
        bandit.update(arm, 0.0)
    assert sorted(seen) == ["a", "b", "c"]
    with pytest.raises(InvariantViolated):
        ucb1_choose([], [])
    with pytest.raises(InvariantViolated):
        clamp_reward(float("nan"))
    assert clamp_reward(3.0) == 1.0
    with pytest.raises(InvariantViolated):
        UCB1(["a", "a"])


def test_add_and_remove_arm() -> None:
    """An added arm is explored next; a removed arm is never chosen again."""
    bandit = UCB1(["a", "b"])
    for arm in ("a", "b"):
        bandit.update(arm, 1.0)
    bandit.add_arm("c")
    assert bandit.select() == "c"
    bandit.remove_arm("a")
    assert "a" not in {bandit.select() for _ in range(10)}
    with pytest.raises(InvariantViolated):
        bandit.add_arm("b")


def test_pending_pulls_spread_concurrent_sessions() -> None:
    """Untried arms are handed out least-pending first, so concurrent sessions spread over them."""
    assert ucb1_choose([0, 0, 0], [0.0, 0.0, 0.0], [2, 0, 1]) == 1
    # Among tried arms, pending pulls shrink the exploration bonus of the arm they are on.
    assert ucb1_choose([10, 10], [5.0, 5.0], [50, 0]) == 1


def test_retirements_keep_the_best_and_a_minimum() -> None:
    """Arms under ratio x best after enough pulls retire, weakest first, never below the minimum."""
    stats = [
        ArmStats("p/a", Band.LIGHT, 100, 80.0, True),
        ArmStats("p/b", Band.LIGHT, 100, 10.0, True),
        ArmStats("p/c", Band.LIGHT, 100, 30.0, True),
        ArmStats("p/d", Band.LIGHT, 10, 0.0, True),  # too few pulls to judge
    ]
    assert retirements(stats, ratio=0.5, pulls_min=50) == ["p/b", "p/c"]
    assert retirements(stats, ratio=0.5, pulls_min=50, keep=3) == ["p/b"]
    assert retirements(stats[3:], ratio=0.5, pulls_min=50) == []


def test_initial_active_varies_persona_and_profile() -> None:
    """The starting arms of a band cover every profile and several personas."""
    arms = arms_for(Band.BALANCED, ("apache", "express", "iis", "nginx", "spring"))
    chosen = initial_active(arms, active_max=6)
    assert len(chosen) == 6
    assert {a.split("/")[1] for a in chosen} == {"steady", "sluggish"}
    assert len({a.split("/")[0] for a in chosen}) >= 3


async def test_bandit_learns_and_rotates_out_a_weak_arm() -> None:
    """Through the store: the better arm is chosen most; a weak arm is retired and a fresh one explored."""
    store = MemoryBanditStore()
    personas = ("apache", "express", "iis", "nginx", "spring")
    bandit = Bandit(store, personas=personas, retire_ratio=0.5, pulls_min=10, active_max=3)
    tenant = uuid.uuid4()
    rng = random.Random(3)
    good = initial_active(arms_for(Band.LIGHT, personas), active_max=3)[0]
    retired_all: list[str] = []
    for _ in range(400):
        arm = await bandit.select(tenant_id=tenant, band=Band.LIGHT)
        value = 0.9 if arm.id == good else 0.1
        retired_all += await bandit.update(
            tenant_id=tenant, band=Band.LIGHT, arm=arm.id, reward=value if rng.random() < 0.9 else 0.0
        )
    stats = {s.arm: s for s in await bandit.stats(tenant_id=tenant, band=Band.LIGHT)}
    assert retired_all, "a weak arm must have been rotated out"
    assert all(not stats[a].active for a in retired_all)
    assert sum(s.active for s in stats.values()) >= 2
    explored = [s for s in stats.values() if s.pulls > 0]
    assert len(explored) > 3  # fresh arms entered after rotations
    if stats[good].active:
        assert stats[good].pulls == max(s.pulls for s in stats.values())
    assert (await bandit.select(tenant_id=uuid.uuid4(), band=Band.MAXIMUM)).band is Band.MAXIMUM


async def test_rotation_happens_once_under_a_race() -> None:
    """Two rotations of one arm: only the first retires it."""
    store = MemoryBanditStore()
    tenant = uuid.uuid4()
    await store.ensure(tenant_id=tenant, band=Band.LIGHT, arms=["a/x", "b/x", "c/x"], active=["a/x", "b/x"])
    assert await store.rotate(tenant_id=tenant, band=Band.LIGHT, retire="a/x", explore="c/x")
    assert not await store.rotate(tenant_id=tenant, band=Band.LIGHT, retire="a/x", explore="c/x")
    active = {s.arm for s in await store.arms(tenant_id=tenant, band=Band.LIGHT) if s.active}
    assert active == {"b/x", "c/x"}
