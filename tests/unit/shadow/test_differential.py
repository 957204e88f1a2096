"""Both engines (and ClickHouse) agree on every request and rule over 100,000 requests."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from feint.shadow import synth
from feint.shadow.rules import starter_rules
from feint.shadow.rules.matcher import compile_matcher
from feint.shadow.rules.model import rule_set
from feint.shadow.rules.parse import load_rules

from .helpers import differential, differential_corpus

pytestmark = pytest.mark.unit

ZOO = Path(__file__).with_name("rules_zoo.yml")
REQUESTS = 100_000


def test_engines_agree_on_100k_requests(tmp_path: Path) -> None:
    """Benign, hostile, and per-rule witnesses and near misses: identical verdicts everywhere."""
    rules = [*starter_rules(), *load_rules(ZOO)]
    requests = differential_corpus(rules, seed=20260115, total=REQUESTS, per_rule=200)
    started = time.perf_counter()
    outcome = differential(rules, requests, tmp_path)
    assert outcome["compared"] == len(requests) >= REQUESTS
    never = [rule.title for rule in rules if outcome[rule.key] == 0]
    assert never == [], f"rules no witness fired: {never}"
    assert time.perf_counter() - started < 120


def test_witnesses_fire_and_near_misses_do_not() -> None:
    """A witness fires its rule; a near miss (one literal broken) mostly does not."""
    rules = [*starter_rules(), *load_rules(ZOO)]
    matcher = compile_matcher(rule_set(rules))
    rng = random.Random(7)
    fired = missed = trials = 0
    for index, rule in enumerate(rules):
        for attempt in range(20):
            built = synth.witness(rule.expr, rng, f"{index}.{attempt}")
            fired += matcher.hits(built.record)[index]
            missed += not matcher.hits(synth.near_miss(built, rng))[index]
            trials += 1
    assert fired / trials > 0.95
    assert missed / trials > 0.8
