"""Shadow evaluation benchmark: production vs candidate over 1M (or 10M) labeled requests, from
a Parquet dataset and from a raw nginx log of 10M distinct lines (plain and gzip).

    .venv/bin/python bench/shadow/run.py              # 1,000,000 requests, then the 10M raw log
    .venv/bin/python bench/shadow/run.py --ten-million
    .venv/bin/python bench/shadow/run.py --rows 200000 --threads 2 --raw-lines 1000000
    .venv/bin/python bench/shadow/run.py --rows 0     # the raw-log part alone
    .venv/bin/python bench/shadow/run.py --raw-lines 0   # the Parquet part alone
    .venv/bin/python bench/shadow/run.py --rows 0 --raw-lines 0 --json-lines 1000000   # JSON-lines ingest alone

The raw-log part (``raw.py``, ``logs.py``) prints ingest lines/s, the DuckDB bound and their ratio,
and the end-to-end evaluation's wall time and peak RSS; the log is generated once and cached.

Traffic: benign browsing of a shop (synth.benign) and attacks drawn from the OWASP CRS regression
requests and from requests built to fire the shared SigmaHQ rules (synth.witness), about one in
ten. Requests are drawn from a pool of distinct requests, as real traffic repeats itself. Labels:
1 for attacks, 0 for benign, 1% of the requests left unlabeled. Production is the shared rule set
without every tenth rule, the candidate is the full shared rule set.

The evaluation runs in a child process so that its peak RSS is measured apart from the data
generation. Prints rows/s, wall time, peak RSS, the decision, and the compiled matcher's p50/p99
per request over the whole candidate rule set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

import logs  # noqa: E402  # bench/shadow, first on sys.path when run as a script
import raw  # noqa: E402

from feint.shadow import synth  # noqa: E402
from feint.shadow.crs import load_crs  # noqa: E402
from feint.shadow.ingest.dataset import SCHEMA, read_records, to_batch  # noqa: E402
from feint.shadow.rules.matcher import compile_matcher  # noqa: E402
from feint.shadow.rules.model import rule_set  # noqa: E402
from feint.shadow.rules.parse import load_rules  # noqa: E402

SHARED = Path(os.environ.get("FEINT_SHARED_DATA", REPO.parent / "shared" / "data"))
POOL_BENIGN = 100_000
POOL_WITNESSES_PER_RULE = 40
ATTACK_SHARE = 0.10
UNLABELED_SHARE = 0.01
CHUNK_ROWS = 1_000_000
MATCHER_SAMPLE = 20_000


def _pool(seed: int) -> tuple[pa.Table, np.ndarray]:
    """Distinct requests and whether each is an attack."""
    rng = random.Random(seed)
    rules = load_rules(SHARED / "sigma")
    benign = [synth.benign(rng, f"b{i}") for i in range(POOL_BENIGN)]
    attacks = [r.record for r in load_crs(SHARED / "crs-regression") if r.attack]
    for index, compiled in enumerate(rules):
        attacks += [synth.witness(compiled.expr, rng, f"w{index}.{k}").record for k in range(POOL_WITNESSES_PER_RULE)]
    table = pa.Table.from_batches([to_batch(benign + attacks)])
    return table, np.array([0] * len(benign) + [1] * len(attacks), dtype=np.int8)


def generate(folder: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """A Parquet dataset and a labels CSV of ``rows`` requests."""
    pool, is_attack = _pool(seed)
    benign_index, attack_index = np.flatnonzero(is_attack == 0), np.flatnonzero(is_attack == 1)
    generator = np.random.default_rng(seed)
    traffic, labels = folder / "traffic.parquet", folder / "labels.csv"
    with pq.ParquetWriter(traffic, SCHEMA, compression="zstd") as writer:
        label_out = pa.OSFile(str(labels), "wb")
        label_out.write(b"id,label\n")
        for start in range(0, rows, CHUNK_ROWS):
            count = min(CHUNK_ROWS, rows - start)
            attack = generator.random(count) < ATTACK_SHARE
            picks = np.where(attack, generator.choice(attack_index, count), generator.choice(benign_index, count))
            chunk = pool.take(pa.array(picks))
            ids = pa.array([f"r{start + i}" for i in range(count)], pa.string())
            chunk = chunk.set_column(0, SCHEMA.field("id"), ids)
            writer.write_table(chunk, row_group_size=65_536)
            keep = generator.random(count) >= UNLABELED_SHARE
            table = pa.table({"id": ids.filter(pa.array(keep)), "label": pa.array(attack[keep].astype(np.int8))})
            pacsv.write_csv(table, label_out, pacsv.WriteOptions(include_header=False))
        label_out.close()
    return traffic, labels


def matcher_latency(traffic: Path, candidate_rules: list) -> tuple[float, float]:
    """p50 and p99 in microseconds of the candidate's compiled matcher, one request at a time."""
    matcher = compile_matcher(rule_set(candidate_rules))
    timings = []
    for index, record in enumerate(read_records(traffic)):
        if index == MATCHER_SAMPLE:
            break
        started = time.perf_counter_ns()
        matcher.evaluate(record)
        timings.append((time.perf_counter_ns() - started) / 1_000)
    p50, p99 = np.percentile(timings, [50, 99])
    return float(p50), float(p99)


