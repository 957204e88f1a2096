"""Threat level 0-10 of one request, with the reasons that add up to it. Pure: no I/O, no clock.

Two kinds of evidence add points (one critical Sigma rule alone reaches 10):

* the request itself: the Sigma rules of the production rule set, through the shadow service's
  one matcher (``compile_matcher``) and weights (``LEVEL_WEIGHTS``), evaluated on *views* of the
  request: as logged, with its target percent-decoded (attackers encode what rules look for),
  with its body read as a query string, and with its other header values as keywords (Sigma's
  webserver fields see neither bodies nor most headers; the payloads of half the CRS regression
  requests sit there). A rule counts once however many views it fires on. Then the framing
  problems the byte-level parser saw, and the user agent (missing, a known crawler or scanner
  from the ``crawler-user-agents`` data, or a non-browser client);
* the client's behaviour over a sliding window (:class:`ClientWindow`): request rate, share of
  4xx answers, breadth of paths answered 404, decoy-only paths touched, honeytokens used, and
  post-response rules (``sc-status``) that fired on its earlier answers.

Every number that turns evidence into points is named here, so a change of policy is one diff.
"""

from __future__ import annotations

import functools
import json
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import unquote, unquote_plus

import orjson

from feint.camouflage.decoy.contract import Problem, Request
from feint.errors import InvariantViolated
from feint.shadow.record import RequestRecord, clean_text, request_line_of, split_target
from feint.shadow.rules import Matcher

THREAT_MAX: Final = 10
# Sliding window of behaviour per client, and what it may hold.
WINDOW_SECONDS: Final = 60.0
WINDOW_EVENTS_MAX: Final = 512
WINDOW_SEARCH_MAX: Final = 64  # newest events searched for the request an answer belongs to
CARRIED_HITS_MAX: Final = 16
# How much of a body and of the other headers the rules read (the rest is not inspected).
BODY_INSPECT_BYTES_MAX: Final = 16_384
HEADERS_INSPECT_BYTES_MAX: Final = 8_192
DECODE_ROUNDS_MAX: Final = 2
USER_AGENT_CACHE_ENTRIES_MAX: Final = 4_096

# Points per framing problem: a real browser never sends these.
PROBLEM_POINTS: Final[dict[Problem, float]] = {
    Problem.MALFORMED_REQUEST_LINE: 6.0,
    Problem.BAD_METHOD: 5.0,
    Problem.BAD_VERSION: 5.0,
    Problem.UNSUPPORTED_VERSION: 3.0,
    Problem.HTTP09: 6.0,
    Problem.BAD_HEADER_LINE: 5.0,
    Problem.OBS_FOLD: 5.0,
    Problem.MISSING_HOST: 4.0,
    Problem.DUPLICATE_HOST: 5.0,
    Problem.BAD_CONTENT_LENGTH: 6.0,
    Problem.BAD_CHUNKED: 6.0,
    Problem.CONTENT_LENGTH_AND_CHUNKED: 7.0,  # request smuggling
    Problem.UNKNOWN_TRANSFER_ENCODING: 6.0,
    Problem.REQUEST_LINE_TOO_LONG: 5.0,
    Problem.HEADER_LINE_TOO_LONG: 5.0,
    Problem.HEADERS_TOO_LARGE: 5.0,
    Problem.TOO_MANY_HEADERS: 5.0,
    Problem.BODY_TOO_LARGE: 3.0,
    Problem.ABSOLUTE_URI: 2.0,
    Problem.BARE_LF: 3.0,
    Problem.NUL_BYTE: 6.0,
}
PROBLEM_POINTS_DEFAULT: Final = 2.0  # a problem the parser learns to name later
# User agents.
UA_MISSING_POINTS: Final = 3.0
UA_CRAWLER_POINTS: Final = 2.0  # a declared crawler is a bot, but often a welcome one
UA_SCANNER_POINTS: Final = 6.0  # tools that only attack
UA_NON_BROWSER_POINTS: Final = 1.0  # curl, libraries, unknown agents
# Tools whose user agent means an attack, matched as lower-case substrings.
SCANNER_AGENTS: Final = (
    "sqlmap", "nikto", "nmap", "masscan", "zgrab", "nuclei", "wpscan", "dirbuster", "gobuster",
    "feroxbuster", "ffuf", "wfuzz", "acunetix", "netsparker", "nessus", "openvas", "w3af",
    "havij", "hydra", "jaeles", "arachni", "skipfish", "commix", "xsstrike", "whatweb", "zmeu",
    "morfeus", "dirb/", "fimap", "joomscan", "burp", "owasp zap", "zaproxy", "censysinspect",
)  # fmt: skip
# Behaviour over the window.
RATE_REQUESTS_HIGH: Final = 300  # per window: beyond a browser loading pages with their assets
RATE_REQUESTS_EXTREME: Final = 1_200
RATE_POINTS: Final = 1.0
RATE_EXTREME_POINTS: Final = 2.0
ERRORS_ANSWERED_MIN: Final = 8  # the 4xx share means nothing on fewer answers
ERRORS_SHARE_HIGH: Final = 0.5
ERRORS_SHARE_POINTS: Final = 2.0
NOT_FOUND_PATHS_HIGH: Final = 8  # distinct paths answered 404: probing for what exists
NOT_FOUND_PATHS_EXTREME: Final = 20
BREADTH_POINTS: Final = 2.0
BREADTH_EXTREME_POINTS: Final = 4.0
DECOY_PATH_POINTS: Final = 6.0
HONEYTOKEN_POINTS: Final = 10.0
# The client's address: other clients (keys) from it that were diverted in the window. A tool
# that varies its user agent or header order gets a new key, not a clean slate; a browser behind
# the same NAT stays below the threshold on this signal alone.
ADDRESS_DIVERTED_MIN: Final = 5
ADDRESS_DIVERTED_POINTS: Final = 4.0
NOT_FOUND: Final = 404

