"""Sigma matching semantics, each checked in the matcher, DuckDB and ClickHouse at once."""

from __future__ import annotations

import base64

import pytest

from feint.errors import InvariantViolated
from feint.shadow.rules.matcher import CONTAINS_LOOP_MAX, Matcher, compile_matcher
from feint.shadow.rules.model import WEIGHT_MAX, rule_set

from .helpers import engines, matches, record, rule

pytestmark = pytest.mark.unit


def ua(text: str | None) -> object:
    return record(cs_user_agent=text)


def test_plain_strings_fold_ascii_case_only() -> None:
    """Plain values match whatever the ASCII case; non-ASCII letters must match exactly."""
    assert matches("sel:\n  c-useragent: CuRl\ncondition: sel", ua("curl"), ua("CURL"), ua("curl ")) == [
        True,
        True,
        False,
    ]
    assert matches(
        "sel:\n  c-useragent|contains: '\u0130stanbul'\ncondition: sel",
        ua("x \u0130stanbul"),
        ua("x istanbul"),
        ua("x \u0130STANBUL"),
    ) == [True, False, True]
    assert matches("sel:\n  c-useragent: '\u212a'\ncondition: sel", ua("k"), ua("\u212a")) == [False, True]


def test_cased_modifier_is_case_sensitive() -> None:
    """With |cased a value matches its exact case only."""
    assert matches("sel:\n  c-useragent|cased|contains: Bot\ncondition: sel", ua("a Bot"), ua("a bot")) == [True, False]


def test_regular_expressions() -> None:
    """|re searches, is case-sensitive, and honours the i, m and s flags; '.' skips newlines."""
    assert matches("sel:\n  c-useragent|re: 'b[o0]t'\ncondition: sel", ua("my bot/1"), ua("MY BOT")) == [True, False]
    assert matches("sel:\n  c-useragent|re|i: 'b[o0]t'\ncondition: sel", ua("MY BOT")) == [True]
    assert matches("sel:\n  c-useragent|re: 'a.b'\ncondition: sel", ua("a\nb"), ua("a-b")) == [False, True]
    assert matches("sel:\n  c-useragent|re|s: 'a.b'\ncondition: sel", ua("a\nb")) == [True]
    assert matches("sel:\n  c-useragent|re|m: '^b$'\ncondition: sel", ua("a\nb\nc"), ua("abc")) == [True, False]
    assert matches("sel:\n  c-useragent|re: '^b$'\ncondition: sel", ua("a\nb\nc")) == [False]
    assert matches(
        "sel:\n  cs-host|re: '.{10}'\ncondition: sel", record(cs_host="x" * 10), record(cs_host="x" * 9)
    ) == [
        True,
        False,
    ]


def test_wildcards() -> None:
    """'*' spans any text (newlines too), '?' one character, and both can be escaped."""
    detection = "sel:\n  c-useragent: 'a*b?c'\ncondition: sel"
    assert matches(detection, ua("ab_c"), ua("a\n\nb\nc"), ua("abc"), ua("AXXB\u00e9C")) == [True, True, False, True]
    assert matches("sel:\n  c-useragent: 'a\\*b'\ncondition: sel", ua("a*b"), ua("axb")) == [True, False]
    assert matches("sel:\n  c-useragent|contains: 'a?'\ncondition: sel", ua("xab"), ua("xa")) == [True, False]
    assert matches("sel:\n  c-useragent: '*'\ncondition: sel", ua("x"), ua(""), ua(None)) == [True, False, False]


def test_contains_startswith_endswith_all() -> None:
    """The string modifiers, and |all turning a list from OR into AND."""
    requests = (ua("alpha beta"), ua("alpha"), ua("beta alpha"))
    assert matches("sel:\n  c-useragent|startswith: alpha\ncondition: sel", *requests) == [True, True, False]
    assert matches("sel:\n  c-useragent|endswith: alpha\ncondition: sel", *requests) == [False, True, True]
    assert matches("sel:\n  c-useragent|contains: [beta, gamma]\ncondition: sel", *requests) == [True, False, True]
    assert matches("sel:\n  c-useragent|contains|all: [beta, alpha]\ncondition: sel", *requests) == [True, False, True]


