"""Offline evaluation of a candidate rule set against production, on labeled traffic.

First a sample of the requests (``LATENCY_SAMPLE_ROWS``) goes through engine 1
(:mod:`.rules.matcher`), timed request by request for the latency figures; it must agree with
engine 2 on every request of the sample (:class:`~feint.errors.InvariantViolated` otherwise), and
it tells which rules pass their prefilter so often that they should not share one. Then:

1. one join of the ids alone counts the requests per label (the census);
2. the dimensions whose values repeat (user agent, host, request line, ...: see
   :func:`_dimensions`) are evaluated once per distinct value into temporary tables;
3. one pass of DuckDB (every core, batches of ``BATCH_ROWS``) evaluates every distinct rule of
   both versions on every request (engine 2, :mod:`.rules.sql`), reading those tables, and
   returns only the requests some rule fired on, joined with their labels. The batches are
   reduced at once to verdicts and scores; every other request is unflagged with score 0, as the
   census counts them. Memory holds a few bytes per labeled request, never the dataset. Rules
   identical in both versions are evaluated once.

The result is the report of :mod:`.schema` (a plain dict, ready for JSON).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from feint.errors import InvariantViolated, ValidationFailed
from feint.shadow import metrics, stats
from feint.shadow.decision import Decision, Evidence, Thresholds, decide
from feint.shadow.ingest import EXAMPLES_MAX, IngestProgress, IngestReport, expand_paths, ingest
from feint.shadow.ingest.dataset import from_batch
from feint.shadow.labels import LabelsReport, load_labels
from feint.shadow.record import RECORD_FIELDS, RequestRecord
from feint.shadow.report import render_html
from feint.shadow.rules.matcher import Matcher
from feint.shadow.rules.model import Rule, RuleSet, rule_set, score_units
from feint.shadow.rules.parse import load_rules
from feint.shadow.rules.sql import DIMENSIONS, select_parts, select_sql
from feint.shadow.schema import REPORT_SCHEMA_VERSION

BATCH_ROWS: Final = 131_072
LATENCY_SAMPLE_ROWS: Final = 2_000
LATENCY_SAMPLE_ROWS_MAX: Final = 100_000
LATENCY_WARMUP_ROWS: Final = 50
LATENCY_BINS: Final = 30
DISAGREEMENT_SAMPLES_MAX: Final = 20
# A rule whose prefilter passes on more of the sample than this is evaluated on every row rather
# than sharing a prefilter with others (which it would make pass for everyone).
HOT_RULE_SHARE: Final = 0.01
DUCKDB_MEMORY_LIMIT: Final = "1GB"
# A dimension (rules.sql.DIMENSIONS: user agent, referer, host, request line, target) is evaluated
# once per distinct value when, in the first DIMENSION_PROBE_ROWS requests, it takes at most
# DIMENSION_SHARE_MAX distinct values per request: then the saving outweighs the join.
DIMENSION_PROBE_ROWS: Final = 1_000_000
DIMENSION_SHARE_MAX: Final = 0.2
HASH_CHUNK_BYTES: Final = 1 << 20
PARQUET_MAGIC: Final = b"PAR1"

Progress = Callable[[int, int], None]


def load_rule_set(source: Path | RuleSet, *, name: str) -> RuleSet:
    """A rule set from a Sigma file or folder (weights from levels), or the set itself."""
    if isinstance(source, RuleSet):
        return source
    return rule_set(load_rules(source), name=name)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in bounded chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class _Version:
    """One rule set mapped onto the distinct rules evaluated, and what its batches add up to."""

    rules: RuleSet
    columns: npt.NDArray[np.intp]
    units: npt.NDArray[np.int64]
    threshold: int | None
    flags: list[npt.NDArray[np.bool_]] = field(default_factory=list)
    scores: list[npt.NDArray[np.int64]] = field(default_factory=list)

    def judge(self, hits: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        """Verdicts and scores of the rows of a hit matrix (rows x distinct rules)."""
        own = hits[:, self.columns]
        scores = np.asarray(own.astype(np.int64) @ self.units, dtype=np.int64)
        flags = own.any(axis=1) if self.threshold is None else scores >= self.threshold
        return np.asarray(flags, dtype=np.bool_), scores


@dataclass
class _Tally:
    """Totals of the pass over the dataset."""

    rules: int
    rows: int = 0
    unlabeled: int = 0
    unlabeled_examples: list[str] = field(default_factory=list)
    disagreements: int = 0
    disagreement_samples: list[dict[str, Any]] = field(default_factory=list)
    labels: list[npt.NDArray[np.int8]] = field(default_factory=list)
    hits: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.hits = np.zeros((3, self.rules), dtype=np.int64)  # rows: benign, attack, unlabeled


def _distinct_rules(versions: Sequence[RuleSet]) -> list[Rule]:
    seen: dict[str, Rule] = {}
    for version in versions:
        for rule in version.rules:
            seen.setdefault(repr(rule.expr), rule)
    return list(seen.values())


def _version(rules: RuleSet, distinct: list[Rule]) -> _Version:
    index = {repr(rule.expr): position for position, rule in enumerate(distinct)}
    columns = np.array([index[repr(rule.expr)] for rule in rules.rules], dtype=np.intp)
    units = np.array([score_units(rules.weight_of(rule)) for rule in rules.rules], dtype=np.int64)
    threshold = None if rules.threshold is None else score_units(rules.threshold)
    return _Version(rules, columns, units, threshold)


def _connection(threads: int | None, work_dir: Path) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(config={"threads": threads or os.cpu_count() or 1})
    connection.execute(f"SET memory_limit = {_quote(DUCKDB_MEMORY_LIMIT)}")
    connection.execute(f"SET temp_directory = {_quote(str(work_dir))}")
    connection.execute("SET preserve_insertion_order = false")
    return connection


def _dimensions(connection: duckdb.DuckDBPyConnection, source: str) -> list[str]:
    """The dimensions worth memoising: few distinct values per request in the probe."""
    estimates = ", ".join(f"approx_count_distinct(hash({', '.join(keys)}))" for keys in DIMENSIONS.values())
    probe = f"(SELECT * FROM {source} LIMIT {DIMENSION_PROBE_ROWS})"
    row = connection.execute(f"SELECT count(*), {estimates} FROM {probe}").fetchall()[0]
    rows, counts = int(row[0]), [int(value) for value in row[1:]]
    return [name for name, count in zip(DIMENSIONS, counts, strict=True) if count <= DIMENSION_SHARE_MAX * rows]


def _hit_matrix(batch: pa.RecordBatch, count: int) -> npt.NDArray[np.bool_]:
    if count == 0:
        return np.zeros((batch.num_rows, 0), dtype=bool)
    return np.column_stack([batch.column(f"r{i}").to_numpy(zero_copy_only=False) for i in range(count)]).astype(bool)


@dataclass(frozen=True)
class _Census:
    """The requests per label (``None``: unlabeled), labeled ids absent from the traffic, and the
    first unlabeled ids, from one join of the ids alone."""

    rows: dict[int | None, int]
    unknown: int
    unlabeled_examples: list[str]


def _census(connection: duckdb.DuckDBPyConnection, source: str, labels: str | None) -> _Census:
    if labels is None:
        total = int(connection.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0])
        first = connection.execute(f"SELECT id FROM {source} LIMIT {EXAMPLES_MAX}").fetchall()
        return _Census({None: total} if total else {}, 0, [row[0] for row in first])
    found = connection.execute(
        f"SELECT l.label, t.id IS NULL, count(*), min(t.id, {EXAMPLES_MAX}) FILTER (WHERE l.label IS NULL) "
        f"FROM (SELECT id FROM {source}) AS t FULL JOIN {labels} AS l USING (id) GROUP BY ALL"
    ).fetchall()
    rows = {None if label is None else int(label): int(count) for label, absent, count, _ in found if not absent}
    unknown = sum(int(count) for _, absent, count, _ in found if absent)
    examples = next((list(ids) for label, absent, _, ids in found if label is None and not absent), [])
    return _Census(rows, unknown, examples)


def _fired_query(query: str, rules: int, labels: str | None) -> str:
    """The rows of ``query`` where some rule fired, with their position, id, hits and label.

    Run it with DuckDB's ``filter_pushdown`` disabled (see :func:`_scan`): pushed down, the filter
    would inline every rule's expression and evaluate it a second time.
    """
    fired = " OR ".join(f"rules.r{i}" for i in range(rules)) or "false"
    label = "CAST(NULL AS TINYINT)" if labels is None else "l.label"
    joined = "" if labels is None else f" LEFT JOIN {labels} AS l USING (id)"
    return (
        f"SELECT judged.file_row_number AS position, judged.* EXCLUDE (file_row_number), {label} AS label "
        f"FROM (SELECT * FROM ({query}) AS rules WHERE {fired}) AS judged{joined}"
    )


def _reduce(
    batch: pa.RecordBatch, rules: int, tally: _Tally, versions: tuple[_Version, _Version],
    fired_per_label: dict[int, int],
) -> None:  # fmt: skip
    """Add one batch of fired rows to the tally and the versions' verdicts."""
    hits = _hit_matrix(batch, rules)
    labels = pc.fill_null(batch.column("label"), -1).to_numpy(zero_copy_only=False).astype(np.int8)
    judged = [version.judge(hits) for version in versions]
    labeled = labels >= 0
    for row, selection in enumerate((labels == 0, labels == 1, labels < 0)):
        tally.hits[row] += hits[selection].sum(axis=0)
    for value in fired_per_label:
        fired_per_label[value] += int(np.count_nonzero(labels == value))
    disagree = judged[0][0] != judged[1][0]
    tally.disagreements += int(np.count_nonzero(disagree))
    room = DISAGREEMENT_SAMPLES_MAX - len(tally.disagreement_samples)
    if room > 0 and disagree.any():
        # Labeled disagreements first: they are the ones that move the numbers.
        order = np.concatenate([np.flatnonzero(disagree & labeled), np.flatnonzero(disagree & ~labeled)])
        for row in order[:room]:
            tally.disagreement_samples.append({
                "id": batch.column("id")[int(row)].as_py(),
                "label": None if labels[row] < 0 else int(labels[row]),
                "production": bool(judged[0][0][row]),
                "candidate": bool(judged[1][0][row]),
            })  # fmt: skip
    tally.labels.append(labels[labeled])
    for version, (flags, scores) in zip(versions, judged, strict=True):
        version.flags.append(flags[labeled])
        version.scores.append(scores[labeled])


