"""Sigma YAML to compiled rules: what parses, what is reported, and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from feint.shadow.errors import RuleInvalid, RulePathMissing, RuleUnsupported
from feint.shadow.rules import ir, starter_rules
from feint.shadow.rules.ir import FALSE, TRUE, And, Not, Or
from feint.shadow.rules.model import LEVEL_WEIGHTS
from feint.shadow.rules.parse import RULE_BYTES_MAX, load_rules, parse_rules

from .helpers import rule, sigma

pytestmark = pytest.mark.unit


def test_rule_metadata() -> None:
    """Title, level, author, content hash and a key from the Sigma id."""
    text = sigma("sel:\n  cs-method: POST\ncondition: sel").replace(
        "title:", "id: 6f9a1c3e-1111-4222-8333-944455556666\ntitle:"
    )
    (compiled,) = parse_rules(text, path="a.yml")
    assert compiled.key == "6f9a1c3e-1111-4222-8333-944455556666"
    assert (compiled.title, compiled.level, compiled.author, compiled.path) == (
        "test rule",
        "high",
        "Feint tests",
        "a.yml",
    )
    assert len(compiled.content_hash) == 64
    assert compiled.weight == LEVEL_WEIGHTS["high"]
    assert compiled.expr == ir.Test("cs_method", "eq", "post")


def test_content_hash_ignores_where_the_rule_was_read() -> None:
    """The same rule text hashes the same from any path; a changed detection hashes differently."""
    text = sigma("sel:\n  cs-method: POST\ncondition: sel")
    (a,) = parse_rules(text, path="a.yml")
    (b,) = parse_rules(text, path="/elsewhere/b.yml")
    (c,) = parse_rules(sigma("sel:\n  cs-method: PUT\ncondition: sel"), path="a.yml")
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash


def test_rule_without_id_or_level() -> None:
    """A rule without id is keyed by its content hash; without level it counts as medium."""
    text = sigma("sel:\n  cs-method: POST\ncondition: sel").replace("level: high\n", "")
    (compiled,) = parse_rules(text)
    assert compiled.key == f"sha256:{compiled.content_hash[:16]}"
    assert compiled.level == "medium"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'abc'", ir.Test("uri", "eq", "abc")),
        ("'ABC*'", ir.Test("uri", "prefix", "abc")),
        ("'*ABC'", ir.Test("uri", "suffix", "abc")),
        ("'*ABC*'", ir.Test("uri", "contains", "abc")),
        ("'**ABC**'", ir.Test("uri", "contains", "abc")),
        ("'*'", Not(ir.Test("uri", "null"))),
        ("''", ir.Test("uri", "null")),
        ("null", ir.Test("uri", "null")),
        ("'a?c'", ir.Test("uri", "glob", "(?s)^a.c$", needle="a")),
        ("'a*b*c'", ir.Test("uri", "glob", "(?s)^a.*b.*c$", needle="a")),
        (r"'a\*b'", ir.Test("uri", "eq", "a*b")),
        (r"'a\?b*'", ir.Test("uri", "prefix", "a?b")),
        ("404", ir.Test("uri", "eq", "404")),
    ],
)
def test_string_values_become_the_simplest_test(value: str, expected: ir.Expr) -> None:
    """Wildcards, escapes, empty and null values map onto eq/prefix/suffix/contains/glob/null."""
    assert rule(f"sel:\n  cs-uri: {value}\ncondition: sel").expr == expected


def test_modifiers() -> None:
    """contains/startswith/endswith/all/cased/re flags/exists/gte all reach the tree."""
    compiled = rule(
        """
        sel:
          cs-uri|contains|all: [a, B]
          c-useragent|startswith|cased: Curl
          cs-host|endswith: .example
          cs-referer|re|i|s: 'x.y'
          cs-version|re: 'HTTP/1\\.[01]'
          cs-method|exists: true
          sc-status|gte: 500
        condition: sel
        """
    )
    assert compiled.expr == And(
        (
            ir.Test("uri", "contains", "a"),
            ir.Test("uri", "contains", "b"),
            ir.Test("cs_user_agent", "prefix", "Curl", cased=True),
            ir.Test("cs_host", "suffix", ".example"),
            ir.Test("cs_referer", "regex", "(?is)x.y"),
            ir.Test("cs_version", "regex", "(?-s)HTTP/1\\.[01]"),
            Not(ir.Test("cs_method", "null")),
            ir.Test("sc_status", "num", "500", compare="gte"),
        )
    )
    assert compiled.post_response


def test_query_fields_match_the_query_or_the_whole_target() -> None:
    """cs-uri-query tests the query or the target; contains/endswith need only the target."""
    assert rule("sel:\n  cs-uri-query|startswith: cmd=\ncondition: sel").expr == Or(
        (ir.Test("cs_uri_query", "prefix", "cmd="), ir.Test("uri", "prefix", "cmd="))
    )
    assert rule("sel:\n  cs-uri-query|endswith: /bash\ncondition: sel").expr == ir.Test("uri", "suffix", "/bash")
    assert rule("sel:\n  cs-uri-query: null\ncondition: sel").expr == ir.Test("cs_uri_query", "null")
    assert rule("sel:\n  cs-uri-query: ''\ncondition: sel").expr == ir.Test("cs_uri_query", "null")
    assert rule("sel:\n  cs-uri-query: '*'\ncondition: sel").expr == Not(ir.Test("cs_uri_query", "null"))


def test_keywords_search_the_whole_event() -> None:
    """A value-only search becomes an OR over request line, user agent, referer and host."""
    assert rule("keywords:\n  - 'Evil'\ncondition: keywords").expr == Or(
        tuple(
            ir.Test(source, "contains", "evil") for source in ("request_line", "cs_user_agent", "cs_referer", "cs_host")
        )
    )
    numeric = rule("keywords:\n  - 200\ncondition: keywords").expr
    assert isinstance(numeric, Or)
    assert numeric.items[0] == ir.Test("request_line", "contains", "200")
    cased = rule("keywords:\n  '|cased': 'X'\ncondition: keywords").expr
    assert isinstance(cased, Or)
    assert cased.items[0] == ir.Test("request_line", "contains", "X", cased=True)


def test_conditions() -> None:
    """1 of, all of, them, not and parentheses resolve into the boolean tree."""
    compiled = rule(
        """
        sel_a:
          cs-method: GET
        sel_b:
          cs-method: HEAD
        filter:
          cs-host: internal
        condition: 1 of sel_* and not filter or all of them
        """
    )
    assert isinstance(compiled.expr, Or)
    two = rule("a:\n  cs-method: GET\nb:\n  cs-host: x\ncondition:\n  - a\n  - b")
    assert two.expr == Or((ir.Test("cs_method", "eq", "get"), ir.Test("cs_host", "eq", "x")))


def test_unrecorded_fields_are_constants() -> None:
    """Fields Feint never records fail value tests and pass null tests, and are listed."""
    compiled = rule("sel:\n  cs-username: admin\n  cs-method: GET\ncondition: sel")
    assert compiled.expr == FALSE
    assert compiled.unrecorded_fields == ("cs-username",)
    assert rule("sel:\n  cs-cookie: null\ncondition: sel").expr == TRUE
    assert rule("sel:\n  cs-cookie: ''\ncondition: sel").expr == TRUE
    assert rule("sel:\n  cs-cookie: '*'\ncondition: sel").expr == FALSE
    assert rule("sel:\n  dst_ip|exists: true\ncondition: sel").expr == FALSE
    assert rule("sel:\n  dst_ip|exists: false\ncondition: sel").expr == TRUE
    assert rule("sel:\n  sc-bytes|gt: 5\ncondition: sel").expr == FALSE
    assert rule("sel:\n  time-taken: 1\ncondition: sel").post_response


def test_expansions_base64_windash_and_cidr() -> None:
    """Modifiers that expand a value into alternatives become ORs of simple tests."""
    offsets = rule("sel:\n  cs-uri|base64offset|contains: /bin/sh\ncondition: sel").expr
    assert isinstance(offsets, Or)
    assert len(offsets.items) == 3
    assert rule("sel:\n  cs-uri|base64|contains: hi\ncondition: sel").expr == ir.Test("uri", "contains", "agk=")
    dashes = rule("sel:\n  cs-uri|windash|contains: ' -x'\ncondition: sel").expr
    assert isinstance(dashes, Or)
    assert rule("sel:\n  c-ip|cidr: 10.0.0.0/8\ncondition: sel").expr == ir.Test("c_ip", "prefix", "10.")
    assert rule("sel:\n  c-ip|cidr: 1.2.3.4/32\ncondition: sel").expr == ir.Test("c_ip", "eq", "1.2.3.4")


def test_filters_in_the_same_file_apply() -> None:
    """A Sigma filter document in the same stream narrows the rule (pySigma applies it)."""
    text = (
        sigma("sel:\n  cs-method: GET\ncondition: sel").replace("title:", "name: base\ntitle:")
        + "---\ntitle: no health checks\nlogsource:\n    category: webserver\nfilter:\n    rules: [base]\n"
        "    selection:\n        cs-uri-stem: /health\n    condition: not selection\n"
    )
    (compiled,) = parse_rules(text)
    assert isinstance(compiled.expr, And)


@pytest.mark.parametrize(
    ("detection", "feature"),
    [
        ("sel:\n  CommandLine: x\ncondition: sel", "field 'CommandLine'"),
        ("sel:\n  cs-uri|fieldref: cs-host\ncondition: sel", "fieldref"),
        ("sel:\n  cs-uri|expand: '%domain%'\ncondition: sel", "placeholder %domain%"),
        ("sel:\n  cs-uri: true\ncondition: sel", "boolean"),
        ("sel:\n  cs-uri|gt: 3\ncondition: sel", "comparison modifier on field 'cs-uri'"),
        ("sel:\n  cs-cookie: true\ncondition: sel", "boolean"),
        ("sel:\n  cs-uri|minute: 3\ncondition: sel", "timestamp"),
        ("keywords:\n  '|exists': true\ncondition: keywords", None),
    ],
)
def test_unsupported_features_name_rule_and_feature(detection: str, feature: str | None) -> None:
    """Valid Sigma that Feint cannot evaluate raises RuleUnsupported naming both."""
    with pytest.raises((RuleUnsupported, RuleInvalid)) as caught:
        rule(detection, title="the rule")
    if feature is not None:
        assert isinstance(caught.value, RuleUnsupported)
        assert caught.value.rule == "the rule"
        assert feature in caught.value.feature
        assert caught.value.status == 422


def test_unsupported_log_source_and_correlation() -> None:
    """Other log sources and correlation rules are reported, not silently ignored."""
    with pytest.raises(RuleUnsupported, match="process_creation"):
        rule("sel:\n  Image: x\ncondition: sel", category="process_creation")
    with pytest.raises(RuleUnsupported, match="product=windows"):
        parse_rules(sigma("sel:\n  x: y\ncondition: sel").replace("category: webserver", "product: windows"))
    correlation = (
        sigma("sel:\n  cs-method: GET\ncondition: sel").replace("title:", "name: base\ntitle:")
        + "---\ntitle: many\ncorrelation:\n  type: event_count\n  rules: [base]\n  timespan: 1m\n"
        "  group-by: [c-ip]\n  condition:\n    gte: 10\n"
    )
    with pytest.raises(RuleUnsupported, match="correlation"):
        parse_rules(correlation)


def test_invalid_yaml_carries_location() -> None:
    """A YAML error keeps PyYAML's message with the line and column."""
    with pytest.raises(RuleInvalid) as caught:
        parse_rules("title: x\ndetection: [a\n", path="bad.yml")
    assert caught.value.path == "bad.yml"
    assert caught.value.line == 3
    assert caught.value.column is not None
    assert "bad.yml:3" in caught.value.detail
    with pytest.raises(RuleInvalid, match="Duplicate key"):
        parse_rules("title: a\ntitle: b\n")


