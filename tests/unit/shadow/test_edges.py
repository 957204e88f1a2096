"""Boundaries and rarely taken paths: limits, odd inputs, small helpers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from feint.errors import InvariantViolated
from feint.shadow import crs, labels, synth
from feint.shadow.errors import RuleInvalid, TrafficFormatInvalid
from feint.shadow.ingest import pipeline, reference
from feint.shadow.report import _num
from feint.shadow.rules import ir
from feint.shadow.rules import model as rule_model
from feint.shadow.rules import parse as rule_parse
from feint.shadow.rules.ir import FALSE, TRUE, Not, all_of, any_of, negate, sources

from .helpers import matches, record, rule, sigma

pytestmark = pytest.mark.unit


def test_boolean_helpers() -> None:
    """Empty conjunctions are true, empty disjunctions false, double negation cancels."""
    test = ir.Test("uri", "eq", "x")
    assert all_of([]) == TRUE and any_of([]) == FALSE
    assert all_of([TRUE, test]) == test and any_of([FALSE, test]) == test
    assert all_of([test, FALSE]) == FALSE and any_of([test, TRUE]) == TRUE
    assert negate(negate(test)) == test and negate(TRUE) == FALSE
    assert sources(Not(test)) == {"uri"} and sources(TRUE) == frozenset()
    assert ir.needles(FALSE) == frozenset() and ir.needles(TRUE) is None


def test_cased_exact_values() -> None:
    """Exact cased values, alone and in a list, compare the raw text."""
    assert matches("sel:\n  c-useragent|cased: Exact\ncondition: sel", record(cs_user_agent="Exact"),
                   record(cs_user_agent="exact")) == [True, False]  # fmt: skip
    assert matches("sel:\n  c-useragent|cased: [Aa, Bb]\ncondition: sel", record(cs_user_agent="Bb"),
                   record(cs_user_agent="bb")) == [True, False]  # fmt: skip


def test_keywords_with_expansions_and_regex() -> None:
    """Keyword searches with base64offset or a regular expression cover every keyword source."""
    assert matches("keywords:\n  '|re': 'ev[a-z]l'\ncondition: keywords", record(cs_referer="an evil one"),
                   record(c_ip="evil")) == [True, False]  # fmt: skip
    encoded = "L2Jpbi9zaA"  # base64 of '/bin/sh' at offset 0, unpadded
    assert matches("keywords:\n  '|base64offset|contains': '/bin/sh'\ncondition: keywords",
                   record(cs_user_agent=f"x{encoded}x"), record(cs_user_agent="/bin/sh")) == [True, False]  # fmt: skip


def test_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rule files per folder, rules per set and traffic files per import are bounded."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.yml").write_text(sigma("sel:\n  cs-method: GET\ncondition: sel", title=name))
    monkeypatch.setattr(rule_parse, "RULE_FILES_MAX", 1)
    with pytest.raises(RuleInvalid, match="more than 1"):
        rule_parse.load_rules(tmp_path)
    monkeypatch.setattr(rule_model, "RULES_PER_SET_MAX", 0)
    with pytest.raises(InvariantViolated, match="at most"):
        rule_model.rule_set([rule("sel:\n  cs-method: GET\ncondition: sel")])
    monkeypatch.setattr(pipeline, "FILES_MAX", 1)
    with pytest.raises(TrafficFormatInvalid, match="more than 1"):
        pipeline.ingest([tmp_path / "a.yml", tmp_path / "b.yml"], tmp_path / "o.parquet")


def test_w3c_data_before_fields_and_odd_times(tmp_path: Path) -> None:
    """A data line before #Fields is malformed; bad JSON times are missing, not errors."""
    path = tmp_path / "u_ex.log"
    path.write_text("#Version: 1.0\n2024-01-01 00:00:00 GET /\n#Fields: date time cs-method cs-uri-stem\n"
                    "2024-01-01 00:00:01 GET /x\n")  # fmt: skip
    report = pipeline.ingest([path], tmp_path / "o.parquet")
    assert (report.rows, report.malformed) == (1, 1)
    assert report.examples[0].reason == "data line before any #Fields header"
    for value in (10**20, "yesterday", "", None, [1]):
        assert (
            reference.parse_json(f'{{"time": {value!r}}}'.replace("'", '"').replace("None", "null").encode(), "1").time
            is None
        )


def test_labels_edges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overlong ids are malformed; labels are written in bounded batches."""
    monkeypatch.setattr(labels, "LABEL_BATCH_ROWS", 2)
    path = tmp_path / "l.csv"
    path.write_text("id,label\n" + "x" * 300 + ",1\n" + "".join(f"{i},{i % 2}\n" for i in range(5)))
    report = labels.load_labels(path, tmp_path / "l.parquet")
    assert (report.labeled, report.malformed) == (5, 1)
    assert "id longer" in report.examples[0].reason


def test_crs_edges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An undecodable encoded request falls back to the stage fields; oversized files are skipped."""
    (tmp_path / "a.yaml").write_text(
        "rule_id: 1\ntests:\n  - test_id: 1\n    stages:\n      - input:\n          encoded_request: 'abc'\n"
        "          uri: /fallback\n          headers: [not, a, map]\n"
    )
    (request,) = crs.load_crs(tmp_path)
    assert (request.record.cs_uri_stem, request.record.cs_method, request.attack) == ("/fallback", "GET", False)
    monkeypatch.setattr(crs, "CRS_FILE_BYTES_MAX", 1)
    assert list(crs.load_crs(tmp_path)) == []


def test_report_numbers_format() -> None:
    """Booleans, integers, floats and text are shown plainly."""
    assert [_num(True), _num(1234), _num(0.123456), _num("<b>"), _num(None)] == [
        "yes",
        "1,234",
        "0.1235",
        "&lt;b&gt;",
        "—",
    ]


def test_synth_edges() -> None:
    """Glob escapes, null and status near misses, and literal-free globs."""
    rng = random.Random(3)
    glob = rule('sel:\n  c-useragent: "a\\x01?b*"\ncondition: sel').expr
    assert isinstance(glob, ir.Test) and glob.op == "glob"
    built = synth.witness(glob, rng, "g")
    assert (built.record.cs_user_agent or "").lower().startswith("a\x01")
    status_null = rule("sel:\n  sc-status: null\ncondition: sel").expr
    assert synth.near_miss(synth.witness(status_null, rng, "s"), rng).sc_status == 1
    wildcard = ir.Test("cs_user_agent", "glob", "(?s)^.$", needle="")
    assert synth.near_miss(synth.witness(wildcard, rng, "w"), rng).id == "w~"
    assert synth.sample_regex(rng, r"(?-s)\S") is None
