"""Raw access logs for the benchmark: nginx combined lines drawn from the benchmark's request pool.

Generation is vectorised (Arrow string kernels over the 110,000 pool requests, then one
``binary_join_element_wise`` per million lines) and cached between runs under
``run.py --cache`` (default ``$XDG_CACHE_HOME/feint-bench`` or ``~/.cache/feint-bench``), keyed by the
line count, the seed and ``GENERATOR_VERSION``.

Each line is ``ip - - [time] "request line" status bytes "referer" "agent"`` as nginx writes it
with ``log_format combined`` (escape=default: ``"``, ``\\`` and bytes outside 32-126 as ``\\xHH``;
nginx documentation of ``log_format``). The request line, referer, agent, address and status are
the pool request's (a missing status, or one nginx could not log, is ``-``), so the records read
back from the log are those of the Parquet benchmark apart from the host (not in the combined
format), the time and the id (the line number). Every line is distinct: the time advances one
second every ``LINES_PER_SECOND`` lines, and the byte count is
``size * LINES_PER_SECOND + line % LINES_PER_SECOND``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

GENERATOR_VERSION = 1
CHUNK_LINES = 1_000_000
LINES_PER_SECOND = 4
START = np.datetime64("2026-01-01T00:00:00", "s")


def cache_dir() -> Path:
    """Where generated logs are kept between runs (``run.py --cache`` chooses another)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "feint-bench"