@pytest.mark.parametrize(
    ("detection", "message", "line"),
    [
        ("sel:\n  cs-uri|nosuch: x\ncondition: sel", "Unknown modifier 'nosuch'", 9),
        ("sel:\n  cs-uri|re: '(('\ncondition: sel", "is invalid", 9),
        ("sel:\n  cs-uri: x\ncondition: sel and", "Expected", 10),
        ("sel:\n  cs-uri: x\ncondition: missing", "'missing' not defined", 10),
    ],
)
def test_invalid_sigma_carries_pysigma_message_and_line(detection: str, message: str, line: int) -> None:
    """pySigma's message is kept; the line is pySigma's or found from the quoted value."""
    with pytest.raises(RuleInvalid) as caught:
        rule(detection)
    assert message in caught.value.message
    assert caught.value.line == line


def test_invalid_documents() -> None:
    """Non-mapping documents, missing titles, empty streams and oversized files are invalid."""
    with pytest.raises(RuleInvalid, match="not a mapping"):
        parse_rules("- a\n- b\n")
    with pytest.raises(RuleInvalid, match="title"):
        parse_rules(sigma("sel:\n  cs-uri: x\ncondition: sel").replace("title: test rule\n", ""))
    with pytest.raises(RuleInvalid, match="no Sigma rule"):
        parse_rules("---\n")
    with pytest.raises(RuleInvalid, match="larger than"):
        parse_rules("#" * (RULE_BYTES_MAX + 1))