_BROWSER: Final = re.compile(r"^Mozilla/5\.0 \(.+\) (AppleWebKit|Gecko)/", re.ASCII)


@dataclass(frozen=True, slots=True)
class Reason:
    """One piece of evidence and the points it added."""

    signal: str  # rule, problem, user-agent, rate, errors, breadth, decoy-path, honeytoken, response-rule
    points: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "points": self.points, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Assessment:
    """The threat level of a request and why."""

    level: int
    reasons: tuple[Reason, ...]
    rules: tuple[str, ...]  # keys of the rules that fired

    def explanation(self) -> list[dict[str, Any]]:
        return [reason.to_dict() for reason in self.reasons]


FLAGGED: Final = 1  # the status of an address window's event whose client was diverted


@dataclass(slots=True)
class ClientWindow:
    """What one client (or one address) did in the last ``WINDOW_SECONDS``; bounded, serialisable
    (Redis). Counters are kept as events come and go, so that judging a request costs the same
    however busy its client is.

    Events are ``(time, path, status)``: status 0 while unanswered. An address's window holds
    ``(time, client key, FLAGGED or 0)`` instead (`mark`)."""

    events: deque[tuple[float, str, int]] = field(default_factory=deque)
    # post-response rule hits: (time, rule key, weight), at most CARRIED_HITS_MAX
    carried: deque[tuple[float, str, float]] = field(default_factory=lambda: deque(maxlen=CARRIED_HITS_MAX))
    decoy_paths: int = 0
    honeytokens: int = 0
    answers: int = 0  # events with an HTTP status
    errors: int = 0  # of which 4xx
    missing: dict[str, int] = field(default_factory=dict)  # path -> events answered 404
    flagged: dict[str, int] = field(default_factory=dict)  # client key -> diverted events (address)

    def _count(self, path: str, status: int, sign: int) -> None:
        if status == FLAGGED:
            left = self.flagged.get(path, 0) + sign
            if left:
                self.flagged[path] = left
            else:
                self.flagged.pop(path, None)
            return
        if status < 100:
            return
        self.answers += sign
        if 400 <= status < 500:
            self.errors += sign
        if status == NOT_FOUND:
            left = self.missing.get(path, 0) + sign
            if left:
                self.missing[path] = left
            else:
                self.missing.pop(path, None)

    def _append(self, event: tuple[float, str, int]) -> None:
        if len(self.events) >= WINDOW_EVENTS_MAX:
            _, path, status = self.events.popleft()
            self._count(path, status, -1)
        self.events.append(event)
        self._count(event[1], event[2], 1)

    def expire(self, now: float) -> None:
        cutoff = now - WINDOW_SECONDS
        while self.events and self.events[0][0] < cutoff:
            _, path, status = self.events.popleft()
            self._count(path, status, -1)
        while self.carried and self.carried[0][0] < cutoff:
            self.carried.popleft()

    def seen(self, now: float, path: str) -> None:
        self._append((now, path, 0))

    def mark(self, now: float, key: str, *, diverted: bool) -> None:
        """An address window: one request of client ``key``, diverted or not."""
        self._append((now, key, FLAGGED if diverted else 0))

    def answered(self, path: str, status: int) -> None:
        """Record the status of the newest unanswered request for ``path``."""
        for index in range(len(self.events) - 1, max(-1, len(self.events) - 1 - WINDOW_SEARCH_MAX), -1):
            at, seen_path, seen_status = self.events[index]
            if seen_path == path and seen_status == 0:
                self.events[index] = (at, seen_path, status)
                self._count(path, status, 1)
                return

    def carry(self, now: float, hits: Iterable[tuple[str, float]]) -> None:
        for key, weight in hits:
            self.carried.append((now, key, weight))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"e": list(self.events), "c": list(self.carried), "d": self.decoy_paths, "h": self.honeytokens}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> ClientWindow:
        data = orjson.loads(raw)
        window = cls(decoy_paths=int(data["d"]), honeytokens=int(data["h"]))
        events = [(float(t), str(p), int(s)) for t, p, s in data["e"][-WINDOW_EVENTS_MAX:]]
        window.events.extend(events)
        count = window._count
        for _, path, status in events:
            if status:  # unanswered events (0) count for nothing
                count(path, status, 1)
        window.carried.extend((float(t), str(k), float(w)) for t, k, w in data["c"][-CARRIED_HITS_MAX:])
        return window