def evaluate_child(traffic: Path, labels: Path, out: Path, threads: int | None) -> None:
    from feint.shadow.evaluate import evaluate

    rules = load_rules(SHARED / "sigma")
    production = rule_set([r for i, r in enumerate(rules) if i % 10 != 9], name="shared minus every tenth rule")
    candidate = rule_set(rules, name="shared SigmaHQ web rules")
    started = time.perf_counter()
    report = evaluate(production, candidate, traffic=traffic, labels=labels, threads=threads)
    report["bench_wall_seconds"] = time.perf_counter() - started
    out.write_text(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ten-million", action="store_true", help="10,000,000 requests")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: every core)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--raw-lines", type=int, default=10_000_000, help="lines of the raw log (0: skip)")
    parser.add_argument("--json-lines", type=int, default=0, help="lines of a JSON-lines log, ingest only (0: skip)")
    parser.add_argument("--no-raw-evaluate", action="store_true", help="raw log: bound and ingest only")
    parser.add_argument("--cache", type=Path, default=logs.cache_dir(), help="where generated logs are kept")
    parser.add_argument("--child", nargs=3, metavar=("TRAFFIC", "LABELS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--raw-child", nargs=3, metavar=("LOG", "LABELS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        evaluate_child(Path(args.child[0]), Path(args.child[1]), Path(args.child[2]), args.threads)
        return
    if args.raw_child:
        raw.evaluate_child(Path(args.raw_child[0]), Path(args.raw_child[1]), Path(args.raw_child[2]), args.threads)
        return
    rows = 10_000_000 if args.ten_million else args.rows
    if rows:
        parquet_benchmark(rows, args.seed, args.threads)
    if args.raw_lines:
        raw_benchmark(args.raw_lines, args.seed, args.threads, evaluate=not args.no_raw_evaluate, cache=args.cache)
    if args.json_lines:
        json_benchmark(args.json_lines, args.seed, args.threads, cache=args.cache)


def raw_benchmark(lines: int, seed: int, threads: int | None, *, evaluate: bool, cache: Path) -> None:
    started = time.perf_counter()
    plain, packed, marks = logs.cached_log(
        lines=lines, seed=seed, attack_share=ATTACK_SHARE, pool=lambda: _pool(seed), cache=cache
    )
    labels = raw.labels_csv(marks, seed=seed)
    print(f"== raw log: {lines:,} distinct nginx combined lines ({plain.parent}, ready in "
          f"{time.perf_counter() - started:.1f} s)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="feint-bench-raw-") as scratch:
        raw.run([plain, packed], labels, Path(scratch), threads=threads, evaluate=evaluate)


def json_benchmark(lines: int, seed: int, threads: int | None, *, cache: Path) -> None:
    started = time.perf_counter()
    log = logs.cached_json_log(lines=lines, seed=seed, pool=lambda: _pool(seed), cache=cache)
    print(f"== JSON lines: {lines:,} gateway decision records ({log.parent}, ready in "
          f"{time.perf_counter() - started:.1f} s)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="feint-bench-json-") as scratch:
        raw.run_json(log, Path(scratch), threads=threads)


def parquet_benchmark(rows: int, seed: int, threads: int | None) -> None:
    args = argparse.Namespace(seed=seed, threads=threads)
    print(f"== Parquet dataset: {rows:,} requests")
    with tempfile.TemporaryDirectory(prefix="feint-bench-") as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        traffic, labels = generate(folder, rows, args.seed)
        sizes = f"{traffic.stat().st_size / 2**20:.0f} MiB Parquet, {labels.stat().st_size / 2**20:.0f} MiB labels"
        print(f"generated {rows:,} requests in {time.perf_counter() - started:.1f} s ({sizes})")
        out = folder / "report.json"
        command = [sys.executable, __file__, "--child", str(traffic), str(labels), str(out)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        report = json.loads(out.read_text())
        p50, p99 = matcher_latency(traffic, load_rules(SHARED / "sigma"))
    evaluated = report["bench_wall_seconds"]
    print(f"rows                 {report['dataset']['rows']:,} ({report['dataset']['labeled']:,} labeled)")
    print(f"evaluation wall      {evaluated:.1f} s  (child process {wall:.1f} s with start-up)")
    print(f"rows/s               {report['dataset']['rows'] / evaluated:,.0f}")
    print(f"peak RSS             {peak_kib / 2**20:.2f} GiB")
    print(f"cores                {os.cpu_count()}")
    print(f"matcher per request  p50 {p50:.1f} µs, p99 {p99:.1f} µs  ({MATCHER_SAMPLE:,} requests, 142 rules)")
    print(f"report latency       p50 {report['candidate']['latency_us']['p50']:.1f} µs, "
          f"p99 {report['candidate']['latency_us']['p99']:.1f} µs")  # fmt: skip
    print(f"decision             {report['decision']} ({report['decision_reason']}), risk {report['risk']}, "
          f"confidence {report['confidence']}")  # fmt: skip
    for version in ("production", "candidate"):
        block = report[version]
        print(f"{version:<20} rules {block['rules']}, F1 {block['f1']}, recall {block['recall']}, FPR {block['fpr']}")


if __name__ == "__main__":
    main()
