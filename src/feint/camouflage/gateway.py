"""The gateway on port 8080: judges every request, then forwards it or lets a decoy answer.

    client bytes ──► decoy server (framing, limits, keep-alive)            decoy/server.py
                        │ Request, every byte as sent
                        ▼
                     Gateway.respond
                        │ client key (address, user agent, head fingerprint)  engine/fingerprint.py
                        │ threat 0-10: rules on the request's views + behaviour engine/threat.py
                        ├── below the divert threshold ──► upstream, answer streamed back
                        │                                   engine/upstream.py
                        └── at or above it, or the client is in a decoy session ──► its decoy
                        ▼                                   (the session book: persona x profile)
                     decision log (JSON lines + PostgreSQL), metering             engine/decisions.py

The upstream never sees a diverted request. A client once diverted stays with its decoy for the
session (sticky), whatever its later requests look like, so that a scanner cannot tell the decoy
from the application by sending one harmless request. Requests whose framing the parser could
not read (no version, a broken request line, lost framing) cannot be forwarded faithfully and
always go to a decoy, which answers them as the server it plays would.

A trusted proxy (``FEINT_GATEWAY_TRUSTED_PROXIES``) may ask for decisions only, at
``AUTHZ_PATH`` (nginx ``auth_request``, Envoy HTTP ``ext_authz``): the original request is
judged exactly as above (from ``X-Original-URI``/``X-Original-Method``, nginx's convention, or
the path after ``AUTHZ_PATH``, Envoy's ``path_prefix``; the client from ``X-Real-IP`` or the
last ``X-Forwarded-For`` entry) and the answer is 200 (allow) or 403 with
``X-Feint-Decision: divert``, on which the proxy sends the request to this listener with
``X-Feint-Divert: 1`` (``docs/gateway-nginx.conf``). With ``X-Feint-Mode: route`` a divert is
200 with ``X-Feint-Route: decoy`` instead, for Envoy's ``clear_route_cache`` routing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from prometheus_client import Counter, Histogram

from feint.camouflage.decoy.contract import Connection, Limits, Problem, Reply, Request, Responder, TimeoutPhase
from feint.camouflage.engine import threat
from feint.camouflage.engine.clients import ClientStore
from feint.camouflage.engine.decisions import Decision, DecisionLog
from feint.camouflage.engine.fingerprint import client_key, fingerprint
from feint.camouflage.engine.rulesource import LoadedRules, RuleReloader
from feint.camouflage.engine.upstream import Upstream, UpstreamFailed
from feint.errors import InvariantViolated
from feint.shadow.record import RequestRecord

# The gateway frames requests within nginx's defaults, so that what nginx would pass, it passes.
GATEWAY_LIMITS: Final = Limits(
    request_line_bytes_max=8 * 1024,
    header_line_bytes_max=8 * 1024,
    header_bytes_max=32 * 1024,
    header_count_max=100,
    body_bytes_max=10 * 1024 * 1024,
    header_timeout_seconds=60.0,
    body_timeout_seconds=60.0,
    keepalive_timeout_seconds=75.0,
    keepalive_requests_max=1_000,
)
# Problems after which the request cannot be re-sent faithfully: a decoy answers it.
UNFORWARDABLE: Final = frozenset(
    {
        Problem.MALFORMED_REQUEST_LINE,
        Problem.BAD_METHOD,
        Problem.BAD_VERSION,
        Problem.UNSUPPORTED_VERSION,
        Problem.HTTP09,
        Problem.BAD_HEADER_LINE,
        Problem.BAD_CONTENT_LENGTH,
        Problem.BAD_CHUNKED,
        Problem.CONTENT_LENGTH_AND_CHUNKED,
        Problem.UNKNOWN_TRANSFER_ENCODING,
        Problem.REQUEST_LINE_TOO_LONG,
        Problem.HEADER_LINE_TOO_LONG,
        Problem.HEADERS_TOO_LARGE,
        Problem.TOO_MANY_HEADERS,
        Problem.BODY_TOO_LARGE,
    }
)
FALLBACK_SESSIONS_MAX: Final = 100_000
AUTHZ_PATH: Final = b"/.feint/authz"
DIVERT_HEADER: Final = b"x-feint-divert"
_AUTHZ_HEADERS: Final = frozenset(
    {b"x-original-uri", b"x-original-method", b"x-feint-mode", b"x-feint-divert", b"content-length"}
)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Windows of addresses live beside those of clients, under this prefix (client keys are hex).
ADDRESS_PREFIX: Final = "ip:"

UPSTREAM_ERRORS = Counter("feint_gateway_upstream_errors_total", "Upstream failures answered 502/504.", ["reason"])
THREAT_LEVELS = Histogram(
    "feint_gateway_threat_level", "Threat level of judged requests.", buckets=tuple(float(n) for n in range(11))
)


class Session(Protocol):
    """A decoy session: one client, one arm (persona x engagement profile) for its whole length."""

    @property
    def id(self) -> object: ...
    @property
    def arm(self) -> str: ...
    @property
    def persona(self) -> str: ...


class Diverter(Protocol):
    """Who answers diverted clients (the learning engineer's session book implements this)."""

    def sticky(self, client_key: str) -> Session | None: ...

    async def answer(
        self, *, client_key: str, threat: int, request: Request, conn: Connection
    ) -> tuple[Session, Reply]: ...


class ThreatAlerts(Protocol):
    """Where a high threat is alerted (the learning side's EventSink: event 8006, threat >= 9)."""

    def emit_threat(
        self, *, tenant_id: uuid.UUID | None, threat: int, src_host: str, client_key: str, details: Mapping[str, Any]
    ) -> object: ...


class Meter(Protocol):
    """Counts protected requests for the tenant's credits; may refuse when metering is closed."""

    def admit(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _FixedSession:
    id: str
    arm: str
    persona: str


class OnePersona:
    """A diverter with one persona for every session (used until the bandit's book is wired in)."""

    def __init__(self, responder: Responder, *, persona: str, profile: str = "instant") -> None:
        self.responder = responder
        self.persona = persona
        self.profile = profile
        self.sessions: OrderedDict[str, _FixedSession] = OrderedDict()

    def sticky(self, client_key: str) -> Session | None:
        return self.sessions.get(client_key)

    async def answer(
        self, *, client_key: str, threat: int, request: Request, conn: Connection
    ) -> tuple[Session, Reply]:
        session = self.sessions.get(client_key)
        if session is None:
            session = _FixedSession(str(uuid.uuid4()), f"{self.persona}/{self.profile}", self.persona)
            self.sessions[client_key] = session
            if len(self.sessions) > FALLBACK_SESSIONS_MAX:
                self.sessions.popitem(last=False)
        reply = self.responder.respond(request, conn)
        if not isinstance(reply, Reply):
            reply = await reply
        return session, reply


def _plain(status: bytes, text: bytes) -> Reply:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(text)).encode()
    return Reply(data=head + b"\r\nConnection: close\r\n\r\n" + text, close=True)


BAD_GATEWAY: Final = _plain(b"502 Bad Gateway", b"Bad Gateway\n")
GATEWAY_TIMEOUT: Final = _plain(b"504 Gateway Timeout", b"Gateway Timeout\n")
PAYMENT_REQUIRED: Final = _plain(b"503 Service Unavailable", b"Service Unavailable\n")


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the gateway decided about one request, before anything was sent."""

    record: RequestRecord
    key: str
    head_fingerprint: str
    window: threat.ClientWindow
    assessment: threat.Assessment
    divert: bool
    session: Session | None
    rules: LoadedRules
    eval_latency_us: float


class Gateway:
    """The gateway's Responder: judge, then forward or divert; log every decision."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        rules: RuleReloader,
        clients: ClientStore,
        diverter: Diverter,
        decisions: DecisionLog,
        tenant_id: uuid.UUID,
        divert_threshold: int,
        meter: Meter | None = None,
        honeytokens: Callable[[Request, str, str], int] | None = None,
        decoy_paths: frozenset[str] = frozenset(),
        trusted_proxies: tuple[IPNetwork, ...] = (),
        alerts: ThreatAlerts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream = upstream
        self.rules = rules
        self.clients = clients
        self.diverter = diverter
        self.decisions = decisions
        self.tenant_id = tenant_id
        self.threshold = divert_threshold
        self.meter = meter
        self.honeytokens = honeytokens
        self.decoy_paths = decoy_paths
        self.trusted_proxies = trusted_proxies
        self.alerts = alerts
        self.clock = clock

    @property
    def limits(self) -> Limits:
        return GATEWAY_LIMITS

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        return None  # as nginx: a client too slow to send its head is closed without an answer

    def respond(self, request: Request, conn: Connection) -> Awaitable[Reply]:
        if self.trusted_proxies and request.target.startswith(AUTHZ_PATH) and self._trusted(conn):
            return self._authz(request, conn)
        return self._respond(request, conn)

    def _trusted(self, conn: Connection) -> bool:
        try:
            peer = ipaddress.ip_address(conn.peer_host)
        except ValueError:
            return False
        return any(peer in network for network in self.trusted_proxies)

    def client_ip(self, request: Request, conn: Connection) -> str:
        """The client's address: the peer's, or what a trusted proxy says it is."""
        if not self.trusted_proxies or not self._trusted(conn):
            return conn.peer_host
        real = request.header(b"x-real-ip")
        if real:
            return real.decode("latin-1").strip()
        chain = [v for n, v in request.headers if n.lower() == b"x-forwarded-for"]
        if chain:
            return chain[-1].decode("latin-1").rsplit(",", 1)[-1].strip() or conn.peer_host
        return conn.peer_host

    async def _authz(self, request: Request, conn: Connection) -> Reply:
        """A decision for a proxy (see the module docstring); the upstream is not called."""
        original = _original(request)
        judged = await self.judge(original, client_ip=self.client_ip(request, conn))
        self.clients.put(judged.key, judged.window)
        self._log(judged, action="divert" if judged.divert else "allow", status=None)
        fields = [b"X-Feint-Threat: %d" % judged.assessment.level, b"Content-Length: 0"]
        if not judged.divert:
            status, fields = b"200 OK", [b"X-Feint-Decision: allow", *fields]
        elif (request.header(b"x-feint-mode") or b"").lower() == b"route":
            status, fields = b"200 OK", [b"X-Feint-Decision: divert", b"X-Feint-Route: decoy", *fields]
        else:
            status, fields = b"403 Forbidden", [b"X-Feint-Decision: divert", *fields]
        close = (request.header(b"connection") or b"").lower() == b"close"
        if close:
            fields.append(b"Connection: close")
        return Reply(data=b"HTTP/1.1 " + status + b"\r\n" + b"\r\n".join(fields) + b"\r\n\r\n", close=close)

    async def judge(self, request: Request, *, client_ip: str) -> Judgement:
        """Key, window and threat level of a request, and whether a decoy answers it."""
        started = time.perf_counter()
        now = self.clock()
        head_fingerprint = fingerprint(request.headers, request.version)
        key = client_key(ip=client_ip, user_agent=request.header(b"user-agent"), head_fingerprint=head_fingerprint)
        loaded = self.rules.rules_for(key)
        if loaded is None:
            await self.rules.refresh()
            loaded = self.rules.rules_for(key)
        if loaded is None:  # pragma: no cover - refresh always loads at least the starter rules
            raise InvariantViolated("the gateway has no rules loaded")
        record = threat.record_of(request, request_id=str(uuid.uuid4()), client_ip=client_ip)
        window, address = await self.clients.get_many(key, ADDRESS_PREFIX + client_ip)
        window.seen(now, record.cs_uri_stem or "")
        if self.honeytokens is not None:
            window.honeytokens += self.honeytokens(request, client_ip, key)
        if record.cs_uri_stem in self.decoy_paths:
            window.decoy_paths += 1
        hits = threat.rule_hits(loaded.before, threat.views(record, request))
        assessment = threat.assess(
            hits=hits,
            problems=request.problems,
            user_agent=record.cs_user_agent,
            history=threat.behaviour(window, now=now) + threat.address_behaviour(address, now=now, key=key),
        )
        THREAT_LEVELS.observe(assessment.level)
        session = self.diverter.sticky(key)
        divert = (
            session is not None
            or assessment.level >= self.threshold
            or not request.framing_intact
            or request.version is None
            or bool(request.problems & UNFORWARDABLE)
        )
        address.mark(now, key, diverted=divert)
        self.clients.put(ADDRESS_PREFIX + client_ip, address)
        latency = (time.perf_counter() - started) * 1e6
        return Judgement(record, key, head_fingerprint, window, assessment, divert, session, loaded, latency)

    async def _respond(self, request: Request, conn: Connection) -> Reply:
        judged = await self.judge(request, client_ip=self.client_ip(request, conn))
        if self.trusted_proxies and request.header(DIVERT_HEADER) == b"1" and self._trusted(conn):
            judged = dataclasses.replace(judged, divert=True)  # the proxy asked us (auth_request said divert)
        if self.meter is not None and not self.meter.admit():
            self._log(judged, action="refuse", status=503)
            self.clients.put(judged.key, judged.window)
            return PAYMENT_REQUIRED
        if judged.divert:
            return await self._divert(judged, request, conn)
        return await self._forward(judged, request, conn)

    async def _divert(self, judged: Judgement, request: Request, conn: Connection) -> Reply:
        if self.alerts is not None and judged.session is None:  # once, when a session starts
            self.alerts.emit_threat(
                tenant_id=self.tenant_id,
                threat=judged.assessment.level,
                src_host=judged.record.c_ip or "",
                client_key=judged.key,
                details={"decision": judged.record.id, "explanation": judged.assessment.explanation()},
            )
        session, reply = await self.diverter.answer(
            client_key=judged.key, threat=judged.assessment.level, request=request, conn=conn
        )
        status = _status_of(_head(reply))
        judged.window.answered(judged.record.cs_uri_stem or "", status or 0)
        self.clients.put(judged.key, judged.window)
        self._log(judged, action="divert", status=status, session=session)
        return reply

    async def _forward(self, judged: Judgement, request: Request, conn: Connection) -> Reply:
        path = judged.record.cs_uri_stem or ""
        try:
            answer = await self.upstream.forward(request, client_ip=conn.peer_host)
        except UpstreamFailed as exc:
            UPSTREAM_ERRORS.labels(exc.reason.split(":")[0]).inc()
            reply = GATEWAY_TIMEOUT if exc.timeout else BAD_GATEWAY
            self.clients.put(judged.key, judged.window)
            self._log(judged, action="error", status=504 if exc.timeout else 502)
            return reply
        judged.window.answered(path, answer.status)
        after = judged.rules.after
        answered = _with_status(judged.record, answer.status)  # once: the after-rules and the log read it
        if after is not None:
            verdict = after.evaluate(answered)
            if verdict.hits:
                weights = {rule.key: after.rule_set.weight_of(rule) for rule in after.rules}
                judged.window.carry(self.clock(), ((key, weights[key]) for key in verdict.hits))
        self.clients.put(judged.key, judged.window)
        self._log(judged, action="allow", status=answer.status, record=answered)
        return Reply(data=answer.data, close=answer.close, stream=answer.stream)

    def _log(
        self,
        judged: Judgement,
        *,
        action: str,
        status: int | None,
        session: Session | None = None,
        record: RequestRecord | None = None,
    ) -> None:
        """Submit the decision; ``record``: the judged record with ``status`` already set."""
        self.decisions.submit(
            Decision(
                record=record if record is not None else _with_status(judged.record, status),
                decided_at=datetime.now(UTC),
                tenant_id=self.tenant_id,
                client_key=judged.key,
                fingerprint=judged.head_fingerprint,
                threat=judged.assessment.level,
                action=action,
                explanation=judged.assessment.explanation(),
                rules=judged.assessment.rules,
                rules_tag=judged.rules.tag,
                ruleset_version=judged.rules.version,
                rollout_id=judged.rules.rollout_id,
                canary=judged.rules.canary,
                eval_latency_us=judged.eval_latency_us,
                session_id=None if session is None else str(session.id),
                persona=None if session is None else session.persona,
                arm=None if session is None else session.arm,
            )
        )


def _original(request: Request) -> Request:
    """The request a proxy asks about, rebuilt from its authz subrequest (no body: proxies send none)."""
    target = request.header(b"x-original-uri") or request.target[len(AUTHZ_PATH) :] or b"/"
    method = request.header(b"x-original-method") or request.method
    headers = tuple((n, v) for n, v in request.headers if n.lower() not in _AUTHZ_HEADERS)
    version = request.version or b"HTTP/1.1"
    return dataclasses.replace(
        request,
        request_line=method + b" " + target + b" " + version,
        method=method,
        target=target,
        headers=headers,
        body=b"",
    )


def _with_status(record: RequestRecord, status: int | None) -> RequestRecord:
    return dataclasses.replace(record, sc_status=status)


_STATUS_LINE_BYTES: Final = 12  # "HTTP/1.1 200"


def _head(reply: Reply) -> bytes:
    """The first bytes the reply sends, whether at once or trickled after a delay (an engagement
    profile with a delay sends nothing at once: ``data`` is empty and the status line is in
    ``trickle``, perhaps split over slices)."""
    head = reply.data
    for _, chunk in reply.trickle:
        if len(head) >= _STATUS_LINE_BYTES:
            break
        head += chunk
    return head


def _status_of(data: bytes) -> int | None:
    """The status code of a reply's status line (HTTP/0.9 answers have none)."""
    if not data.startswith(b"HTTP/"):
        return None
    code = data[9:12]
    return int(code) if code.isdigit() else None
