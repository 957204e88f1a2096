"""The management API's pure rules: UCB1 indices, what of a honeytoken is shown, decision
explanations split by evidence, event and allow-list filters, the persona catalogue."""

from __future__ import annotations

import hashlib
import random
import uuid
from datetime import UTC, datetime

import pytest

from feint.camouflage import service
from feint.camouflage.engine.bandit import ucb1_choose, ucb1_indices
from feint.camouflage.engine.honeytokens import Honeytokens, TokenKind
from feint.camouflage.store import TOKEN_HINT_CHARS
from feint.errors import NotFound, ValidationFailed

pytestmark = pytest.mark.unit


def test_ucb1_indices_rank_as_the_bandit_chooses() -> None:
    """With every arm tried, the arm UCB1 plays is the one with the highest published index."""
    rng = random.Random(7)
    for _ in range(200):
        pulls = [rng.randint(1, 50) for _ in range(rng.randint(1, 6))]
        sums = [rng.random() * n for n in pulls]
        indices = ucb1_indices(pulls, sums)
        assert all(i is not None for i in indices)
        best = max(range(len(pulls)), key=lambda i: indices[i] or 0.0)
        assert ucb1_choose(pulls, sums) == best


def test_ucb1_index_of_untried_arms_is_none() -> None:
    """An untried arm has no index (UCB1 plays it first); one pull in all: the index is the mean."""
    assert ucb1_indices([0, 0], [0.0, 0.0]) == [None, None]
    assert ucb1_indices([1, 0], [0.25, 0.0]) == [0.25, None]


def test_honeytokens_are_never_shown_whole() -> None:
    """Of each minted kind the API shows its fixed prefix and four characters, and 12 hex of the digest."""
    tokens = Honeytokens(b"k" * 32).mint(uuid.uuid4())
    for kind, value in tokens.values.items():
        hint = value[:TOKEN_HINT_CHARS]  # what the store keeps
        digest = hashlib.sha256(value.encode()).hexdigest()
        shown = service.honeytoken(
            {
                "kind": kind.value,
                "hint": hint,
                "digest": digest,
                "session_id": tokens.session_id,
                "created_at": datetime.now(UTC),
                "uses": 0,
                "last_used_at": None,
            }
        )
        fixed = service.TOKEN_PUBLIC_PREFIX[kind.value]
        assert value.startswith(fixed)
        assert len(shown.prefix) <= len(fixed) + service.TOKEN_RANDOM_CHARS_SHOWN < len(value)
        assert shown.digest_prefix == digest[:12] and not shown.used
        assert value not in shown.model_dump_json() and digest not in shown.model_dump_json()
    assert set(service.TOKEN_PUBLIC_PREFIX) == {k.value for k in TokenKind}


def test_decision_reasons_grouped_by_evidence() -> None:
    """Rules, request signals and behaviour partition the explanation, in its order."""
    explanation = [
        {"signal": "rule", "points": 6.0, "detail": "sqli-1 SQL injection"},
        {"signal": "user-agent", "points": 1.0, "detail": "non-browser"},
        {"signal": "breadth", "points": 2.0, "detail": "9 distinct paths answered 404"},
        {"signal": "response-rule", "points": 2.0, "detail": "err-1"},
        {"signal": "address", "points": 4.0, "detail": "6 diverted requests of other clients"},
    ]
    row = {
        "id": uuid.uuid4(), "decided_at": datetime.now(UTC), "threat": 10, "action": "divert",
        "client_key": "0" * 32, "fingerprint": "f", "c_ip": "192.0.2.1", "cs_method": "GET", "cs_uri_stem": "/",
        "cs_uri_query": None, "cs_user_agent": "curl/8", "cs_host": "shop", "sc_status": 404,
        "explanation": explanation, "rules": ["sqli-1"], "ruleset_version": 3, "rules_tag": "t", "rollout_id": None,
        "canary": False, "eval_latency_us": 12.5, "session_id": uuid.uuid4(), "persona": "nginx-debian",
        "arm": "nginx-debian/tarpit",
    }  # fmt: skip
    out = service.decision(row)
    assert out.band == "maximum"
    assert [r.detail for r in out.rule_hits] == ["sqli-1 SQL injection", "err-1"]
    assert [r.signal for r in out.request_signals] == ["user-agent"]
    assert [r.signal for r in out.behaviour] == ["breadth", "address"]
    assert [r.model_dump() for r in out.explanation] == explanation


@pytest.mark.parametrize(("given", "number"), [("8005", 8005), ("feint.session.start", 8001), (None, None)])
def test_event_filter(given: str | None, number: int | None) -> None:
    """An event filter is a known number or dotted name."""
    assert service.event_number(given) == number


@pytest.mark.parametrize("given", ["9999", "8000", "feint.nothing", "-1", ""])
def test_unknown_event_is_422_naming_the_parameter(given: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        service.event_number(given)
    assert caught.value.errors[0]["field"] == "query.event"


def test_allow_list_clients() -> None:
    """A client key stays as it is; an address is normalised as PostgreSQL prints it; anything else is 422."""
    key = uuid.uuid4().hex
    assert service.allow_client(key) == key
    assert service.allow_client("2001:DB8:0::0001") == "2001:db8::1"
    assert service.allow_client("192.0.2.10") == "192.0.2.10"
    for bad in (key.upper(), "example.com", "192.0.2.300", key + "0"):
        with pytest.raises(ValidationFailed) as caught:
            service.allow_client(bad)
        assert caught.value.errors[0]["field"] == "path.client"


def test_time_window_must_not_be_empty() -> None:
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    service.check_window(early, late)
    service.check_window(None, late)
    with pytest.raises(ValidationFailed):
        service.check_window(late, early)


def test_persona_catalogue() -> None:
    """Every shipped persona with its Server header, provenance and the statuses its answers cover."""
    personas = service.personas()
    assert [p.name for p in personas] == sorted(p.name for p in personas) and personas
    for p in personas:
        assert p.recorded_from.configuration and 404 in p.statuses
        assert p.server or p.family in ("express", "spring-boot"), p.name  # neither sends a Server header
        assert len(p.arms) == len(set(p.arms)) and all(a.startswith(p.name + "/") for a in p.arms)
    with pytest.raises(NotFound):
        service.persona("iis-nothing")