def _scan(
    connection: duckdb.DuckDBPyConnection,
    query: str,
    distinct: list[Rule],
    versions: tuple[_Version, _Version],
    on_progress: Progress | None,
    census: _Census,
) -> _Tally:
    """Reduce the rows where some rule fired (``query``: position, id, label, hits); every other
    request fired nothing, so the census accounts for it: unflagged, score 0."""
    total = sum(census.rows.values())
    tally = _Tally(rules=len(distinct), rows=total, unlabeled=census.rows.get(None, 0))
    tally.unlabeled_examples = census.unlabeled_examples
    fired_per_label = {0: 0, 1: 0}
    # Disabled for this query only (the connection is closed on error): see _fired_query.
    connection.execute("SET disabled_optimizers = 'filter_pushdown'")
    for batch in connection.sql(query).to_arrow_reader(BATCH_ROWS):
        _reduce(batch, len(distinct), tally, versions, fired_per_label)
        if on_progress is not None and batch.num_rows:
            done = int(pc.max(batch.column("position")).as_py()) + 1  # rows arrive roughly in order
            on_progress(min(done, total), total)
    connection.execute("RESET disabled_optimizers")
    for value, fired in fired_per_label.items():
        quiet = census.rows.get(value, 0) - fired
        tally.labels.append(np.full(quiet, value, dtype=np.int8))
        for version in versions:
            version.flags.append(np.zeros(quiet, dtype=np.bool_))
            version.scores.append(np.zeros(quiet, dtype=np.int64))
    if on_progress is not None:
        on_progress(total, total)
    return tally


