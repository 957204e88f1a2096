"""The shared corpus: every SigmaHQ web rule loads and compiles in both engines, and the engines
agree on 100,000+ requests built from those rules and from the OWASP CRS regression tests."""

from __future__ import annotations

import collections
from pathlib import Path

import chdb
import duckdb
import pytest

from feint.shadow.crs import load_crs
from feint.shadow.rules import starter_rules
from feint.shadow.rules.matcher import compile_matcher
from feint.shadow.rules.model import rule_set
from feint.shadow.rules.parse import load_rules
from feint.shadow.rules.sql import select_sql
from tests.conftest import shared_data
from tests.unit.shadow.helpers import differential, differential_corpus, record

pytestmark = pytest.mark.corpus

SIGMA_RULES = 142
REQUESTS = 100_000


@pytest.fixture(scope="module")
def corpus() -> Path:
    return shared_data()


def test_every_shared_rule_loads_and_compiles(corpus: Path) -> None:
    """All 142 rules parse, and compile to the matcher, DuckDB SQL and ClickHouse SQL that run."""
    rules = load_rules(corpus / "sigma")
    assert len(rules) == SIGMA_RULES
    assert len({rule.key for rule in rules}) == SIGMA_RULES
    levels = collections.Counter(rule.level for rule in rules)
    assert set(levels) <= {"informational", "low", "medium", "high", "critical"}
    assert any(rule.post_response for rule in rules)
    matcher = compile_matcher(rule_set(rules))
    probe = record(cs_method="GET", cs_uri_stem="/", cs_user_agent="x", sc_status=200)
    assert len(matcher.hits(probe)) == SIGMA_RULES
    table = "(SELECT 'p' AS id, 200 AS sc_status, '1.2.3.4' AS c_ip, 'GET' AS cs_method, '/' AS cs_uri_stem, "
    table += "NULL AS cs_uri_query, 'x' AS cs_user_agent, NULL AS cs_referer, 'h' AS cs_host, "
    table += "'HTTP/1.1' AS cs_version, 'GET / HTTP/1.1' AS request_line)"
    duck = duckdb.connect().execute(select_sql(rules, relation=table)).fetchall()
    assert len(duck[0]) == SIGMA_RULES + 1
    click = chdb.query(select_sql(rules, relation=table, dialect="clickhouse"), "ArrowTable")
    assert click.num_columns == SIGMA_RULES + 1


def test_engines_agree_on_shared_rules_and_crs_requests(corpus: Path, tmp_path: Path) -> None:
    """Witnesses and near misses of every shared rule, CRS attacks, benign and hostile traffic."""
    rules = [*load_rules(corpus / "sigma"), *starter_rules()]
    crs = [request.record for request in load_crs(corpus / "crs-regression")]
    assert len(crs) > 4_000
    requests = [*crs, *differential_corpus(rules, seed=8, total=REQUESTS - len(crs), per_rule=100)]
    outcome = differential(rules, requests, tmp_path)
    assert outcome["compared"] >= REQUESTS
    constant_false = {rule.key for rule in rules if rule.unrecorded_fields and repr(rule.expr) == "Const(value=False)"}
    never = [rule.title for rule in rules if outcome[rule.key] == 0 and rule.key not in constant_false]
    assert never == [], f"no request fired: {never}"


def test_crs_attacks_meet_the_starter_rules(corpus: Path) -> None:
    """Feint's starter rules flag a share of the CRS attacks and agree across engines on them."""
    requests = list(load_crs(corpus / "crs-regression"))
    matcher = compile_matcher(rule_set(starter_rules()))
    flagged = sum(matcher.evaluate(request.record).flagged for request in requests if request.attack)
    assert flagged > 100
