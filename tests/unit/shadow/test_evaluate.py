"""Production against candidate on a labeled dataset: the report and its numbers."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import numpy as np
import pytest
from sklearn import metrics as sk

from feint.errors import InvariantViolated, ValidationFailed
from feint.shadow import evaluate as evaluation
from feint.shadow import metrics, synth
from feint.shadow.evaluate import evaluate, evaluate_job, thresholds_from
from feint.shadow.ingest.dataset import write_records
from feint.shadow.rules import starter_rules
from feint.shadow.rules.model import rule_set
from feint.shadow.rules.parse import load_rules
from feint.shadow.schema import validate_report

from .helpers import rule

pytestmark = pytest.mark.unit

ZOO = Path(__file__).with_name("rules_zoo.yml")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    """4,000 requests: benign browsing and witnesses of the starter rules, mostly labeled."""
    folder = tmp_path_factory.mktemp("evaluate")
    rng = random.Random(3)
    rules = starter_rules()
    requests, labels = [], {}
    for index in range(4_000):
        if rng.random() < 0.15:
            requests.append(synth.witness(rng.choice(rules).expr, rng, f"q{index}").record)
            labels[f"q{index}"] = 1
        else:
            requests.append(synth.benign(rng, f"q{index}"))
            labels[f"q{index}"] = 0
    traffic = folder / "traffic.parquet"
    write_records(traffic, requests)
    csv = folder / "labels.csv"
    kept = {key: value for key, value in labels.items() if rng.random() < 0.95}
    csv.write_text("id,label\n" + "".join(f"{k},{v}\n" for k, v in kept.items()) + "ghost,1\nbad,2\n")
    return traffic, csv, kept


def test_report_numbers(dataset: tuple[Path, Path, dict[str, int]]) -> None:
    """Counts, metrics and decision are consistent with the data and the schema."""
    traffic, csv, labels = dataset
    production = rule_set(starter_rules()[:4], name="four rules")
    candidate = rule_set(starter_rules(), name="all rules")
    report = evaluate(production, candidate, traffic=traffic, labels=csv, latency_rows=300)
    assert validate_report(report) == []
    data = report["dataset"]
    assert (data["rows"], data["labeled"], data["unlabeled"]) == (4_000, len(labels), 4_000 - len(labels))
    assert (data["malformed"], data["unknown_label_ids"]) == (1, 1)
    assert len(data["examples"]["unlabeled"]) == 5
    for version in ("production", "candidate"):
        block = report[version]
        assert block["tp"] + block["fp"] + block["tn"] + block["fn"] == len(labels)
        assert block["latency_us"]["samples"] == 300
        assert block["latency_us"]["p50"] <= block["latency_us"]["p99"]
        assert sum(r["hits_attack"] for r in block["hits_per_rule"].values()) >= block["tp"]
    assert report["candidate"]["recall"] > report["production"]["recall"]
    assert report["decision"] in ("APPROVE_FULL_DEPLOYMENT", "APPROVE_CANARY")
    assert report["significance"]["mcnemar_p"] < 0.05
    assert report["disagreements"]["count"] > 0
    sample = report["disagreements"]["samples"][0]
    assert sample["production"] != sample["candidate"] and sample["request"]["id"] == sample["id"]
    assert report["inputs"]["labels"]["sha256"] and report["inputs"]["traffic"]["sha256"]


def test_metrics_equal_sklearn_on_the_same_requests(dataset: tuple[Path, Path, dict[str, int]]) -> None:
    """The evaluation's F1, MCC and AUC equal scikit-learn's over the matcher's own verdicts."""
    traffic, csv, labels = dataset
    candidate = rule_set(starter_rules(), name="all")
    report = evaluate(candidate, candidate, traffic=traffic, labels=csv, latency_rows=10)
    from feint.shadow.ingest.dataset import read_records
    from feint.shadow.rules.matcher import compile_matcher

    matcher = compile_matcher(candidate)
    truth, flags, scores = [], [], []
    for request in read_records(traffic):
        if request.id in labels:
            verdict = matcher.evaluate(request)
            truth.append(labels[request.id])
            flags.append(verdict.flagged)
            scores.append(verdict.score)
    block = report["candidate"]
    assert block["f1"] == pytest.approx(sk.f1_score(truth, flags))
    assert block["mcc"] == pytest.approx(sk.matthews_corrcoef(truth, flags))
    assert block["auc_roc"] == pytest.approx(sk.roc_auc_score(truth, np.array(scores)))
    assert (report["decision"], report["decision_reason"]) == ("REJECT", "no-change")