def test_long_literal_lists() -> None:
    """Many alternatives (set lookups, prefix tuples, RE2 alternations) behave like short ones."""
    many = [f"tool{n}/" for n in range(CONTAINS_LOOP_MAX * 3)]
    listed = "\n".join(f"    - '{value}'" for value in many)
    requests = (ua("x tool17/1"), ua("x tool1"), ua("TOOL3/"), ua("zz"))
    assert matches(f"sel:\n  c-useragent|contains:\n{listed}\ncondition: sel", *requests) == [True, False, True, False]
    assert matches(f"sel:\n  c-useragent|startswith:\n{listed}\ncondition: sel", *requests) == [
        False,
        False,
        True,
        False,
    ]
    assert matches(f"sel:\n  c-useragent:\n{listed}\ncondition: sel", *requests) == [False, False, True, False]
    assert matches(f"sel:\n  c-useragent|endswith:\n{listed}\ncondition: sel", *requests) == [False, False, True, False]


def test_base64_modifiers() -> None:
    """|base64 matches the encoding; |base64offset matches it at any byte offset."""
    encoded = base64.b64encode(b"xx/bin/sh").decode()
    plain = base64.b64encode(b"/bin/sh").decode()
    assert matches(
        "sel:\n  cs-uri-query|base64|contains: /bin/sh\ncondition: sel", record(cs_uri_stem="/", cs_uri_query=plain)
    ) == [True]
    assert matches(
        "sel:\n  cs-uri-query|base64offset|contains: /bin/sh\ncondition: sel",
        record(cs_uri_stem="/", cs_uri_query=f"p={encoded}"),
        record(cs_uri_stem="/", cs_uri_query="p=/bin/sh"),
    ) == [True, False]


def test_windash_and_wide() -> None:
    """Expansion modifiers that pySigma applies still match in every engine."""
    assert matches(
        "sel:\n  cs-uri-query|windash|contains: ' -enc'\ncondition: sel",
        record(cs_uri_stem="/", cs_uri_query="a /enc b"),
        record(cs_uri_stem="/", cs_uri_query="a -enc b"),
        record(cs_uri_stem="/", cs_uri_query="a enc b"),
    ) == [True, True, False]


def test_cidr() -> None:
    """|cidr matches canonical IPv4 and IPv6 text inside the network."""
    inside, outside, v6 = record(c_ip="10.1.2.3"), record(c_ip="11.0.0.1"), record(c_ip="fe80::1")
    assert matches("sel:\n  c-ip|cidr: 10.0.0.0/8\ncondition: sel", inside, outside, v6) == [True, False, False]
    assert matches("sel:\n  c-ip|cidr: [10.1.2.0/23, 'fe80::/10']\ncondition: sel", inside, outside, v6) == [
        True,
        False,
        True,
    ]


def test_missing_and_empty_values() -> None:
    """None and '' are missing: they fail every test but null, and 'not' negates plainly."""
    missing, empty, present = ua(None), ua(""), ua("x")
    assert matches("sel:\n  c-useragent: null\ncondition: sel", missing, empty, present) == [True, True, False]
    assert matches("sel:\n  c-useragent: ''\ncondition: sel", missing, empty, present) == [True, True, False]
    assert matches("sel:\n  c-useragent|contains: x\ncondition: not sel", missing, empty, present) == [
        True,
        True,
        False,
    ]
    assert matches("sel:\n  c-useragent|re: '.*'\ncondition: sel", missing, empty, present) == [False, False, True]
    assert matches("sel:\n  c-useragent|exists: true\ncondition: sel", missing, empty, present) == [False, False, True]


def test_conditions_combine() -> None:
    """and/or/not, '1 of', 'all of' and 'them' combine detections."""
    detection = """
    sel_get:
      cs-method: GET
    sel_admin:
      cs-uri-stem|startswith: /admin
    filter:
      c-ip|startswith: '10.'
    condition: all of sel_* and not filter
    """
    requests = (
        record(cs_method="GET", cs_uri_stem="/admin/x", c_ip="1.2.3.4"),
        record(cs_method="GET", cs_uri_stem="/admin/x", c_ip="10.0.0.1"),
        record(cs_method="POST", cs_uri_stem="/admin/x", c_ip="1.2.3.4"),
    )
    assert matches(detection, *requests) == [True, False, False]
    assert matches(detection.replace("all of sel_*", "1 of sel_*"), *requests) == [True, False, True]
    assert matches("a:\n  cs-method: GET\nb:\n  cs-method: POST\ncondition: 1 of them", *requests) == [True, True, True]
    assert matches("a:\n  cs-method: GET\nb:\n  c-ip: 1.2.3.4\ncondition: all of them", *requests) == [
        True,
        False,
        False,
    ]


