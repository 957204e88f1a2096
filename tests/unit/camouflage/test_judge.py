"""Gateway.judge is the decision path without sockets: what the canary simulator replays."""

from __future__ import annotations

import uuid

import pytest

from feint.camouflage.decoy.contract import Request
from feint.camouflage.engine.clients import MemoryClients
from feint.camouflage.engine.decisions import DecisionLog
from feint.camouflage.engine.rulesource import RuleReloader
from feint.camouflage.engine.upstream import Upstream
from feint.camouflage.gateway import Gateway, OnePersona
from feint.camouflage.listener import MinimalNginx

pytestmark = pytest.mark.unit


def request(target: bytes, agent: bytes) -> Request:
    return Request(
        request_line=b"GET " + target + b" HTTP/1.1",
        method=b"GET",
        target=target,
        version=b"HTTP/1.1",
        headers=((b"Host", b"shop"), (b"User-Agent", agent)),
        body=b"",
        problems=frozenset(),
    )


async def test_judge_without_sockets() -> None:
    """Benign stays below the threshold, an injection reaches it; each judgement names its rules and latency."""
    rules = RuleReloader.for_settings(db=None, tenant="t", ruleset="starter", path=None, poll_seconds=60)
    gateway = Gateway(
        upstream=Upstream("http://127.0.0.1:9"),
        rules=rules,
        clients=MemoryClients(),
        diverter=OnePersona(MinimalNginx(), persona="nginx"),
        decisions=DecisionLog(db=None, path=None, queue_max=10),
        tenant_id=uuid.uuid4(),
        divert_threshold=5,
    )
    benign = await gateway.judge(request(b"/products", b"Mozilla/5.0 (X11) Gecko/20100101"), client_ip="192.0.2.1")
    assert not benign.divert and benign.assessment.level < 5 and benign.rules.tag == "starter"
    attack = await gateway.judge(request(b"/?q=1+union+select+2", b"curl/8"), client_ip="192.0.2.2")
    assert attack.divert and attack.assessment.rules and attack.eval_latency_us > 0
    assert attack.key != benign.key and len(attack.record.id) == 36