def _hot_rules(distinct: list[Rule], sample: list[RequestRecord]) -> set[int]:
    """Rules whose prefilter passes on more than ``HOT_RULE_SHARE`` of the sample."""
    if not sample:
        return set()
    renamed = [dataclasses.replace(rule, key=str(index)) for index, rule in enumerate(distinct)]
    rates = Matcher(rule_set(renamed)).prefilter_rates(sample)
    return {index for index, rate in enumerate(rates) if rate is not None and rate > HOT_RULE_SHARE}


def _latency(
    records: list[RequestRecord], versions: tuple[_Version, _Version], sql_flags: list[tuple[bool, bool]]
) -> list[dict[str, Any]]:
    """Per-request latency of engine 1 for each version, after checking it agrees with engine 2.

    Each matcher first sees ``LATENCY_WARMUP_ROWS`` requests untimed (first calls pay for cold
    caches); both histograms share their bins, so the page can draw them on one axis.
    """
    timings: list[npt.NDArray[np.float64]] = []
    for position, version in enumerate(versions):
        matcher = Matcher(version.rules)
        for record in records[:LATENCY_WARMUP_ROWS]:
            matcher.evaluate(record)
        measured = np.empty(len(records), dtype=np.float64)
        for index, record in enumerate(records):
            started = time.perf_counter_ns()
            verdict = matcher.evaluate(record)
            measured[index] = (time.perf_counter_ns() - started) / 1_000.0
            if verdict.flagged != sql_flags[index][position]:
                raise InvariantViolated(f"engines disagree on request {record.id!r} ({version.rules.name})")
        timings.append(measured)
    top = max((float(np.percentile(t, 99)) for t in timings if len(t)), default=0.0) * 1.5
    edges = np.linspace(0.0, top or 1.0, LATENCY_BINS + 1)
    return [_distribution(measured, edges) for measured in timings]


