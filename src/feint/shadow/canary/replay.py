"""``feint rollout simulate`` on files: the gateway's own decision path, fed recorded traffic.

Each recorded request becomes the request the gateway would have parsed (method, target, version,
Host, User-Agent, Referer) and is judged by :meth:`feint.camouflage.gateway.Gateway.judge` with a
:class:`~feint.camouflage.engine.rulesource.RuleReloader` that holds production and the candidate
as a live rollout would: the reloader's ``rules_for`` makes the split, the gateway scores the
request (rules, framing, user agent, the client's behaviour window) and decides. A diverted
client stays diverted, as its decoy session would keep it. Nothing here scores or splits on its
own; :func:`feint.shadow.canary.simulate.run` drives the controller on simulated time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pyarrow.parquet as pq

from feint.camouflage.decoy.contract import Connection, Reply, Request
from feint.camouflage.engine.clients import MemoryClients
from feint.camouflage.engine.decisions import DecisionLog
from feint.camouflage.engine.fingerprint import client_key, fingerprint
from feint.camouflage.engine.rulesource import Canary, LoadedRules, RuleReloader, compile_rules
from feint.camouflage.gateway import Gateway, Session
from feint.shadow.canary import plan as plans
from feint.shadow.canary.simulate import Verdict, run
from feint.shadow.evaluate import _prepare_traffic
from feint.shadow.ingest.dataset import read_records
from feint.shadow.labels import load_labels
from feint.shadow.record import RequestRecord
from feint.shadow.rules import load_rules, rule_set

DIVERT_THRESHOLD_DEFAULT: Final = 5
STICKY_CLIENTS_MAX: Final = 1_000_000


class _StickyClients:
    """Diverted clients stay diverted, as the session book keeps them (bounded, oldest out)."""

    def __init__(self) -> None:
        self.keys: OrderedDict[str, Session] = OrderedDict()

    def sticky(self, client_key: str) -> Session | None:
        return self.keys.get(client_key)

    def mark(self, client_key: str) -> None:
        self.keys[client_key] = _SimSession()
        if len(self.keys) > STICKY_CLIENTS_MAX:
            self.keys.popitem(last=False)

    async def answer(  # pragma: no cover - judge() never asks for an answer
        self, *, client_key: str, threat: int, request: Request, conn: Connection
    ) -> tuple[Session, Reply]:
        raise NotImplementedError


class _SimSession:
    id = "simulated"
    arm = "simulated"
    persona = "simulated"


class _NoUpstream:  # pragma: no cover - judge() never forwards
    async def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def request_of(record: RequestRecord) -> Request:
    """The request a log line describes, as the gateway's parser would have handed it over."""
    target = (record.cs_uri_stem or "/") + (f"?{record.cs_uri_query}" if record.cs_uri_query else "")
    method = (record.cs_method or "GET").encode("utf-8", "surrogateescape")
    version = (record.cs_version or "HTTP/1.1").encode("ascii", "replace")
    headers = [
        (name, value.encode("utf-8", "surrogateescape"))
        for name, value in (
            (b"Host", record.cs_host),
            (b"User-Agent", record.cs_user_agent),
            (b"Referer", record.cs_referer),
        )
        if value
    ]
    raw_target = target.encode("utf-8", "surrogateescape")
    return Request(
        request_line=b" ".join((method, raw_target, version)),
        method=method,
        target=raw_target,
        version=version,
        headers=tuple(headers),
        body=b"",
        problems=frozenset(),
    )


def _compiled(path: Path, *, label: str) -> LoadedRules:
    return compile_rules(rule_set(load_rules(path), name=path.name), label=label, tag=label)


def _labels(path: Path, work: Path) -> dict[str, int]:
    out = work / "labels.parquet"
    load_labels(path, out)
    table = pq.read_table(out, columns=["id", "label"])
    return dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True))


async def simulate_records(
    records: Iterator[RequestRecord],
    *,
    production: LoadedRules,
    candidate: LoadedRules,
    labels: dict[str, int],
    plan: plans.Plan,
    rate: float,
    divert_threshold: int = DIVERT_THRESHOLD_DEFAULT,
) -> dict[str, Any]:
    rollout_id = uuid.uuid4()
    candidate = dataclasses.replace(candidate, rollout_id=rollout_id, canary=True)

    async def nothing(_: str | None) -> LoadedRules | None:
        return None

    reloader = RuleReloader(nothing, poll_seconds=3600.0)
    reloader.current = production
    sticky = _StickyClients()
    gateway = Gateway(
        upstream=_NoUpstream(),  # type: ignore[arg-type]
        rules=reloader,
        clients=MemoryClients(),
        diverter=sticky,
        decisions=DecisionLog(db=None, path=None, queue_max=1),
        tenant_id=rollout_id,
        divert_threshold=divert_threshold,
    )
    weight_now: list[float] = [-1.0]

    async def judge(record: RequestRecord, weight: float) -> Verdict:
        if weight != weight_now[0]:
            reloader.set_canary(Canary(rollout_id=rollout_id, weight_percent=weight, phase="running", rules=candidate))
            weight_now[0] = weight
        request = request_of(record)
        # An address label for a log line without one; nothing listens on it (ruff S104, bandit B104).
        client_ip = record.c_ip or "0.0.0.0"  # noqa: S104  # nosec B104
        try:
            judged = await gateway.judge(request, client_ip=client_ip)
        except Exception:  # noqa: BLE001 - a failing evaluation is what the error guard counts
            # The slice that failed: the key the gateway computes first, split as it would be.
            head = fingerprint(request.headers, request.version)
            key = client_key(ip=client_ip, user_agent=request.header(b"user-agent"), head_fingerprint=head)
            rules = reloader.rules_for(key)
            return Verdict(diverted=False, level=0, canary=rules is not None and rules.canary, error=True)
        if judged.divert:
            sticky.mark(judged.key)
        gateway.clients.put(judged.key, judged.window)
        return Verdict(
            diverted=judged.divert,
            level=judged.assessment.level,
            canary=judged.rules.canary,
            latency_us=judged.eval_latency_us,
        )

    return await run(records, labels=labels, plan=plan, judge=judge, rate=rate)


def simulate_files(
    *, production: Path, candidate: Path, traffic: Path, labels: Path, plan: plans.Plan, rate: float
) -> dict[str, Any]:
    """Rule files or folders, a log or dataset, a labels CSV → the simulation's JSON object."""
    prod = _compiled(production, label="production")
    cand = _compiled(candidate, label="candidate")
    with tempfile.TemporaryDirectory(prefix="feint-simulate-") as tmp:
        work = Path(tmp)
        dataset, _ = _prepare_traffic([traffic], work, None, None)
        label_map = _labels(labels, work)
        return asyncio.run(
            simulate_records(
                read_records(dataset), production=prod, candidate=cand, labels=label_map, plan=plan, rate=rate
            )
        )