def test_without_labels_and_from_a_log(tmp_path: Path) -> None:
    """A raw log is imported first; without labels every metric is null with a reason."""
    log = tmp_path / "access.log"
    log.write_text(
        '1.2.3.4 - - [10/Oct/2023:13:55:36 +0000] "GET /?q=union+select HTTP/1.1" 200 1 "-" "sqlmap/1.7"\n'
        "garbage\n"
        '1.2.3.4 - - [10/Oct/2023:13:55:37 +0000] "GET / HTTP/1.1" 200 1 "-" "Mozilla/5.0"\n'
    )
    report = evaluate(rule_set(starter_rules()[:1]), rule_set(starter_rules()), traffic=log, labels=None)
    assert validate_report(report) == []
    assert (report["dataset"]["rows"], report["dataset"]["malformed_traffic"]) == (2, 1)
    assert report["candidate"]["f1"] is None and "f1" in report["candidate"]["undefined"]
    assert report["decision_reason"] == "confidence-undefined"
    assert report["disagreements"]["samples"][0]["label"] is None


def test_rule_files_threshold_sets_and_shared_rules(dataset: tuple[Path, Path, dict[str, int]]) -> None:
    """Rule sets come from files or memory; a rule in both versions is evaluated once."""
    traffic, csv, _ = dataset
    scored = rule_set(starter_rules(), threshold=10.0, name="scored")
    report = evaluate(ZOO, scored, traffic=traffic, labels=csv, latency_rows=20)
    assert report["production"]["name"] == "production"
    assert report["candidate"]["rules"] == len(starter_rules())
    distinct = evaluation._distinct_rules([rule_set(load_rules(ZOO)), rule_set([*load_rules(ZOO)[:2]])])
    assert len(distinct) == len(load_rules(ZOO))