def _distribution(timings: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> dict[str, Any]:
    if len(timings) == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "samples": 0, "histogram": None}
    p50, p95, p99 = (float(v) for v in np.percentile(timings, [50, 95, 99]))
    counts, _ = np.histogram(np.minimum(timings, edges[-1]), bins=edges)  # the last bin holds the tail
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "max": float(timings.max()),
        "samples": len(timings),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def _sample(
    connection: duckdb.DuckDBPyConnection, traffic: Path, distinct: list[Rule],
    versions: tuple[_Version, _Version], rows: int, seed: int, memoise: Sequence[str],
) -> tuple[list[RequestRecord], list[tuple[bool, bool]]]:  # fmt: skip
    columns = ", ".join(RECORD_FIELDS)
    table = connection.sql(
        f"SELECT {columns} FROM read_parquet({_quote(str(traffic))}) "
        f"USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE ({int(seed)})"
    ).to_arrow_table()
    records: list[RequestRecord] = []
    for batch in table.to_batches():
        records.extend(from_batch(batch))
    # The row number keeps the verdicts in the order of the records (joins may reorder rows).
    connection.register("latency_sample", table.append_column("sample_row", pa.array(range(table.num_rows))))
    try:
        query = select_sql(distinct, relation="latency_sample", columns=("sample_row",), memoise=memoise)
        result = connection.sql(query + " ORDER BY sample_row").to_arrow_table()
    finally:
        connection.unregister("latency_sample")
    flags: list[tuple[bool, bool]] = []
    for batch in result.to_batches():
        hits = _hit_matrix(batch, len(distinct))
        judged = [version.judge(hits)[0] for version in versions]
        flags.extend(zip((bool(f) for f in judged[0]), (bool(f) for f in judged[1]), strict=True))
    return records, flags


