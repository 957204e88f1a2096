"""Bandit select+update cost: our UCB1 (engine/bandit.py) against MABWiser's UCB1, same rounds.

    .venv/bin/python -m pip install -r bench/camouflage/requirements.txt   # MABWiser, for the comparison
    .venv/bin/python bench/camouflage/bandit.py [--rounds 5000] [--arms 6]

One round is what the engine does per decoy session: choose an arm, then learn the session's
reward. Both run the same rewards (Bernoulli with fixed means per arm, one seeded stream) over
the same arms: ``UCB1.select()`` + ``UCB1.update()`` against MABWiser's ``predict()`` +
``partial_fit()`` (``LearningPolicy.UCB1(alpha=1)``, the same index: mean + sqrt(2 ln N / n)).
Also printed: the engine's ``Bandit.select`` + ``Bandit.update`` on the in-process store (what a
session costs the gateway's process on top of the store's round trips), and the share of pulls
on the best arm, so that the two libraries are seen to learn the same thing. Timings are
process CPU time on a shared machine: compare the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

SEED = 7
ROUNDS_DEFAULT = 5_000
ARMS_DEFAULT = 6
REPEATS = 3  # each library runs this many times on the same rewards; the fastest run counts


@dataclass(frozen=True)
class BanditFigures:
    """What one library measured."""

    name: str
    rounds: int
    us_per_round: float
    best_share: float  # pulls of the best arm over the last half of the rounds


def _means(arms: int) -> list[float]:
    return [0.2 + 0.6 * i / max(arms - 1, 1) for i in range(arms)]


def _rewards(rounds: int, arms: int) -> list[list[float]]:
    """Per round, the reward each arm would pay (so both libraries see the same draws)."""
    rng = random.Random(SEED)
    means = _means(arms)
    return [[1.0 if rng.random() < m else 0.0 for m in means] for _ in range(rounds)]


def _time(name: str, rounds: int, new_play: Callable[[], Callable[[int], int]], arms: int) -> BanditFigures:
    best = arms - 1
    cpu = float("inf")
    for _ in range(REPEATS):
        play = new_play()
        started = time.process_time()
        chosen = [play(r) for r in range(rounds)]
        cpu = min(cpu, time.process_time() - started)
    late = chosen[rounds // 2 :]
    return BanditFigures(name, rounds, cpu / rounds * 1e6, sum(1 for c in late if c == best) / len(late))


def ours(rounds: int, arms: int) -> BanditFigures:
    from feint.camouflage.engine.bandit import UCB1

    names = [f"arm{i}" for i in range(arms)]
    index = {name: i for i, name in enumerate(names)}
    table = _rewards(rounds, arms)

    def new_play() -> Callable[[int], int]:
        bandit = UCB1(names)

        def play(r: int) -> int:
            arm = bandit.select()
            i = index[arm]
            bandit.update(arm, table[r][i])
            return i

        return play

    return _time("feint UCB1", rounds, new_play, arms)


def mabwiser(rounds: int, arms: int) -> BanditFigures | None:
    try:
        from mabwiser.mab import MAB, LearningPolicy
    except ImportError:
        return None
    from importlib.metadata import version

    names = [f"arm{i}" for i in range(arms)]
    index = {name: i for i, name in enumerate(names)}
    table = _rewards(rounds, arms)

    def new_play() -> Callable[[int], int]:
        mab = MAB(arms=names, learning_policy=LearningPolicy.UCB1(alpha=1.0), seed=SEED)
        # MABWiser needs a first fit before predict: one pull per arm, as UCB1 starts anyway.
        mab.fit(decisions=names, rewards=[table[0][i] for i in range(arms)])

        def play(r: int) -> int:
            arm = mab.predict()
            i = index[str(arm)]
            mab.partial_fit(decisions=[arm], rewards=[table[r][i]])
            return i

        return play

    return _time(f"MABWiser {version('mabwiser')} UCB1", rounds, new_play, arms)


def engine(rounds: int) -> BanditFigures:
    """The engine's `Bandit` (bands, arms catalogue, pending counts, rotation) on the in-process store."""
    from feint.camouflage.engine.bandit import Bandit, MemoryBanditStore
    from feint.camouflage.engine.bands import Band

    bandit = Bandit(MemoryBanditStore(), personas=("apache-debian", "nginx-debian"))
    tenant = uuid.uuid4()
    band = next(iter(Band))
    rng = random.Random(SEED)

    async def run() -> float:
        started = time.process_time()
        for _ in range(rounds):
            arm = await bandit.select(tenant_id=tenant, band=band)
            await bandit.update(tenant_id=tenant, band=band, arm=arm.id, reward=rng.random())
        return time.process_time() - started

    cpu = asyncio.run(run())
    return BanditFigures("feint Bandit (memory store)", rounds, cpu / rounds * 1e6, float("nan"))


def measure(*, rounds: int, arms: int) -> list[BanditFigures]:
    out = [ours(rounds, arms)]
    other = mabwiser(rounds, arms)
    if other is not None:
        out.append(other)
    out.append(engine(rounds))
    return out


def report(figures: list[BanditFigures]) -> None:
    print("bandit select+update, one round per decoy session (process CPU):")
    for f in figures:
        share = "" if f.best_share != f.best_share else f"   best arm {f.best_share:.0%} of the last half"
        print(f"  {f.name:<30} {f.us_per_round:9.1f} us/round   ({f.rounds:,} rounds){share}")
    ours_, other = figures[0], next((f for f in figures if f.name.startswith("MABWiser")), None)
    if other is not None:
        ratio = other.us_per_round / ours_.us_per_round
        verdict = "ours is kept: measured faster" if ratio > 1 else "MABWiser measured faster"
        print(f"  MABWiser / feint UCB1: {ratio:.0f}x the CPU per round ({verdict})")
    else:
        print("  MABWiser not installed: pip install -r bench/camouflage/requirements.txt to compare")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT)
    parser.add_argument("--arms", type=int, default=ARMS_DEFAULT)
    args = parser.parse_args(argv)
    report(measure(rounds=args.rounds, arms=args.arms))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