def test_engines_must_agree(dataset: tuple[Path, Path, dict[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """If the timed matcher ever disagrees with the SQL engine, the evaluation stops."""
    traffic, csv, _ = dataset
    original = evaluation.Matcher.evaluate

    def flipped(self: evaluation.Matcher, record: object) -> object:
        verdict = original(self, record)  # type: ignore[arg-type]
        return type(verdict)(not verdict.flagged, verdict.score, verdict.hits)

    monkeypatch.setattr(evaluation.Matcher, "evaluate", flipped)
    with pytest.raises(InvariantViolated, match="engines disagree"):
        evaluate(rule_set(starter_rules()), rule_set(starter_rules()), traffic=traffic, labels=csv, latency_rows=5)


def test_job_entry_point_and_options(dataset: tuple[Path, Path, dict[str, int]]) -> None:
    """evaluate_job returns the report and its page; options are checked before running."""
    traffic, csv, _ = dataset
    seen: list[float] = []
    report, page = evaluate_job(
        production=rule_set([rule("sel:\n  cs-method: TRACE\ncondition: sel")]),
        candidate=rule_set(starter_rules()),
        traffic=traffic,
        labels=csv,
        options={"fpr_max": 0.02, "ci_level": 0.9, "resamples": 300, "threads": 1, "latency_rows": 50},
        progress=seen.append,
    )
    assert report["inputs"]["thresholds"]["fpr_max"] == 0.02
    assert page.startswith("<!doctype html>")
    assert seen and seen[-1] == 1.0
    with pytest.raises(ValidationFailed, match="thresholds"):
        thresholds_from({"ci_level": 1})  # an integer is read as a float, then bounds-checked
    with pytest.raises(ValidationFailed, match="unknown evaluation options"):
        thresholds_from({"nonsense": 1})
    with pytest.raises(ValidationFailed, match="integers"):
        evaluate_job(production=rule_set([]), candidate=rule_set([]), traffic=traffic, labels=csv,
                     options={"threads": "many"}, progress=seen.append)  # fmt: skip


def test_empty_rule_sets(dataset: tuple[Path, Path, dict[str, int]]) -> None:
    """Two empty rule sets never flag: metrics with no positives are null, decision no-change."""
    traffic, csv, _ = dataset
    report = evaluate(rule_set([]), rule_set([]), traffic=traffic, labels=csv, latency_rows=5)
    assert report["candidate"]["precision"] is None and report["candidate"]["recall"] == 0.0
    assert report["decision_reason"] == "no-change"
    assert report["production"]["latency_us"]["p50"] is not None
    assert evaluation._distribution(np.zeros(0), np.linspace(0, 1, 3))["p50"] is None


def test_without_a_latency_sample(dataset: tuple[Path, Path, dict[str, int]]) -> None:
    """latency_rows=0 skips the timed sample: latency figures are null, the rest is unchanged."""
    traffic, csv, _ = dataset
    report = evaluate(
        rule_set(starter_rules()[:2]), rule_set(starter_rules()), traffic=traffic, labels=csv, latency_rows=0
    )
    assert report["candidate"]["latency_us"]["p99"] is None and report["candidate"]["latency_us"]["samples"] == 0
    assert validate_report(report) == []


def test_dimensions_memoised_only_when_values_repeat() -> None:
    """A dimension is memoised when its values repeat enough in the probe, not otherwise."""
    source = (
        "(SELECT 'ua' || (i % 3) AS cs_user_agent, NULL AS cs_referer, 'h' AS cs_host, "
        "'GET /' || i || ' HTTP/1.1' AS request_line, '/' || i AS cs_uri_stem, NULL AS cs_uri_query "
        "FROM range(1000) AS t(i))"
    )
    assert evaluation._dimensions(duckdb.connect(), source) == ["agent", "referer", "host"]


def test_memoised_and_plain_evaluations_agree(
    dataset: tuple[Path, Path, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memoising every dimension or none gives the same report numbers."""
    traffic, csv, _ = dataset
    production, candidate = rule_set(load_rules(ZOO)), rule_set(starter_rules())
    reports = []
    for share in (0.0, 1.0):
        monkeypatch.setattr(evaluation, "DIMENSION_SHARE_MAX", share)
        reports.append(evaluate(production, candidate, traffic=traffic, labels=csv, latency_rows=200))
    for version in ("production", "candidate"):
        plain, memoised = reports[0][version], reports[1][version]
        assert {k: plain[k] for k in ("tp", "fp", "tn", "fn", "hits_per_rule", "roc")} == {
            k: memoised[k] for k in ("tp", "fp", "tn", "fn", "hits_per_rule", "roc")
        }
    assert reports[0]["disagreements"]["count"] == reports[1]["disagreements"]["count"]


@pytest.mark.parametrize("zeros", [0.0, 0.5, 1.0])
def test_score_counts_sort_only_scored_requests(zeros: float) -> None:
    """The shortcut for mostly-zero scores counts exactly what ``metrics.score_counts`` counts."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 1_000).astype(np.int8)
    scores = np.where(rng.random(1_000) < zeros, 0, rng.integers(-3, 9, 1_000)).astype(np.int64)
    fast, slow = evaluation._score_counts(labels, scores), metrics.score_counts(labels, scores)
    assert fast.positive.tolist() == slow.positive.tolist()
    assert fast.negative.tolist() == slow.negative.tolist()
