"""The decision log: every request the gateway judged, as JSON lines and in PostgreSQL.

The request path only puts a `Decision` on a bounded queue (``put_nowait``): when the queue is
full the decision is dropped and counted (``feint_gateway_decisions_dropped_total``), never
waited for. One task drains the queue in batches of up to ``DECISION_BATCH_ROWS_MAX`` (or what
arrived within ``DECISION_BATCH_SECONDS``), writes them with one ``COPY`` into
``camouflage_decisions`` and appends them to the JSON-lines file, whose records use the Sigma
field names that ``feint shadow ingest`` reads (``c-ip``, ``cs-uri-stem``, ``request``, ...) plus
the gateway's own (``threat``, ``explanation``, ``action``, ``session``, ``persona``, ``arm``).
A batch the database refuses is counted as dropped (with the reason logged); the file still
gets it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import psycopg
import structlog
from prometheus_client import Counter

from feint.errors import FeintError
from feint.platform.db import Database
from feint.shadow.record import RequestRecord

DECISION_BATCH_ROWS_MAX: Final = 1_000
DECISION_BATCH_SECONDS: Final = 0.2

DECISIONS = Counter("feint_gateway_decisions_total", "Gateway decisions by action.", ["action"])
DECISIONS_DROPPED = Counter(
    "feint_gateway_decisions_dropped_total", "Decisions not logged, by reason (queue full, database error).", ["reason"]
)
log = structlog.get_logger(component="feint.camouflage.decisions")

_COLUMNS: Final = (
    "id", "decided_at", "tenant_id", "client_key", "fingerprint", "c_ip", "cs_method", "cs_uri_stem",
    "cs_uri_query", "cs_user_agent", "cs_referer", "sc_status", "cs_host", "cs_version", "request_line", "threat",
    "action", "diverted", "gateway_error", "explanation", "rules", "ruleset_version", "rules_tag", "rollout_id",
    "canary", "eval_latency_us", "session_id", "persona", "arm",
)  # fmt: skip


@dataclass(slots=True, kw_only=True)
class Decision:
    """One judged request. ``record.id`` is the decision id; ``record.sc_status`` the answer's status."""

    record: RequestRecord
    decided_at: datetime
    tenant_id: uuid.UUID
    client_key: str
    fingerprint: str
    threat: int
    action: str  # allow, divert, refuse, error
    explanation: list[dict[str, Any]]
    rules: tuple[str, ...]
    rules_tag: str
    eval_latency_us: float
    ruleset_version: int | None = None
    rollout_id: uuid.UUID | None = None
    canary: bool = False
    session_id: str | None = None
    persona: str | None = None
    arm: str | None = None

    @property
    def diverted(self) -> bool:
        return self.action == "divert"

    @property
    def gateway_error(self) -> bool:
        return self.action == "error" or (self.record.sc_status is not None and self.record.sc_status >= 500)

    def row(self) -> tuple[Any, ...]:
        r = self.record
        return (
            r.id, self.decided_at, self.tenant_id, self.client_key, self.fingerprint, r.c_ip, r.cs_method,
            r.cs_uri_stem, r.cs_uri_query, r.cs_user_agent, r.cs_referer, r.sc_status, r.cs_host, r.cs_version,
            r.request_line, self.threat, self.action, self.diverted, self.gateway_error,
            json.dumps(self.explanation), list(self.rules), self.ruleset_version, self.rules_tag, self.rollout_id,
            self.canary, self.eval_latency_us, self.session_id, self.persona, self.arm,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": r.id,
            "time": self.decided_at.isoformat(),
            "c-ip": r.c_ip,
            "cs-method": r.cs_method,
            "cs-uri-stem": r.cs_uri_stem,
            "cs-uri-query": r.cs_uri_query,
            "cs-user-agent": r.cs_user_agent,
            "cs-referer": r.cs_referer,
            "sc-status": r.sc_status,
            "cs-host": r.cs_host,
            "cs-version": r.cs_version,
            "request": r.request_line,
            "tenant_id": str(self.tenant_id),
            "client_key": self.client_key,
            "fingerprint": self.fingerprint,
            "threat": self.threat,
            "action": self.action,
            "diverted": self.diverted,
            "gateway_error": self.gateway_error,
            "explanation": self.explanation,
            "rules": list(self.rules),
            "ruleset_version": self.ruleset_version,
            "rules_tag": self.rules_tag,
            "rollout_id": None if self.rollout_id is None else str(self.rollout_id),
            "canary": self.canary,
            "eval_latency_us": round(self.eval_latency_us, 1),
            "session": self.session_id,
            "persona": self.persona,
            "arm": self.arm,
        }


class DecisionLog:
    """The bounded queue and the task that writes it out (to a database, a file, or both)."""

    def __init__(self, *, db: Database | None, path: Path | None, queue_max: int) -> None:
        self.db = db
        self.path = path
        self.queue: asyncio.Queue[Decision] = asyncio.Queue(maxsize=queue_max)
        self.written = 0
        self._file: IO[str] | None = None

    def submit(self, decision: Decision) -> None:
        """Queue a decision for writing; never waits (a full queue drops it and counts the drop)."""
        DECISIONS.labels(decision.action).inc()
        try:
            self.queue.put_nowait(decision)
        except asyncio.QueueFull:
            DECISIONS_DROPPED.labels("queue-full").inc()

    async def run(self) -> None:
        """Write batches until cancelled; the batch in hand is written before the task ends."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        try:
            while True:
                batch = [await self.queue.get()]
                loop = asyncio.get_running_loop()
                deadline = loop.time() + DECISION_BATCH_SECONDS
                while len(batch) < DECISION_BATCH_ROWS_MAX:
                    try:
                        async with asyncio.timeout(max(0.0, deadline - loop.time())):
                            batch.append(await self.queue.get())
                    except TimeoutError:
                        break
                await self.write(batch)
        finally:
            await self.flush()
            if self._file is not None:
                self._file.close()

    async def flush(self) -> None:
        """Write whatever is queued now (shutdown, tests)."""
        while not self.queue.empty():
            batch: list[Decision] = []
            while not self.queue.empty() and len(batch) < DECISION_BATCH_ROWS_MAX:
                batch.append(self.queue.get_nowait())
            await self.write(batch)

    async def write(self, batch: Sequence[Decision]) -> None:
        if self._file is not None:
            text = "".join(json.dumps(d.to_json(), separators=(",", ":")) + "\n" for d in batch)
            await asyncio.to_thread(self._append, text)
        if self.db is not None:
            try:
                await self._copy(batch)
            except (FeintError, psycopg.Error) as exc:
                DECISIONS_DROPPED.labels("database").inc(len(batch))
                log.warning("decision_batch_not_stored", rows=len(batch), error=str(exc)[:200])
                return
        self.written += len(batch)

    def _append(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()

    async def _copy(self, batch: Sequence[Decision]) -> None:
        if self.db is None:
            return
        async with self.db.connection() as conn, conn.cursor() as cursor:
            statement = f"COPY camouflage_decisions ({', '.join(_COLUMNS)}) FROM STDIN"
            async with cursor.copy(statement) as copy:
                for decision in batch:
                    await copy.write_row(decision.row())
