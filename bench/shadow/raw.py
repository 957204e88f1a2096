"""The raw-log path of the shadow benchmark: ingest and evaluate from an nginx combined log.

For the plain log and its gzip, in the same run:

- the bound: one DuckDB query of ``regexp_extract`` (the reference pattern, six named groups) over
  the whole lines of the file (``read_csv`` with a delimiter that never occurs), every core;
- ``feint shadow ingest LOG --out traffic.parquet`` in a child process: lines/s, peak RSS, and the
  ratio of its lines/s to the bound's (the primary figure: the machine is shared, and the ratio of
  two runs made one after the other is steadier than either);
- ``evaluate`` from the raw log end to end in a child process (import, both versions, report.json
  and report.html written): wall time, peak RSS, rows/s.

The load average is printed before and after, since other work on the machine moves every figure.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[2]
UNLABELED_SHARE = 0.01
# A byte the generated log never holds (nginx escapes every control byte), so no line is split.
_NEVER = "\x01"


def labels_csv(marks: Path, *, seed: int) -> Path:
    """``id,label`` for every line but 1% (ids are line numbers), cached beside the log."""
    out = marks.with_name(f"labels-s{seed}.csv")
    if out.exists():
        return out
    attack = np.load(marks)
    keep = np.random.default_rng(seed + 1).random(len(attack)) >= UNLABELED_SHARE
    ids = pa.array(np.flatnonzero(keep) + 1).cast(pa.string())
    partial = out.with_suffix(".partial")
    with pa.OSFile(str(partial), "wb") as stream:
        stream.write(b"id,label\n")  # Arrow quotes the names of a header it writes
        table = pa.table({"id": ids, "label": pa.array(attack[keep])})
        pacsv.write_csv(table, stream, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    partial.replace(out)
    return out


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _over_lines(log: Path, expression: str) -> tuple[int, int, float, float]:
    """Rows, rows where ``expression`` (of ``line``) is not NULL, seconds and CPU-seconds of one
    DuckDB query over the file's whole lines (every core)."""
    import duckdb

    path = str(log).replace("'", "''")
    query = f"""
        SELECT count(*), count(v) FROM (
            SELECT {expression} AS v
            FROM read_csv('{path}', columns = {{'line': 'VARCHAR'}}, delim = '{_NEVER}', quote = '', escape = '',
                          header = false, auto_detect = false))
    """
    connection = duckdb.connect()
    try:
        started, cpu = time.perf_counter(), _cpu_seconds()
        ((rows, found),) = connection.sql(query).fetchall()
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    finally:
        connection.close()
    return int(rows), int(found), seconds, cpu


def bound(log: Path) -> tuple[int, float, float]:
    """Rows, seconds and CPU-seconds of one regexp_extract query over the file's lines."""
    from feint.shadow.ingest.fast import COMBINED_PATTERN

    pattern = COMBINED_PATTERN.replace("'", "''")
    groups = f"regexp_extract(line, '{pattern}', ['ip', 'time', 'request', 'status', 'referer', 'agent'])"
    rows, matched, seconds, cpu = _over_lines(log, f"NULLIF({groups}.ip, '')")
    if matched != rows:
        raise RuntimeError(f"the bound matched {matched} of {rows} lines")
    return rows, seconds, cpu


def json_bound(log: Path) -> tuple[int, float, float]:
    """Rows, seconds and CPU-seconds of one DuckDB query extracting the mapped keys of every JSON line."""
    from feint.shadow.ingest.jsonl import KEYS

    paths = ", ".join(f"'$.\"{key}\"'" for key in KEYS)
    rows, _, seconds, cpu = _over_lines(log, f"json_extract(line, [{paths}])")
    return rows, seconds, cpu


def run_json(log: Path, scratch: Path, *, threads: int | None) -> dict[str, Any]:
    """Ingest of a JSON-lines log: lines/s, and its ratio to one DuckDB ``json_extract`` pass."""
    print(f"-- {log.name} ({log.stat().st_size / 2**20:,.0f} MiB); {load()}", flush=True)
    rows, bound_seconds, bound_cpu = json_bound(log)
    print(f"bound (DuckDB json_extract)    {rows / bound_seconds:>12,.0f} lines/s  ({bound_seconds:.1f} s, "
          f"{bound_cpu:.1f} CPU-s)", flush=True)  # fmt: skip
    wall, rss, _ = ingest_child(log, scratch, rows=rows, bound=(bound_seconds, bound_cpu), threads=threads)
    (scratch / "traffic.parquet").unlink()
    print(f"-- after: {load()}", flush=True)
    return {"log": log.name, "lines": rows, "bound_seconds": bound_seconds, "ingest_seconds": wall,
            "ingest_rss_gib": rss}  # fmt: skip