def _requests(connection: duckdb.DuckDBPyConnection, traffic: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    listed = ", ".join(_quote(i) for i in ids)
    rows = connection.sql(
        f"SELECT id, cs_method, cs_uri_stem, cs_uri_query, cs_user_agent, cs_host, sc_status "
        f"FROM read_parquet({_quote(str(traffic))}) WHERE id IN ({listed})"
    ).fetchall()
    names = ("id", "cs_method", "cs_uri_stem", "cs_uri_query", "cs_user_agent", "cs_host", "sc_status")
    return {row[0]: dict(zip(names, row, strict=True)) for row in rows}


def _value(value: metrics.Value) -> float | None:
    return value.value


def _score_counts(labels: npt.NDArray[np.int8], scores: npt.NDArray[np.int64]) -> metrics.ScoreCounts:
    """``metrics.score_counts``, sorting only the requests some rule scored: most score 0, and
    sorting ten million of them took seconds."""
    scored = scores != 0
    if scored.all():
        return metrics.score_counts(labels, scores)
    counts = metrics.score_counts(labels[scored], scores[scored])
    position = int(np.searchsorted(np.unique(scores[scored]), 0))
    unscored = labels[~scored]
    attacks = float(np.count_nonzero(unscored == 1))
    return metrics.ScoreCounts(
        np.insert(counts.positive, position, attacks), np.insert(counts.negative, position, len(unscored) - attacks)
    )


def _version_report(
    version: _Version, distinct: list[Rule], labels: npt.NDArray[np.int8], tally: _Tally, latency: dict[str, Any]
) -> dict[str, Any]:
    flags = np.concatenate(version.flags) if version.flags else np.zeros(0, dtype=bool)
    scores = np.concatenate(version.scores) if version.scores else np.zeros(0, dtype=np.int64)
    confusion = metrics.confusion(labels, flags)
    summary = metrics.summary(confusion)
    counts = _score_counts(labels, scores)
    auc = metrics.auc_roc(labels, scores, counts)
    chi2 = stats.chi2_predictions(confusion)
    undefined = {name: value.reason for name, value in summary.items() if value.value is None}
    if auc.value is None:
        undefined["auc_roc"] = auc.reason
    if chi2.p_value is None:
        undefined["chi2_p"] = chi2.reason
    attacks, benign = int(np.count_nonzero(labels == 1)), int(np.count_nonzero(labels == 0))
    per_rule: dict[str, Any] = {}
    for rule, column in zip(version.rules.rules, version.columns, strict=True):
        tp, fp = int(tally.hits[1, column]), int(tally.hits[0, column])
        rule_chi2 = stats.chi2_predictions(metrics.Confusion(tp, fp, benign - fp, attacks - tp))
        per_rule[rule.key] = {
            "title": rule.title,
            "level": rule.level,
            "weight": version.rules.weight_of(rule),
            "post_response": rule.post_response,
            "hits": int(tally.hits[:, column].sum()),
            "hits_attack": tp,
            "hits_benign": fp,
            "chi2_p": rule_chi2.p_value,
        }
    return {
        "name": version.rules.name,
        "rules": len(version.rules.rules),
        "tp": confusion.tp,
        "fp": confusion.fp,
        "tn": confusion.tn,
        "fn": confusion.fn,
        **{name: _value(value) for name, value in summary.items()},
        "auc_roc": auc.value,
        "chi2_p": chi2.p_value,
        "undefined": undefined,
        "latency_us": latency,
        "hits_per_rule": per_rule,
        "roc": [list(point) for point in metrics.roc_curve(labels, scores, counts)],
    }


def _prepare_traffic(
    traffic: Sequence[Path], work_dir: Path, threads: int | None, on_ingest: Callable[[IngestProgress], None] | None
) -> tuple[Path, IngestReport | None]:
    """A Parquet dataset as it is; log files (and globs) imported into one in ``work_dir``."""
    files = expand_paths(traffic)
    if len(files) == 1:
        with files[0].open("rb") as stream:
            if stream.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
                return files[0], None
    dataset = work_dir / "traffic.parquet"
    return dataset, ingest(files, dataset, on_progress=on_ingest, threads=threads)


def _traffic_input(traffic: Sequence[Path]) -> dict[str, str]:
    """Name and SHA-256 of the traffic; for several files, of the list of their names and hashes."""
    files = expand_paths(traffic)
    if len(files) == 1:
        return {"path": str(files[0]), "sha256": sha256_file(files[0])}
    listing = "".join(f"{path}\t{sha256_file(path)}\n" for path in files)
    return {"path": ", ".join(str(path) for path in files), "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def evaluate(
    production: Path | RuleSet,
    candidate: Path | RuleSet,
    *,
    traffic: Path | Sequence[Path],
    labels: Path | None,
    thresholds: Thresholds = Thresholds(),
    threads: int | None = None,
    latency_rows: int = LATENCY_SAMPLE_ROWS,
    on_progress: Progress | None = None,
    on_ingest: Callable[[IngestProgress], None] | None = None,
) -> dict[str, Any]:
    """Evaluate candidate against production; ``traffic`` is a dataset or log files (globs too),
    ``labels`` a CSV."""
    traffic = [traffic] if isinstance(traffic, Path) else list(traffic)
    started = time.perf_counter()
    versions_in = (load_rule_set(production, name="production"), load_rule_set(candidate, name="candidate"))
    distinct = _distinct_rules(versions_in)
    versions = (_version(versions_in[0], distinct), _version(versions_in[1], distinct))
    with tempfile.TemporaryDirectory(prefix="feint-evaluate-") as scratch:
        work_dir = Path(scratch)
        dataset, ingested = _prepare_traffic(traffic, work_dir, threads, on_ingest)
        labels_report: LabelsReport | None = None
        connection = _connection(threads, work_dir)
        try:
            source = f"read_parquet({_quote(str(dataset))})"
            labels_source: str | None = None
            if labels is not None:
                labels_table = work_dir / "labels.parquet"
                labels_report = load_labels(labels, labels_table)
                labels_source = f"read_parquet({_quote(str(labels_table))})"
            census = _census(connection, source, labels_source)
            memoise = _dimensions(connection, source)
            records, sql_flags = _sample(
                connection, dataset, distinct, versions, latency_rows, thresholds.seed, memoise
            )
            latency = _latency(records, versions, sql_flags)
            numbered = f"read_parquet({_quote(str(dataset))}, file_row_number = true)"
            tables, query = select_parts(
                distinct, relation=f"{numbered} AS requests", columns=("file_row_number", "id"),
                hot=_hot_rules(distinct, records), memoise=memoise, values_from=source,
            )  # fmt: skip
            for name, table in tables:
                connection.execute(f"CREATE TEMP TABLE {name} AS {table}")
            tally = _scan(connection, _fired_query(query, len(distinct), labels_source), distinct, versions,
                          on_progress, census)  # fmt: skip
            requests = _requests(connection, dataset, [s["id"] for s in tally.disagreement_samples])
        finally:
            connection.close()
        inputs = {
            "production": {"name": versions_in[0].name, "sha256": versions_in[0].content_hash},
            "candidate": {"name": versions_in[1].name, "sha256": versions_in[1].content_hash},
            "traffic": _traffic_input(traffic),
            "labels": None if labels is None else {"path": str(labels), "sha256": sha256_file(labels)},
            "thresholds": thresholds.to_dict(),
        }
    return _report(
        versions, distinct, tally, latency, requests, inputs, labels_report, ingested, census.unknown,
        thresholds, time.perf_counter() - started,
    )  # fmt: skip


def _report(
    versions: tuple[_Version, _Version], distinct: list[Rule], tally: _Tally, latency: list[dict[str, Any]],
    requests: dict[str, dict[str, Any]], inputs: dict[str, Any], labels_report: LabelsReport | None,
    ingested: IngestReport | None, unknown: int, thresholds: Thresholds, elapsed: float,
) -> dict[str, Any]:  # fmt: skip
    labels = np.concatenate(tally.labels) if tally.labels else np.zeros(0, dtype=np.int8)
    production = _version_report(versions[0], distinct, labels, tally, latency[0])
    candidate = _version_report(versions[1], distinct, labels, tally, latency[1])
    production_flags = np.concatenate(versions[0].flags) if versions[0].flags else np.zeros(0, dtype=bool)
    candidate_flags = np.concatenate(versions[1].flags) if versions[1].flags else np.zeros(0, dtype=bool)
    cells = stats.paired_cells(labels, production_flags, candidate_flags)
    b, c = stats.discordant(cells)
    test = stats.mcnemar(b, c)
    boot = stats.bootstrap(
        cells, objective=thresholds.objective, resamples=thresholds.resamples,
        level=thresholds.ci_level, seed=thresholds.seed,
    )  # fmt: skip
    decision: Decision = decide(
        Evidence(
            confidence=boot.confidence, candidate_fpr=candidate["fpr"], production_fpr=production["fpr"],
            disagreements=tally.disagreements, rows=tally.rows, labeled=len(labels), mcnemar_p=test.p_value,
        ),
        thresholds,
    )  # fmt: skip
    malformed_labels = labels_report.malformed if labels_report else 0
    malformed_traffic = ingested.malformed if ingested else 0
    problems = [*(ingested.examples if ingested else []), *(labels_report.examples if labels_report else [])]
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": inputs,
        "dataset": {
            "rows": tally.rows,
            "labeled": len(labels),
            "unlabeled": tally.unlabeled,
            "malformed": malformed_labels + malformed_traffic,
            "malformed_labels": malformed_labels,
            "malformed_traffic": malformed_traffic,
            "duplicate_labels": labels_report.duplicates if labels_report else 0,
            "unknown_label_ids": unknown,
            "attacks": int(np.count_nonzero(labels == 1)),
            "benign": int(np.count_nonzero(labels == 0)),
            "examples": {
                "unlabeled": tally.unlabeled_examples,
                "malformed": [problem.to_dict() for problem in problems[:EXAMPLES_MAX]],
            },
        },
        "production": production,
        "candidate": candidate,
        "significance": {
            "mcnemar_p": test.p_value,
            "mcnemar_method": test.method,
            "mcnemar_statistic": test.statistic,
            "discordant": {"production_only_correct": b, "candidate_only_correct": c},
            "f1_diff_ci": None if boot.difference_ci is None else list(boot.difference_ci),
            "objective": thresholds.objective,
            "ci_level": thresholds.ci_level,
            "resamples": boot.resamples,
            "note": test.reason or boot.reason,
        },
        "confidence": boot.confidence,
        "decision": decision.decision,
        "decision_reason": decision.reason,
        "risk": decision.risk,
        "checks": [check.to_dict() for check in decision.checks],
        "disagreements": {
            "count": tally.disagreements,
            # `requests` is the dict of sampled requests by id, not the HTTP library.
            "samples": [
                {**sample, "request": requests.get(sample["id"])}  # nosec B113
                for sample in tally.disagreement_samples
            ],
        },
        "elapsed_seconds": round(elapsed, 3),
    }