def test_list_of_maps_is_an_or() -> None:
    """A detection that is a list of maps matches when any map matches."""
    detection = "sel:\n  - cs-method: PUT\n  - cs-uri-stem: /x\ncondition: sel"
    assert matches(detection, record(cs_method="PUT"), record(cs_uri_stem="/x"), record(cs_method="GET")) == [
        True,
        True,
        False,
    ]


def test_hostile_values_do_not_break_any_engine() -> None:
    """Control characters, NUL, quotes, backslashes and long values are matched as text."""
    nasty = "a'b\"c\\d\x00e\x01f\nG%\u2028\U0001f600" + "z" * 5000
    requests = (ua(nasty), ua("'"), ua("\\"))
    assert matches('sel:\n  c-useragent|contains: "\'"\ncondition: sel', *requests) == [True, True, False]
    assert matches("sel:\n  c-useragent|contains: '\\'\ncondition: sel", *requests) == [True, False, True]
    assert matches('sel:\n  c-useragent|contains: "\\0e\\x01f\\ng"\ncondition: sel', *requests) == [True, False, False]


def test_rule_set_any_match_and_threshold() -> None:
    """By default any rule flags; with a threshold the weighted score must reach it."""
    high = rule("sel:\n  c-useragent|contains: a\ncondition: sel", title="high", level="high")
    low = rule("sel:\n  c-useragent|contains: b\ncondition: sel", title="low", level="low")
    high, low = (type(high)(**{**{k: getattr(high, k) for k in high.__slots__}, "key": "h"}),
                 type(low)(**{**{k: getattr(low, k) for k in low.__slots__}, "key": "l"}))  # fmt: skip
    anyone = compile_matcher(rule_set([high, low]))
    verdict = anyone.evaluate(ua("ab"))
    assert (verdict.flagged, verdict.score, verdict.hits) == (True, 9.0, ("h", "l"))
    assert anyone.evaluate(ua("b")).flagged
    assert not anyone.evaluate(ua("c")).flagged
    scored = compile_matcher(rule_set([high, low], threshold=8.0, weights={"l": 1.5}))
    assert [scored.evaluate(ua(t)).flagged for t in ("ab", "a", "b")] == [True, False, False]
    assert scored.evaluate(ua("ab")).score == 8.5


def test_rule_set_invariants() -> None:
    """Duplicate keys, unknown or negative weights and unreachable thresholds are refused."""
    one = rule("sel:\n  cs-method: GET\ncondition: sel")
    with pytest.raises(InvariantViolated, match="unique"):
        rule_set([one, one])
    with pytest.raises(InvariantViolated, match="not in the set"):
        rule_set([one], weights={"other": 1.0})
    with pytest.raises(InvariantViolated, match="weights"):
        rule_set([one], weights={one.key: -1.0})
    with pytest.raises(InvariantViolated, match="weights"):
        rule_set([one], weights={one.key: WEIGHT_MAX * 2})
    with pytest.raises(InvariantViolated, match="threshold"):
        rule_set([one], threshold=WEIGHT_MAX * 2)


def test_constant_and_regex_only_rules() -> None:
    """Rules that never match, always match, or have no literal still evaluate correctly."""
    never = rule("sel:\n  cs-username: x\ncondition: sel", title="never")
    always = rule("sel:\n  cs-cookie: null\ncondition: sel", title="always")
    regex = rule("sel:\n  c-useragent|re: '^[0-9]+$'\ncondition: sel", title="regex")
    rules = [never, always, regex]
    assert engines(rules, [ua("123"), ua("x")]) == [[False, True, True], [False, True, False]]


def test_prefilter_is_checked_at_compile_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefilter that would skip a rule's own literals is refused when the matcher is built."""
    sure = rule("sel:\n  c-useragent|contains: needle\ncondition: sel")
    monkeypatch.setattr("feint.shadow.rules.matcher._re2.RegexSet.matches", lambda self, data: [])
    with pytest.raises(InvariantViolated, match="prefilter"):
        Matcher(rule_set([sure]))