def ingest_child(
    log: Path, scratch: Path, *, rows: int, bound: tuple[float, float], threads: int | None
) -> tuple[float, float, int]:
    """``feint shadow ingest`` of ``log`` in a child process, printed with its ratio to the bound;
    returns wall seconds, peak RSS (GiB) and malformed lines."""
    feint = str(Path(sys.executable).with_name("feint"))
    command = [feint, "shadow", "ingest", str(log), "--out", str(scratch / "traffic.parquet")]
    if threads:
        command += ["--threads", str(threads)]
    wall, rss, output, cpu = child(command)
    report = json.loads(output)
    if report["rows"] + report["malformed"] != rows:
        raise RuntimeError(f"ingest read {report['rows']} + {report['malformed']} of {rows} lines")
    print(f"ingest (feint shadow ingest)   {rows / wall:>12,.0f} lines/s  ({wall:.1f} s with the CLI's start-up, "
          f"{cpu:.1f} CPU-s, peak RSS {rss:.2f} GiB, {report['malformed']} malformed)", flush=True)  # fmt: skip
    print(f"ratio ingest / bound           {bound[0] / wall:>12.2f}  (of CPU-seconds: {bound[1] / cpu:.2f})",
          flush=True)  # fmt: skip
    return wall, rss, int(report["malformed"])


def child(command: list[str]) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (GiB), stdout and CPU-seconds of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited with {process.returncode}")
    return wall, usage.ru_maxrss / 2**20, output.decode(), usage.ru_utime + usage.ru_stime


def evaluate_child(traffic: Path, labels: Path, out: Path, threads: int | None) -> None:
    """In the child: evaluate from the raw log, write report.json and report.html."""
    from feint.shadow.evaluate import evaluate
    from feint.shadow.report import render_html
    from feint.shadow.rules.model import rule_set
    from feint.shadow.rules.parse import load_rules

    shared = Path(os.environ.get("FEINT_SHARED_DATA", REPO.parent / "shared" / "data"))
    rules = load_rules(shared / "sigma")
    production = rule_set([r for i, r in enumerate(rules) if i % 10 != 9], name="shared minus every tenth rule")
    candidate = rule_set(rules, name="shared SigmaHQ web rules")
    started = time.perf_counter()
    report = evaluate(production, candidate, traffic=[traffic], labels=labels, threads=threads)
    (out / "report.json").write_text(json.dumps(report))
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    summary = {
        "seconds": time.perf_counter() - started,
        "rows": report["dataset"]["rows"],
        "malformed": report["dataset"].get("malformed_traffic"),
        "decision": report["decision"],
        "f1": [report["production"]["f1"], report["candidate"]["f1"]],
    }
    print(json.dumps(summary))


def run(logs: list[Path], labels: Path, scratch: Path, *, threads: int | None, evaluate: bool) -> list[dict[str, Any]]:
    """The figures of each log, printed as they come."""
    script = str(Path(__file__).resolve().parent / "run.py")
    results = []
    for log in logs:
        print(f"-- {log.name} ({log.stat().st_size / 2**20:,.0f} MiB); {load()}", flush=True)
        rows, bound_seconds, bound_cpu = bound(log)
        print(f"bound (DuckDB regexp_extract)  {rows / bound_seconds:>12,.0f} lines/s  ({bound_seconds:.1f} s, "
              f"{bound_cpu:.1f} CPU-s)", flush=True)  # fmt: skip
        wall, rss, malformed = ingest_child(log, scratch, rows=rows, bound=(bound_seconds, bound_cpu),
                                            threads=threads)  # fmt: skip
        result = {"log": log.name, "lines": rows, "bound_seconds": bound_seconds, "ingest_seconds": wall,
                  "ingest_rss_gib": rss, "malformed": malformed}  # fmt: skip
        (scratch / "traffic.parquet").unlink()
        if evaluate:
            command = [sys.executable, script, "--raw-child", str(log), str(labels), str(scratch)]
            if threads:
                command += ["--threads", str(threads)]
            wall, rss, output, cpu = child(command)
            summary = json.loads(output.strip().splitlines()[-1])
            result |= {"evaluate_seconds": wall, "evaluate_rss_gib": rss, **summary}
            print(f"evaluate from the raw log      {wall:>12.1f} s  (in-process {summary['seconds']:.1f} s, "
                  f"{cpu:.0f} CPU-s, {summary['rows'] / wall:,.0f} rows/s, peak RSS {rss:.2f} GiB; "
                  f"{summary['decision']}, F1 {summary['f1'][0]} / {summary['f1'][1]})", flush=True)  # fmt: skip
        results.append(result)
    print(f"-- after: {load()}", flush=True)
    return results
