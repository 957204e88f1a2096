"""Where a service's CPU goes: py-spy samples of every worker, each stack put in one bucket.

`record` attaches ``py-spy record --format raw`` to each process for a while (without pausing
them: ``--nonblocking``); `split` reads the collapsed stacks and charges each sample to the
innermost frame that names a bucket (a psycopg call made by ``write_and_commit`` is *commit*,
one made while loading the locked rows is *ledger*). Idle samples (the event loop waiting) are
not recorded by py-spy, so the shares are of busy CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

BUCKETS = ("http", "authentication", "rate limit", "validation", "ledger", "commit", "cache", "other")
SAMPLES_PER_SECOND = 200

# (bucket, file fragment, function or None for any), most specific first within a frame.
_RULES: tuple[tuple[str, str, str | None], ...] = (
    ("commit", "credits/store/ledger.py", "write_and_commit"),
    ("commit", "credits/store/ledger.py", "rollback"),
    ("rate limit", "platform/ratelimit.py", None),
    ("rate limit", "platform/cache.py", "acquire"),
    ("rate limit", "platform/cache.py", "lease"),
    ("authentication", "platform/keys.py", None),
    ("authentication", "platform/web.py", "dependency"),
    ("cache", "credits/cache.py", None),
    ("validation", "credits/schemas.py", None),
    ("validation", "credits/hot.py", "_decode"),
    ("validation", "pydantic", None),
    ("validation", "msgspec", None),
    ("ledger", "feint/credits/", None),
    ("http", "fastapi/", None),
    ("http", "starlette/", None),
    ("http", "uvicorn/", None),
    ("http", "granian", None),
    ("http", "platform/web.py", None),
    ("http", "structlog", None),
    ("http", "prometheus_client", None),
    ("http", "opentelemetry", None),
)


def bucket_of(frames: list[str]) -> str:
    """The bucket of one stack (outermost frame first, as py-spy writes it)."""
    for frame in reversed(frames):
        name = frame.split(" (", 1)[0]  # "Class.method" or "function"
        for bucket, fragment, function in _RULES:
            if fragment in frame and (function is None or name == function or name.endswith("." + function)):
                return bucket
    return "other"


def split(raw_files: list[Path]) -> dict[str, float]:
    """Share of samples per bucket over all files (0-1)."""
    counts: Counter[str] = Counter()
    for path in raw_files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            counts[bucket_of(frames)] += int(count)
    total = sum(counts.values()) or 1
    return {bucket: counts[bucket] / total for bucket in BUCKETS}


def top(raw_files: list[Path], *, count: int = 15) -> list[tuple[str, float, float]]:
    """The Feint and library functions with the most samples, as (frame, inclusive share, self share) of
    busy samples; frames found in nearly every sample (the process's entry points, the event loop) are
    left out, they say nothing."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for path in raw_files:
        for line in path.read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            if not stack or not number.isdigit():
                continue
            frames = [_short(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            samples = int(number)
            total += samples
            for frame in set(frames):
                inclusive[frame] += samples
            if frames:
                own[frames[-1]] += samples
    total = total or 1
    shown = [
        (frame, n / total, own[frame] / total)
        for frame, n in inclusive.most_common()
        if n / total < 0.9 and not frame.endswith(_ENTRY_FILES)
    ]
    return shown[:count]


# The process's entry points: in every busy sample of a worker, whatever it was doing.
_ENTRY_FILES = (
    "(<frozen runpy>)",
    "(feint/__main__.py)",
    "(feint/cli.py)",
    "(platform/serve.py)",
    "(_click/core.py)",
    "(typer/main.py)",
    "(typer/core.py)",
    "(asyncio/runners.py)",
    "(asyncio/base_events.py)",
)


def _short(frame: str) -> str:
    """``name (path/to/file.py:12)`` as ``name (folder/file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({'/'.join(where.split(':')[0].split('/')[-2:])})" if where else name


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def record(pids: list[int], *, seconds: int) -> list[subprocess.Popen[bytes]]:
    """Start py-spy on each process; `finish` collects the files."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (make install-dev)")
    folder = Path(tempfile.mkdtemp(prefix="feint-bench-spy-"))
    procs = []
    for pid in pids:
        out = folder / f"{pid}.txt"
        command = [binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(SAMPLES_PER_SECOND)]
        command += ["--format", "raw", "--nonblocking", "--output", str(out)]
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


def finish(procs: list[subprocess.Popen[bytes]], *, timeout: float) -> list[Path]:
    files = []
    for proc in procs:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        args = proc.args if isinstance(proc.args, list) else []
        files.append(Path(str(args[args.index("--output") + 1])))
    return files
