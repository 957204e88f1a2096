"""Decoy sessions: one per diverted client key, sticky until it has been idle for a while.

The gateway asks `SessionBook.sticky` on every request (a dict lookup) and `answer` when a
request reaches the divert threshold (or the client is sticky); the arm is chosen once, when the session starts, for the
band of the threat level that started it. Each decoy request is `record`-ed (path, time,
honeytokens taken). `sweep` ends sessions idle for ``idle_seconds``: their engagement becomes
the bandit's reward for their arm. The book is bounded (`SESSIONS_MAX`): when full, the least
recently active session is ended early, with its reward so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import structlog
from prometheus_client import Counter

from feint.camouflage.decoy.contract import Connection, Reply, Request, Responder
from feint.camouflage.engine.bandit import Bandit
from feint.camouflage.engine.bands import Band, EngagementProfile, HoldGate, band_of
from feint.camouflage.engine.engage import labyrinth, shape, status_and_server, wants_labyrinth
from feint.camouflage.engine.events import EventId, EventSink
from feint.camouflage.engine.honeytokens import HoneytokenWatch, TokenSet, fill_reply, swap_site_tokens
from feint.errors import InvariantViolated

SESSIONS_MAX: Final = 100_000
SESSION_IDLE_SECONDS_DEFAULT: Final = 300.0
SESSION_PATHS_MAX: Final = 64  # distinct paths remembered per session (the count goes on)
SWEEP_INTERVAL_SECONDS: Final = 5.0
# Reward: each part saturates at its "full" value; the weights sum to 1, so a reward is 0-1.
FOLLOWUPS_FULL: Final = 20
HELD_SECONDS_FULL: Final = 600.0
TOKENS_FULL: Final = 1
REWARD_WEIGHTS: Final = (0.4, 0.3, 0.3)  # follow-up requests, time held, honeytokens taken

SESSION_END_FAILURES = Counter(
    "feint_camouflage_session_end_failures_total",
    "Sessions whose end could not be fully recorded (bandit or database failure); logged with the session id.",
)

log = structlog.get_logger(component="feint.camouflage.sessions")


@dataclass(slots=True)
class Session:
    """A diverted client's time with its decoy."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    client_key: str
    src_host: str
    threat: int
    band: Band
    arm: str  # "persona/profile"
    persona: str
    profile: EngagementProfile
    started: float  # epoch seconds
    last_seen: float
    requests: int = 0
    tokens_taken: int = 0
    held_seconds: float = 0.0  # time the decoy deliberately held the client (delays, trickles)
    paths: list[str] = field(default_factory=list)
    ended: float | None = None
    tokens: TokenSet | None = field(default=None, repr=False)
    seed: bytes = field(default_factory=lambda: uuid.uuid4().bytes, repr=False)

    @property
    def followups(self) -> int:
        """Requests after the one that started the session."""
        return max(0, self.requests - 1)

    @property
    def engaged_seconds(self) -> float:
        """How long the client stayed: from the first to the last decoy request, plus holds."""
        return max(0.0, self.last_seen - self.started) + self.held_seconds


def reward(session: Session) -> float:
    """Normalised engagement of a session, 0-1: follow-ups, time held and honeytokens taken."""
    w_follow, w_held, w_tokens = REWARD_WEIGHTS
    value = (
        w_follow * min(1.0, session.followups / FOLLOWUPS_FULL)
        + w_held * min(1.0, session.engaged_seconds / HELD_SECONDS_FULL)
        + w_tokens * min(1.0, session.tokens_taken / TOKENS_FULL)
    )
    if not 0.0 <= value <= 1.0 + 1e-9:
        raise InvariantViolated(f"reward {value} outside 0-1")
    return min(1.0, value)


class SessionStore(Protocol):
    """Where sessions are kept for the management API and labels (PostgreSQL: camouflage/store.py)."""

    async def started(self, session: Session) -> None: ...
    async def ended(self, session: Session, *, reward: float) -> None: ...