def test_load_rules_from_files_and_folders(tmp_path: Path) -> None:
    """A file, a folder (recursive, .yml and .yaml, path order), and the errors of each."""
    (tmp_path / "b").mkdir()
    (tmp_path / "a.yml").write_text(sigma("sel:\n  cs-method: GET\ncondition: sel", title="a"))
    (tmp_path / "b" / "c.yaml").write_text(sigma("sel:\n  cs-method: PUT\ncondition: sel", title="c"))
    (tmp_path / "notes.txt").write_text("not a rule")
    assert [r.title for r in load_rules(tmp_path)] == ["a", "c"]
    assert [r.title for r in load_rules(tmp_path / "a.yml")] == ["a"]
    with pytest.raises(RulePathMissing):
        load_rules(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuleInvalid, match=r"no \.yml"):
        load_rules(empty)
    (tmp_path / "b" / "latin.yml").write_bytes(b"title: \xe9\n")
    with pytest.raises(RuleInvalid, match="UTF-8"):
        load_rules(tmp_path)
    (tmp_path / "b" / "latin.yml").write_bytes(b"#" * (RULE_BYTES_MAX + 1))
    with pytest.raises(RuleInvalid, match="larger than"):
        load_rules(tmp_path)


def test_starter_rules_are_feints_own() -> None:
    """The shipped starter rules load, are written by Feint, and have unique ids."""
    rules = starter_rules()
    assert len(rules) >= 6
    assert {r.author for r in rules} == {"Feint"}
    assert len({r.key for r in rules}) == len(rules)
    assert any(r.post_response for r in rules)
