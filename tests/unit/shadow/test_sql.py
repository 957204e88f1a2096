"""The SQL generators: literals, prefilter groups, and both dialects on tricky text."""

from __future__ import annotations

from pathlib import Path

import chdb
import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feint.shadow.ingest.dataset import write_records
from feint.shadow.rules import _re2, ir
from feint.shadow.rules.ir import Const, Hint, Or
from feint.shadow.rules.matcher import compile_matcher
from feint.shadow.rules.model import rule_set
from feint.shadow.rules.sql import (
    PREFILTER_NEEDLES_MAX,
    _groups,
    _Memo,
    clickhouse_literal,
    duckdb_literal,
    expr_sql,
    select_sql,
)

from .helpers import engines, record, rule

pytestmark = pytest.mark.unit

_duck = duckdb.connect()


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
def test_literals_round_trip_in_both_dialects(text: str) -> None:
    """Any text, quotes, backslashes and control characters included, reads back unchanged."""
    assert _duck.execute(f"SELECT {duckdb_literal(text)}").fetchall() == [(text,)]
    assert chdb.query(f"SELECT {clickhouse_literal(text)} AS v", "ArrowTable").to_pylist() == [{"v": text}]


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
def test_re2_escape_matches_exactly_the_literal(text: str) -> None:
    """An escaped literal, anchored, matches the literal and nothing else of its length."""
    pattern = _re2.Regex(f"^{_re2.escape(text)}$")
    assert pattern.search(text)
    assert not pattern.search(text + "x")


def test_re2_wrapper_errors_and_sets() -> None:
    """RE2 errors surface as RegexError; a set reports every member that occurs."""
    with pytest.raises(_re2.RegexError, match="missing"):
        _re2.Regex("((")
    members = _re2.RegexSet(["abc", "b", "zz"])
    assert sorted(members.matches(b"xabcx")) == [0, 1]
    assert members.matches(b"nothing") == []
    assert _re2.Regex("b").search_bytes(b"abc")
    with pytest.raises(_re2.RegexError, match="rejected"):
        _re2.RegexSet(["(("])


def test_expressions_never_yield_null() -> None:
    """Every test is wrapped so a missing value gives false, and NOT of it true."""
    compiled = rule("sel:\n  c-useragent|contains: x\ncondition: not sel")
    assert "coalesce(" in expr_sql(compiled.expr)
    assert "coalesce(" in expr_sql(compiled.expr, "clickhouse")


def test_groups_share_sources_and_respect_the_budget() -> None:
    """Rules are grouped by the sources of their hints, each group within the literal budget."""
    many = [rule(f"sel:\n  cs-uri-stem|contains: path{i}/\ncondition: sel", title=f"r{i}") for i in range(250)]
    agents = [rule(f"sel:\n  c-useragent|contains: agent{i}\ncondition: sel", title=f"a{i}") for i in range(3)]
    weak = rule("sel:\n  cs-method: GET\n  c-useragent|re: x\ncondition: sel", title="weak")
    groups, group_of = _groups([*many, *agents, weak])
    assert group_of[-1] is None
    assert all(len(group) <= PREFILTER_NEEDLES_MAX for group in groups)
    assert {hint.source for hint in groups[group_of[250] or 0]} == {"cs_user_agent"}
    assert len({group_of[i] for i in range(250)}) == 3