_RUN_OPTIONS: Final = frozenset({"threads", "latency_rows"})


def thresholds_from(options: Mapping[str, Any]) -> Thresholds:
    """Thresholds from a request's options; unknown names or bad values are a 422."""
    names = set(Thresholds.__dataclass_fields__)
    unknown = sorted(set(options) - names - _RUN_OPTIONS)
    if unknown:
        raise ValidationFailed(
            f"unknown evaluation options: {', '.join(unknown)}",
            errors=[{"field": f"options.{name}", "problem": "unknown option"} for name in unknown],
        )
    chosen = {name: value for name, value in options.items() if name in names}
    if "ci_level" in chosen and isinstance(chosen["ci_level"], int):
        chosen["ci_level"] = float(chosen["ci_level"])
    return Thresholds(**chosen)


def evaluate_job(
    *,
    production: RuleSet,
    candidate: RuleSet,
    traffic: Path,
    labels: Path | None,
    options: Mapping[str, Any],
    progress: Callable[[float], None],
) -> tuple[dict[str, Any], str]:
    """The background job's entry point: the report and its HTML page; ``progress`` gets 0..1."""
    thresholds = thresholds_from(options)
    threads, rows = options.get("threads"), options.get("latency_rows", LATENCY_SAMPLE_ROWS)
    if (threads is not None and not isinstance(threads, int)) or not isinstance(rows, int) or rows < 0:
        raise ValidationFailed(
            "threads and latency_rows must be non-negative integers",
            errors=[{"field": "options", "problem": "threads and latency_rows must be integers"}],
        )
    report = evaluate(
        production, candidate, traffic=traffic, labels=labels, thresholds=thresholds, threads=threads,
        latency_rows=min(rows, LATENCY_SAMPLE_ROWS_MAX),
        on_progress=lambda done, total: progress(done / total if total else 1.0),
    )  # fmt: skip
    return report, render_html(report)