class SessionBook:
    """Sessions per client key of this process, ended after ``idle_seconds`` without a request."""

    def __init__(
        self,
        *,
        tenant_id: uuid.UUID,
        bandit: Bandit,
        events: EventSink,
        personas: Mapping[str, Responder],
        watch: HoneytokenWatch,
        gate: HoldGate | None = None,
        store: SessionStore | None = None,
        idle_seconds: float = SESSION_IDLE_SECONDS_DEFAULT,
        sessions_max: int = SESSIONS_MAX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant_id = tenant_id
        self.bandit = bandit
        self.events = events
        self.personas = personas
        self.watch = watch
        self.gate = gate or HoldGate()
        missing = set(bandit.personas) - set(personas)
        if missing:
            raise InvariantViolated(f"the bandit plays personas with no responder: {sorted(missing)}")
        self.store = store
        self.idle_seconds = idle_seconds
        self.sessions_max = sessions_max
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def sticky(self, client_key: str) -> Session | None:
        """The client's live session, if any (sticky diversion); no I/O."""
        session = self._sessions.get(client_key)
        if session is None or self.clock() - session.last_seen > self.idle_seconds:
            return None
        return session

    async def divert(self, *, client_key: str, threat: int, src_host: str = "") -> Session:
        """The client's session, started now (arm chosen for the band of ``threat``) if it has none."""
        key = client_key
        tenant_id = self.tenant_id
        found = self.sticky(client_key)
        if found is not None:
            return found
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:  # two requests of one new client start one session
                found = self.sticky(client_key)
                if found is not None:
                    return found
                stale = self._sessions.pop(key, None)
                if stale is not None:
                    await self._finish(stale)
                band = band_of(threat)
                arm = await self.bandit.select(tenant_id=tenant_id, band=band)
                now = self.clock()
                session = Session(
                    id=uuid.uuid4(),
                    tenant_id=tenant_id,
                    client_key=client_key,
                    src_host=src_host,
                    threat=threat,
                    band=band,
                    arm=arm.id,
                    persona=arm.persona,
                    profile=arm.profile,
                    started=now,
                    last_seen=now,
                )
                session.tokens = await self.watch.plant(tenant_id=tenant_id, session_id=session.id)
                self._sessions[key] = session
                while len(self._sessions) > self.sessions_max:
                    _, oldest = self._sessions.popitem(last=False)
                    await self._finish(oldest)
                self.events.emit(
                    EventId.SESSION_START,
                    tenant_id=tenant_id,
                    session_id=session.id,
                    src_host=src_host,
                    client_key=client_key,
                    threat=threat,
                    details={"band": band.value, "arm": arm.id},
                )
                if self.store is not None:
                    await self.store.started(session)
                return session
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._locks.pop(key, None)

    async def answer(
        self, *, client_key: str, threat: int, request: Request, conn: Connection
    ) -> tuple[Session, Reply]:
        """The decoy's answer to a diverted request: the session (started on first divert), and
        the persona's reply with the session's honeytokens filled in and the profile's timing."""
        session = await self.divert(client_key=client_key, threat=threat, src_host=conn.peer_host)
        produced = self.personas[session.persona].respond(request, conn)
        reply = await produced if inspect.isawaitable(produced) else produced
        now = self.clock()
        if session.profile.labyrinth and reply.stream is None:
            status, server = status_and_server(reply.data)
            if wants_labyrinth(request, status):
                reply = Reply(data=labyrinth(request, seed=session.seed, server=server, now=now), close=reply.close)
        taken = 0
        if session.tokens is not None and reply.stream is None:
            data, taken = fill_reply(reply.data, session.tokens)
            data, swapped = swap_site_tokens(data, session.tokens)
            taken += swapped
            if taken:
                reply = Reply(data=data, close=reply.close, trickle=reply.trickle)
        shaped = shape(reply, session.profile, gate=self.gate, now=now)
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        self.record(session, path=path, tokens_taken=1 if taken else 0, held_seconds=shaped.held_seconds, now=now)
        method = request.method.decode("latin-1")[:16]
        self._emit(EventId.DECOY_REQUEST, session, {"method": method, "path": path[:512], "arm": session.arm})
        if taken:
            self._emit(EventId.HONEYTOKEN_TAKEN, session, {"path": path[:512], "placeholders": taken})
        if not shaped.admitted:
            self._emit(EventId.HOLD_REFUSED, session, {"held": self.gate.held})
        return session, shaped.reply

    def _emit(self, event_id: EventId, session: Session, details: dict[str, object]) -> None:
        self.events.emit(
            event_id,
            tenant_id=session.tenant_id,
            session_id=session.id,
            src_host=session.src_host,
            client_key=session.client_key,
            threat=session.threat,
            details=details,
        )

    def record(
        self, session: Session, *, path: str, tokens_taken: int = 0, held_seconds: float = 0.0, now: float | None = None
    ) -> None:
        """One decoy request of ``session``: its path, when, honeytokens planted in the answer and
        how long the answer holds the connection."""
        if tokens_taken < 0 or held_seconds < 0:
            raise InvariantViolated("tokens taken and seconds held cannot be negative")
        session.requests += 1
        session.tokens_taken += tokens_taken
        session.held_seconds += held_seconds
        session.last_seen = self.clock() if now is None else now
        if len(session.paths) < SESSION_PATHS_MAX and path not in session.paths:
            session.paths.append(path[:512])
        if self._sessions.get(session.client_key) is session:
            self._sessions.move_to_end(session.client_key, last=True)

    async def sweep(self, *, now: float | None = None) -> list[Session]:
        """End every session idle longer than ``idle_seconds``; each rewards its arm."""
        moment = self.clock() if now is None else now
        idle = [s for s in self._sessions.values() if moment - s.last_seen > self.idle_seconds]
        for session in idle:
            self._sessions.pop(session.client_key, None)
            await self._finish(session, now=moment)
        return idle

    async def close(self) -> None:
        """End every session (shutdown): rewards are recorded with the engagement so far."""
        await self.stop()
        while self._sessions:
            _, session = self._sessions.popitem(last=False)
            await self._finish(session)
        await self.events.stop()

    async def _finish(self, session: Session, *, now: float | None = None) -> None:
        """`_end`, for callers that go on with other sessions or a new client's request (the sweep,
        eviction, shutdown): a failure is logged with the session and counted, never raised to them."""
        try:
            await self._end(session, now=now)
        except Exception:
            SESSION_END_FAILURES.inc()
            log.exception("session_end_failed", session=str(session.id), arm=session.arm, band=session.band.value)

    async def _end(self, session: Session, *, now: float | None = None) -> None:
        """Reward the session's arm, then log and store the session's end (even when the bandit
        update failed: its exception is raised after)."""
        session.ended = self.clock() if now is None else now
        value = reward(session)
        retired: list[str] = []
        try:
            retired = await self.bandit.update(
                tenant_id=session.tenant_id, band=session.band, arm=session.arm, reward=value
            )
        finally:
            await self._ended(session, value, retired)

    async def _ended(self, session: Session, value: float, retired: list[str]) -> None:
        self.events.emit(
            EventId.SESSION_END,
            tenant_id=session.tenant_id,
            session_id=session.id,
            src_host=session.src_host,
            client_key=session.client_key,
            threat=session.threat,
            details={
                "arm": session.arm,
                "requests": session.requests,
                "tokens_taken": session.tokens_taken,
                "engaged_seconds": round(session.engaged_seconds, 3),
                "reward": round(value, 4),
            },
        )
        for arm in retired:
            self.events.emit(
                EventId.ARM_RETIRED,
                tenant_id=session.tenant_id,
                details={"band": session.band.value, "arm": arm},
            )
        if self.store is not None:
            await self.store.ended(session, reward=value)

    async def start(self) -> None:
        """Run `sweep` every `SWEEP_INTERVAL_SECONDS` in the background, and the event senders."""
        self.events.start()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="camouflage-session-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            try:
                await self.sweep()
            except Exception:  # a failed sweep is retried next interval; the gateway keeps serving
                log.exception("session_sweep_failed")