# --- the request as Sigma webserver fields, and its views -------------------------------------


def _text(raw: bytes | None) -> str | None:
    return None if not raw else clean_text(raw)


def record_of(request: Request, *, request_id: str, client_ip: str, status: int | None = None) -> RequestRecord:
    """The request as the Sigma webserver fields (what the decision log and the rules see)."""
    target = clean_text(request.target)
    stem, query = split_target(target)
    return RequestRecord(
        id=request_id,
        c_ip=client_ip,
        cs_method=_text(request.method),
        cs_uri_stem=stem,
        cs_uri_query=query,
        cs_user_agent=_text(request.header(b"user-agent")),
        cs_referer=_text(request.header(b"referer")),
        sc_status=status,
        cs_host=_text(request.header(b"host")),
        cs_version=_text(request.version),
        request_line=clean_text(request.request_line) or None,
    )


def _decoded(text: str, *, plus: bool) -> str:
    for _ in range(DECODE_ROUNDS_MAX):
        decoded = unquote_plus(text) if plus else unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


_SKIPPED_HEADERS: Final = frozenset({b"host", b"user-agent", b"referer", b"content-length", b"connection"})


def views(record: RequestRecord, request: Request) -> list[RequestRecord]:
    """The records the rules are evaluated on: as logged, decoded, body as query, headers as keywords."""
    found = [record]
    stem, query = record.cs_uri_stem, record.cs_uri_query
    if (stem and "%" in stem) or (query and ("%" in query or "+" in query)):
        stem = _decoded(stem, plus=False) if stem else stem
        query = _decoded(query, plus=True) if query else query
        line = request_line_of(record.cs_method, stem, query, record.cs_version)
        found.append(_with(record, stem=stem, query=query, line=line))
    if request.body:
        body = _decoded(clean_text(request.body[:BODY_INSPECT_BYTES_MAX]), plus=True)
        line = request_line_of(record.cs_method, record.cs_uri_stem, body, record.cs_version)
        found.append(_with(record, stem=record.cs_uri_stem, query=body, line=line))
    others = [value for name, value in request.headers if name.lower() not in _SKIPPED_HEADERS]
    if others:
        joined = clean_text(b"\n".join(others)[:HEADERS_INSPECT_BYTES_MAX])
        found.append(_with(record, stem=record.cs_uri_stem, query=_decoded(joined, plus=False), line=joined))
    return found


def _with(record: RequestRecord, *, stem: str | None, query: str | None, line: str | None) -> RequestRecord:
    return RequestRecord(
        id=record.id,
        c_ip=record.c_ip,
        cs_method=record.cs_method,
        cs_uri_stem=stem,
        cs_uri_query=query or None,
        cs_user_agent=record.cs_user_agent,
        cs_referer=record.cs_referer,
        sc_status=record.sc_status,
        cs_host=record.cs_host,
        cs_version=record.cs_version,
        request_line=line,
    )


def rule_hits(matcher: Matcher, records: Sequence[RequestRecord]) -> list[tuple[str, str, float]]:
    """(key, title, weight) of every rule that fires on any of ``records``, each rule once."""
    fired: dict[str, None] = {}
    for record in records:
        fired.update(dict.fromkeys(matcher.evaluate(record).hits))
    if not fired:
        return []
    by_key = {rule.key: rule for rule in matcher.rules}
    weights = matcher.rule_set
    return [(key, by_key[key].title, weights.weight_of(by_key[key])) for key in fired]


# --- user agents -------------------------------------------------------------------------------


