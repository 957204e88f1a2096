"""Helpers for the shadow tests: rules from snippets, records, and all three engines at once."""

from __future__ import annotations

import random
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import chdb
import duckdb

from feint.shadow import synth
from feint.shadow.ingest.dataset import write_records
from feint.shadow.record import RequestRecord, request_line_of
from feint.shadow.rules.matcher import compile_matcher
from feint.shadow.rules.model import Rule, rule_set
from feint.shadow.rules.parse import parse_rules
from feint.shadow.rules.sql import DIMENSIONS, select_sql


def sigma(detection: str, *, title: str = "test rule", level: str = "high", category: str = "webserver") -> str:
    """A complete Sigma rule around a detection block (YAML, indented under ``detection:``)."""
    body = textwrap.indent(textwrap.dedent(detection).strip(), "    ")
    return (
        f"title: {title}\nstatus: test\nauthor: Feint tests\nlevel: {level}\n"
        f"logsource:\n    category: {category}\ndetection:\n{body}\n"
    )


def rule(detection: str, **options: Any) -> Rule:
    """One compiled rule from a detection block."""
    (compiled,) = parse_rules(sigma(detection, **options))
    return compiled


def record(request_id: str = "r", **fields: Any) -> RequestRecord:
    """A request; the request line is derived from method, stem, query and version unless given."""
    if "request_line" not in fields:
        fields["request_line"] = request_line_of(
            fields.get("cs_method"), fields.get("cs_uri_stem"), fields.get("cs_uri_query"), fields.get("cs_version")
        )
    return RequestRecord(id=request_id, **fields)


def engines(rules: Sequence[Rule], records: Sequence[RequestRecord]) -> list[list[bool]]:
    """Per record, per rule: whether it matches. Asserts that the matcher, DuckDB (plain and with
    every dimension memoised) and ClickHouse agree."""
    records = [RequestRecord(**{**_fields(r), "id": str(i)}) for i, r in enumerate(records)]
    matcher = compile_matcher(rule_set(rules))
    expected = [matcher.hits(r) for r in records]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requests.parquet"
        write_records(path, records)
        duck = (
            duckdb.connect()
            .execute(select_sql(rules, relation=f"read_parquet('{path}')") + " ORDER BY CAST(id AS INTEGER)")
            .fetchall()
        )
        memoised = select_sql(rules, relation=f"read_parquet('{path}')", memoise=DIMENSIONS)
        memo = duckdb.connect().execute(memoised + " ORDER BY CAST(id AS INTEGER)").fetchall()
        click = chdb.query(
            select_sql(rules, relation=f"file('{path}', Parquet)", dialect="clickhouse") + " ORDER BY toInt32(id)",
            "ArrowTable",
        ).to_pylist()
    for index, (want, row, other, again) in enumerate(zip(expected, duck, click, memo, strict=True)):
        assert list(row[1:]) == want, f"DuckDB disagrees with the matcher on {records[index]}"
        assert list(again[1:]) == want, f"memoised DuckDB disagrees with the matcher on {records[index]}"
        assert [bool(other[f"r{i}"]) for i in range(len(rules))] == want, f"ClickHouse disagrees on {records[index]}"
    return expected


def matches(detection: str, *records: RequestRecord, **options: Any) -> list[bool]:
    """Whether one rule matches each record, in all three engines (which must agree)."""
    return [row[0] for row in engines([rule(detection, **options)], records)]


def _fields(record: RequestRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def differential_corpus(rules: Sequence[Rule], *, seed: int, total: int, per_rule: int) -> list[RequestRecord]:
    """Benign, hostile, and for every rule ``per_rule`` witnesses with one near miss each."""
    rng = random.Random(seed)
    requests: list[RequestRecord] = []
    for index, compiled in enumerate(rules):
        for attempt in range(per_rule):
            built = synth.witness(compiled.expr, rng, f"w{index}.{attempt}")
            requests += [built.record, synth.near_miss(built, rng)]
    remaining = max(total - len(requests), 0)
    for index in range(remaining):
        make = synth.benign if index % 2 else synth.hostile
        requests.append(make(rng, f"g{index}"))
    return requests


def differential(rules: Sequence[Rule], requests: Sequence[RequestRecord], folder: Path) -> dict[str, int]:
    """Run all three engines (DuckDB plain and memoised) over the requests; assert they agree on
    every request and rule."""
    matcher = compile_matcher(rule_set(rules))
    numbered = [RequestRecord(**{**_fields(r), "id": str(i)}) for i, r in enumerate(requests)]
    path = folder / "differential.parquet"
    write_records(path, numbered)
    connection = duckdb.connect()
    query = select_sql(rules, relation=f"read_parquet('{path}')")
    reader = connection.sql(query).to_arrow_reader(65_536)
    click = chdb.query(select_sql(rules, relation=f"file('{path}', Parquet)", dialect="clickhouse"), "ArrowTable")
    by_id = {row: position for position, row in enumerate(click.column("id").to_pylist())}
    click_hits = [click.column(f"r{i}").to_pylist() for i in range(len(rules))]
    memoised = select_sql(rules, relation=f"read_parquet('{path}')", memoise=DIMENSIONS)
    memo = duckdb.connect().sql(memoised).to_arrow_table()
    memo_by_id = {row: position for position, row in enumerate(memo.column("id").to_pylist())}
    memo_hits = [memo.column(f"r{i}").to_pylist() for i in range(len(rules))]
    fired = [0] * len(rules)
    compared = 0
    for batch in reader:
        ids = batch.column("id").to_pylist()
        columns = [batch.column(f"r{i}").to_pylist() for i in range(len(rules))]
        for row, request_id in enumerate(ids):
            expected = matcher.hits(numbered[int(request_id)])
            duck = [bool(column[row]) for column in columns]
            position = by_id[request_id]
            other = [bool(column[position]) for column in click_hits]
            assert duck == expected, f"DuckDB disagrees with the matcher on {numbered[int(request_id)]}"
            assert other == expected, f"ClickHouse disagrees with the matcher on {numbered[int(request_id)]}"
            again = [bool(column[memo_by_id[request_id]]) for column in memo_hits]
            assert again == expected, f"memoised DuckDB disagrees with the matcher on {numbered[int(request_id)]}"
            fired = [count + hit for count, hit in zip(fired, expected, strict=True)]
            compared += 1
    return {"compared": compared, **{rules[i].key: fired[i] for i in range(len(rules))}}