def nginx_escape(text: str | None) -> str:
    """A field as nginx's default escaping writes it; a missing value is ``-``."""
    if text is None or text == "":
        return "-"
    out = []
    for byte in text.encode("utf-8", "surrogatepass"):
        if byte in (0x22, 0x5C) or byte < 32 or byte > 126:
            out.append(f"\\x{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def _columns(pool: pa.Table) -> dict[str, pa.Array]:
    """The pool's fields as they appear in a log line, one entry per pool request."""
    status = pool.column("sc_status").to_pylist()
    return {
        "ip": pa.array([value or "-" for value in pool.column("c_ip").to_pylist()], pa.string()),
        "request": pa.array([nginx_escape(value) for value in pool.column("request_line").to_pylist()], pa.string()),
        "status": pa.array([str(value) if value is not None and 0 <= value <= 999 else "-" for value in status]),
        "referer": pa.array([nginx_escape(value) for value in pool.column("cs_referer").to_pylist()], pa.string()),
        "agent": pa.array([nginx_escape(value) for value in pool.column("cs_user_agent").to_pylist()], pa.string()),
    }


def _chunk(columns: dict[str, pa.Array], picks: np.ndarray, first: int, sizes: np.ndarray) -> pa.Buffer:
    """Lines ``first``.. of the log (0-based), each ending with a newline, as one buffer."""
    count = len(picks)
    line = np.arange(first, first + count, dtype=np.int64)
    times = pa.array(START + line // LINES_PER_SECOND)
    stamp = pc.strftime(times, format="%d/%b/%Y:%H:%M:%S +0000")
    size = pa.array(sizes * LINES_PER_SECOND + line % LINES_PER_SECOND).cast(pa.string())
    take = pa.array(picks)
    parts = [
        columns["ip"].take(take), " - - [", stamp, '] "', columns["request"].take(take), '" ',
        columns["status"].take(take), " ", size, ' "', columns["referer"].take(take), '" "',
        columns["agent"].take(take), '"\n',
    ]  # fmt: skip
    joined = pc.binary_join_element_wise(*parts, "").cast(pa.large_string())
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset : joined.offset + count + 1]
    return joined.buffers()[2][int(offsets[0]) : int(offsets[-1])]


def write_log(
    path: Path, pool: pa.Table, is_attack: np.ndarray, *, lines: int, seed: int, attack_share: float
) -> np.ndarray:
    """The log at ``path``; returns, per line, 1 for an attack and 0 for benign."""
    columns = _columns(pool)
    benign, attack = np.flatnonzero(is_attack == 0), np.flatnonzero(is_attack == 1)
    rng = np.random.default_rng(seed)
    labels = np.empty(lines, dtype=np.int8)
    with path.open("wb") as out:
        for first in range(0, lines, CHUNK_LINES):
            count = min(CHUNK_LINES, lines - first)
            hostile = rng.random(count) < attack_share
            picks = np.where(hostile, rng.choice(attack, count), rng.choice(benign, count))
            sizes = rng.integers(100, 60_000, count)
            out.write(_chunk(columns, picks, first, sizes))
            labels[first : first + count] = hostile
    return labels


def gzip_file(source: Path, target: Path) -> None:
    """``target`` = gzip of ``source`` (the gzip command at level 1 when present: faster than zlib here)."""
    gzip_command = shutil.which("gzip")
    if gzip_command:
        with source.open("rb") as stdin, target.open("wb") as stdout:
            subprocess.run([gzip_command, "-1", "-c"], stdin=stdin, stdout=stdout, check=True)
        return
    with source.open("rb") as stdin, gzip.open(target, "wb", compresslevel=1) as stdout:
        shutil.copyfileobj(stdin, stdout, 16 << 20)


def cached_log(
    *, lines: int, seed: int, attack_share: float, pool: Callable[[], tuple[pa.Table, np.ndarray]], cache: Path
) -> tuple[Path, Path, Path]:
    """The plain log, its gzip and the per-line labels (``.npy``), generated once per key."""
    folder = cache / f"combined-v{GENERATOR_VERSION}-{lines}-s{seed}-a{attack_share}"
    plain, packed, labels = folder / "access.log", folder / "access.log.gz", folder / "labels.npy"
    if plain.exists() and packed.exists() and labels.exists():
        return plain, packed, labels
    folder.mkdir(parents=True, exist_ok=True)
    table, is_attack = pool()
    partial = folder / "access.log.partial"
    marks = write_log(partial, table, is_attack, lines=lines, seed=seed, attack_share=attack_share)
    np.save(folder / "labels.npy", marks)
    gzip_file(partial, folder / "access.log.gz.partial")
    (folder / "access.log.gz.partial").replace(packed)
    partial.replace(plain)
    return plain, packed, labels


# JSON lines as the gateway's decision log writes them (``Decision.to_json``, compact separators,
# ``ensure_ascii``: non-ASCII text as \\u escapes), one pool request per line.
JSON_GENERATOR_VERSION = 1
_TENANT = "6f1c0c55-3a59-4e43-9a35-0f3e7d2a1b90"


def _json_rests(pool: pa.Table, is_attack: np.ndarray) -> pa.Array:
    """Per pool request, its JSON object after the id and time: ``,"c-ip":...}``."""
    rows = pool.to_pylist()
    rests = []
    for index, row in enumerate(rows):
        attack = bool(is_attack[index])
        explanation = [{"signal": "rule", "points": 4.0, "detail": "sqli probe"}] if attack else []
        document = {
            "c-ip": row["c_ip"], "cs-method": row["cs_method"], "cs-uri-stem": row["cs_uri_stem"],
            "cs-uri-query": row["cs_uri_query"], "cs-user-agent": row["cs_user_agent"],
            "cs-referer": row["cs_referer"], "sc-status": row["sc_status"], "cs-host": row["cs_host"],
            "cs-version": row["cs_version"], "request": row["request_line"], "tenant_id": _TENANT,
            "client_key": f"k{index % 9973}", "fingerprint": f"{index * 2654435761 % 2**32:08x}",
            "threat": 6 if attack else 0, "action": "divert" if attack else "allow", "diverted": attack,
            "gateway_error": False, "explanation": explanation, "rules": ["sqli-probe"] if attack else [],
            "ruleset_version": 3, "rules_tag": "v3", "rollout_id": None, "canary": False,
            "eval_latency_us": round(9.5 + index % 97 / 10, 1), "session": None, "persona": None, "arm": None,
        }  # fmt: skip
        rests.append(json.dumps(document, separators=(",", ":"))[1:])
    return pa.array(rests, pa.string())


def write_json_log(path: Path, pool: pa.Table, is_attack: np.ndarray, *, lines: int, seed: int) -> None:
    """``lines`` JSON lines at ``path``: ids ``d<line>``, times 250 ms apart, pool requests drawn at random."""
    rests = _json_rests(pool, is_attack)
    rng = np.random.default_rng(seed)
    with path.open("wb") as out:
        for first in range(0, lines, CHUNK_LINES):
            count = min(CHUNK_LINES, lines - first)
            line = np.arange(first, first + count, dtype=np.int64)
            times = pa.array(START.astype("datetime64[ms]") + line * 250)
            stamp = pc.strftime(times, format="%Y-%m-%dT%H:%M:%S")
            ids = pa.array(line + 1).cast(pa.string())
            picks = pa.array(rng.integers(0, len(rests), count))
            parts = ['{"id":"d', ids, '","time":"', stamp, '+00:00",', rests.take(picks), "\n"]
            joined = pc.binary_join_element_wise(*parts, "").cast(pa.large_string())
            offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset : joined.offset + count + 1]
            out.write(joined.buffers()[2][int(offsets[0]) : int(offsets[-1])])


def cached_json_log(*, lines: int, seed: int, pool: Callable[[], tuple[pa.Table, np.ndarray]], cache: Path) -> Path:
    """The JSON-lines log, generated once per key."""
    folder = cache / f"jsonl-v{JSON_GENERATOR_VERSION}-{lines}-s{seed}"
    plain = folder / "decisions.jsonl"
    if plain.exists():
        return plain
    folder.mkdir(parents=True, exist_ok=True)
    table, is_attack = pool()
    partial = folder / "decisions.jsonl.partial"
    write_json_log(partial, table, is_attack, lines=lines, seed=seed)
    partial.replace(plain)
    return plain