def test_prefilter_group_kinds_in_both_dialects() -> None:
    """Set, anchored alternation and multi-source haystack prefilters all select correctly."""
    prefixes = "\n".join(f"    - 'pre{i}-'" for i in range(12))
    suffixes = "\n".join(f"    - '-suf{i}'" for i in range(12))
    rules = [
        rule(f"sel:\n  c-useragent|startswith:\n{prefixes}\ncondition: sel", title="prefixes"),
        rule(f"sel:\n  c-useragent|endswith:\n{suffixes}\ncondition: sel", title="suffixes"),
        rule("sel:\n  c-useragent: [exact-a, exact-b]\ncondition: sel", title="exact"),
        rule("keywords: [kw-one, kw-two]\ncondition: keywords", title="keywords"),
        rule("sel:\n  cs-host: h\n  c-useragent|contains: both\ncondition: sel", title="two sources"),
    ]
    requests = [
        record(cs_user_agent="pre11-x"),
        record(cs_user_agent="x-suf3"),
        record(cs_user_agent="EXACT-B"),
        record(cs_referer="a kw-two b"),
        record(cs_host="h", cs_user_agent="xbothx"),
        record(cs_user_agent="pre1x-suf"),
    ]
    assert engines(rules, requests) == [
        [True, False, False, False, False],
        [False, True, False, False, False],
        [False, False, True, False, False],
        [False, False, False, True, False],
        [False, False, False, False, True],
        [False, False, False, False, False],
    ]


def test_select_without_rules_and_with_extra_columns() -> None:
    """A query for no rules still returns the pass-through columns."""
    query = select_sql([], relation="(SELECT 'x' AS id, 7 AS label, NULL::INT AS sc_status, * FROM "
                       "(SELECT NULL::VARCHAR AS c_ip, NULL::VARCHAR AS cs_method, NULL::VARCHAR AS cs_uri_stem, "
                       "NULL::VARCHAR AS cs_uri_query, NULL::VARCHAR AS cs_user_agent, NULL::VARCHAR AS cs_referer, "
                       "NULL::VARCHAR AS cs_host, NULL::VARCHAR AS cs_version, NULL::VARCHAR AS request_line))",
                       columns=("id", "label"))  # fmt: skip
    assert _duck.execute(query).fetchall() == [("x", 7)]


def test_hint_ordering_is_stable() -> None:
    """Hints sort by source, op and literal, so generated SQL is deterministic."""
    assert sorted([Hint("uri", "eq", "b"), Hint("uri", "contains", "a")])[0].op == "contains"
    first = select_sql([rule("keywords: [a1, b2]\ncondition: keywords")], relation="t")
    assert first == select_sql([rule("keywords: [a1, b2]\ncondition: keywords")], relation="t")


def test_hot_rules_change_cost_not_results(tmp_path: Path) -> None:
    """Rules marked hot (measured on a sample) are evaluated everywhere, with the same results."""
    rules = [
        rule("sel:\n  c-useragent|contains: mozilla\ncondition: sel", title="hot"),
        rule("sel:\n  c-useragent|contains: curl\ncondition: sel", title="cold"),
    ]
    requests = [record(cs_user_agent=agent) for agent in ("Mozilla/5.0", "curl/8", "wget", None)]
    matcher = compile_matcher(rule_set(rules))
    rates = matcher.prefilter_rates(requests)
    assert rates == [0.25, 0.25]
    assert matcher.prefilter_rates([]) == [0.0, 0.0]
    path = tmp_path / "r.parquet"
    write_records(
        path, [type(r)(**{**{k: getattr(r, k) for k in r.__slots__}, "id": str(i)}) for i, r in enumerate(requests)]
    )
    plain = _duck.execute(select_sql(rules, relation=f"read_parquet('{path}')") + " ORDER BY id").fetchall()
    hot = _duck.execute(select_sql(rules, relation=f"read_parquet('{path}')", hot={0}) + " ORDER BY id").fetchall()
    assert plain == hot
    assert "pf_" in select_sql(rules, relation="t", hot={0}) and _groups(rules, {0})[1] == [None, 0]


def test_memoise_rejects_unknown_dimensions_and_clickhouse() -> None:
    """Only the documented dimensions can be memoised, and only in DuckDB."""
    rules = [rule("sel:\n  c-useragent|contains: x\ncondition: sel")]
    with pytest.raises(ValueError, match="unknown dimensions: nope"):
        select_sql(rules, relation="t", memoise=("agent", "nope"))
    with pytest.raises(ValueError, match="need DuckDB"):
        select_sql(rules, relation="t", dialect="clickhouse", memoise=("agent",))