@functools.cache
def _crawler_pattern() -> re.Pattern[str]:
    # The crawler-user-agents data set (MIT, Martin Monperrus), as shipped in its PyPI package.
    raw = resources.files("crawleruseragents").joinpath("crawler-user-agents.json").read_text(encoding="utf-8")
    patterns = [str(item["pattern"]) for item in json.loads(raw)]
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


@functools.lru_cache(maxsize=USER_AGENT_CACHE_ENTRIES_MAX)
def user_agent_class(agent: str | None) -> str:
    """``missing``, ``scanner``, ``crawler``, ``browser`` or ``other`` (a library or unknown client)."""
    if not agent:
        return "missing"
    lowered = agent.lower()
    if any(tool in lowered for tool in SCANNER_AGENTS):
        return "scanner"
    if _crawler_pattern().search(agent):
        return "crawler"
    return "browser" if _BROWSER.match(agent) else "other"


_UA_POINTS: Final = {
    "missing": UA_MISSING_POINTS,
    "scanner": UA_SCANNER_POINTS,
    "crawler": UA_CRAWLER_POINTS,
    "other": UA_NON_BROWSER_POINTS,
    "browser": 0.0,
}


# --- the score -----------------------------------------------------------------------------------


def behaviour(window: ClientWindow, *, now: float) -> list[Reason]:
    """Points from what the client did in the window (call after ``window.seen`` of this request)."""
    window.expire(now)
    reasons: list[Reason] = []
    count = len(window.events)
    if count > RATE_REQUESTS_EXTREME:
        reasons.append(Reason("rate", RATE_EXTREME_POINTS, f"{count} requests in {WINDOW_SECONDS:g} s"))
    elif count > RATE_REQUESTS_HIGH:
        reasons.append(Reason("rate", RATE_POINTS, f"{count} requests in {WINDOW_SECONDS:g} s"))
    answers, errors = window.answers, window.errors
    if answers >= ERRORS_ANSWERED_MIN and errors / answers >= ERRORS_SHARE_HIGH:
        reasons.append(Reason("errors", ERRORS_SHARE_POINTS, f"{errors} of {answers} answers were 4xx"))
    missing = len(window.missing)
    if missing >= NOT_FOUND_PATHS_EXTREME:
        reasons.append(Reason("breadth", BREADTH_EXTREME_POINTS, f"{missing} distinct paths answered 404"))
    elif missing >= NOT_FOUND_PATHS_HIGH:
        reasons.append(Reason("breadth", BREADTH_POINTS, f"{missing} distinct paths answered 404"))
    if window.decoy_paths:
        points = DECOY_PATH_POINTS * window.decoy_paths
        reasons.append(Reason("decoy-path", points, f"{window.decoy_paths} decoy-only paths requested"))
    if window.honeytokens:
        reasons.append(Reason("honeytoken", HONEYTOKEN_POINTS, f"{window.honeytokens} honeytokens used"))
    carried = {key: weight for _, key, weight in window.carried}  # each rule once, its latest weight
    reasons.extend(Reason("response-rule", weight, key) for key, weight in carried.items())
    return reasons


def address_behaviour(window: ClientWindow, *, now: float, key: str) -> list[Reason]:
    """Points from the other clients of the same address (``window`` holds, per request of the
    address, ``(time, client key, 1 if diverted else 0)``)."""
    window.expire(now)
    diverted = sum(window.flagged.values()) - window.flagged.get(key, 0)
    if diverted < ADDRESS_DIVERTED_MIN:
        return []
    return [Reason("address", ADDRESS_DIVERTED_POINTS, f"{diverted} diverted requests of other clients")]


def assess(
    *,
    hits: Sequence[tuple[str, str, float]],
    problems: Iterable[Problem],
    user_agent: str | None,
    history: Sequence[Reason],
) -> Assessment:
    """The threat level from the rule hits, framing problems, user agent and behaviour reasons."""
    reasons = [Reason("rule", weight, f"{key} {title}") for key, title, weight in hits]
    reasons.extend(Reason("problem", PROBLEM_POINTS.get(p, PROBLEM_POINTS_DEFAULT), str(p)) for p in sorted(problems))
    agent = user_agent_class(user_agent)
    if _UA_POINTS[agent]:
        reasons.append(Reason("user-agent", _UA_POINTS[agent], agent))
    reasons.extend(history)
    total = sum(reason.points for reason in reasons)
    level = min(THREAT_MAX, int(total + 0.5))
    if not 0 <= level <= THREAT_MAX:
        raise InvariantViolated(f"threat level {level} outside 0-{THREAT_MAX}")  # pragma: no cover
    return Assessment(level=level, reasons=tuple(reasons), rules=tuple(key for key, _, _ in hits))
