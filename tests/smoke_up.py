"""Bare-machine smoke test: `feint up` on a fresh FEINT_HOME with nothing configured.

All three services and the gateway must answer, then SIGTERM must stop everything, the embedded
PostgreSQL included, leaving no process behind. Prints the time from start to healthy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 30.0
PORTS = {"credits": 5004, "shadow": 5005, "camouflage": 5006}


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="feint-smoke-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    env["FEINT_HOME"] = str(home)
    venv_bin = Path(sys.executable).parent
    proc = subprocess.Popen([str(venv_bin / "feint"), "up"], env=env)
    started = time.perf_counter()
    try:
        pending = {f"http://127.0.0.1:{port}/health" for port in PORTS.values()} | {"http://127.0.0.1:8080/"}
        while pending:
            if proc.poll() is not None:
                print(f"feint up exited early with {proc.returncode}")
                return 1
            if time.perf_counter() - started > START_SECONDS_MAX:
                print(f"not healthy after {START_SECONDS_MAX:.0f} s: {sorted(pending)}")
                return 1
            for url in list(pending):
                try:
                    if httpx.get(url, timeout=1.0).status_code == 200:
                        pending.discard(url)
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        print(f"all services healthy {time.perf_counter() - started:.2f} s after `feint up` started")
        children = psutil.Process(proc.pid).children(recursive=True)
        postgres = [p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            proc.kill()
            print("feint up did not stop within the limit after SIGTERM")
            return 1
    time.sleep(0.5)
    left = [p for p in [*children, *postgres] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if left:
        print(f"processes left behind: {[(p.pid, p.name()) for p in left]}")
        return 1
    print(f"stopped cleanly (exit {code}); {len(postgres)} embedded PostgreSQL process(es) gone")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