_MIXED = [
    ("sel:\n  c-useragent|contains: [curl, wget]\ncondition: sel", "agent only"),
    ("keywords: [kw-one, kw-two, '/admin']\ncondition: keywords", "keywords over four dimensions"),
    ("sel:\n  cs-uri-query|contains: cmd=\n  c-useragent|startswith: python\ncondition: sel", "target and agent"),
    ("a:\n  c-useragent|contains: [aa, bb, cc]\nb:\n  cs-method: PUT\ncondition: 1 of them", "or across dimensions"),
    ("a:\n  c-uri|contains: '/x.php'\nb:\n  c-uri-extension: php\ncondition: a and not b", "not within target"),
    ("sel:\n  c-ip|startswith: '10.9.'\n  cs-host|endswith: '.evil'\ncondition: sel", "address and host"),
    ("sel:\n  cs-uri-stem|endswith: [/a, /b]\n  cs-uri-query|contains: q=\ncondition: sel", "stem and query"),
    ("sel:\n  cs-referer: null\n  cs-host|contains: shop\ncondition: sel", "null referer"),
    ("sel:\n  dst_ip: 10.0.0.1\ncondition: sel", "unrecorded field, never true"),
]


@pytest.mark.parametrize(
    "memoise",
    [(), ("agent",), ("line", "target"), ("agent", "referer", "host"), ("agent", "referer", "host", "line", "target")],
)
def test_memoised_dimensions_change_cost_not_results(tmp_path: Path, memoise: tuple[str, ...]) -> None:
    """Any set of memoised dimensions gives the matcher's verdicts, request by request."""
    rules = [rule(detection, title=title) for detection, title in _MIXED]
    requests = [
        record(cs_user_agent="curl/8", cs_host="shop.example"),
        record(cs_user_agent="Mozilla", cs_uri_stem="/admin", cs_host="shop.example", cs_referer="r"),
        record(cs_user_agent="python-requests", cs_uri_stem="/run", cs_uri_query="cmd=id"),
        record(cs_user_agent="xBBx", cs_method="GET"),
        record(cs_user_agent="z", cs_method="PUT"),
        record(cs_uri_stem="/x.php", cs_uri_query="a=1", c_ip="10.9.1.1", cs_host="c2.evil"),
        record(cs_uri_stem="/x.phpx", cs_referer="KW-TWO"),
        record(cs_uri_stem="/b", cs_uri_query="q=1", cs_user_agent=""),
        record(cs_uri_stem="/b", cs_uri_query="q=1", cs_user_agent=""),
        record(),
    ]
    numbered = [type(r)(**{**{k: getattr(r, k) for k in r.__slots__}, "id": str(i)}) for i, r in enumerate(requests)]
    path = tmp_path / "r.parquet"
    write_records(path, numbered)
    source = f"read_parquet('{path}')"
    query = select_sql(rules, relation=source, memoise=memoise, values_from=source)
    got = duckdb.connect().execute(query + " ORDER BY CAST(id AS INTEGER)").fetchall()
    matcher = compile_matcher(rule_set(rules))
    assert [list(row[1:]) for row in got] == [matcher.hits(r) for r in numbered]
    assert any(any(row[1:]) for row in got)
    assert ("m_agent_" in query) == ("agent" in memoise)


def test_memoised_constants_stay_inline() -> None:
    """A constant reads no dimension, so it is spelled in place next to memoised columns."""
    memo = _Memo(["agent"])
    agent = ir.Test("cs_user_agent", "regex", "a+")
    spelled = expr_sql(Or((agent, ir.Test("c_ip", "regex", "^10[.]"), Const(True))), "duckdb", memo)
    assert spelled.startswith("(m_agent_0 OR ") and spelled.endswith(" OR true)")
    assert list(memo.columns["agent"]) == [expr_sql(agent)]
