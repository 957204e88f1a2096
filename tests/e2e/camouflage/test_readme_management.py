"""The README's camouflage example runs as written against `feint up` (only the ports moved)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, service_env

pytestmark = pytest.mark.e2e

START_SECONDS_MAX = 60.0
EXAMPLE_SECONDS_MAX = 120.0
HEADING = "## Camouflage: what the gateway saw"


def readme_example() -> str:
    """The shell block under the camouflage heading of the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text.split(HEADING, 1)[1].split("```sh", 1)[1].split("```", 1)[0]


def test_readme_camouflage_example(clean_db: str, tmp_path: Path) -> None:
    """Each command of the example answers what its comment says: a session, its decision's explanation,
    its band's arms and an allow-list entry, for the key the example creates."""
    ports = {"credits": free_port(), "shadow": free_port(), "camouflage": free_port(), "gateway": free_port()}
    env = service_env(clean_db, tmp_path / "home", **{f"FEINT_{k.upper()}_PORT": str(v) for k, v in ports.items()})
    venv = Path(sys.executable).parent
    env["PATH"] = f"{venv}{os.pathsep}{env.get('PATH', '')}"
    script = (
        readme_example()
        .replace(".venv/bin/feint", str(venv / "feint"))
        .replace("127.0.0.1:5006", f"127.0.0.1:{ports['camouflage']}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{ports['gateway']}")
    )
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([str(venv / "feint"), "up"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + START_SECONDS_MAX
        while True:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{ports['gateway']}/", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "feint up did not answer"
            time.sleep(0.2)
        result = subprocess.run(
            ["bash", "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=EXAMPLE_SECONDS_MAX
        )
    finally:
        up.terminate()
        up.wait(timeout=30)
        log.close()
    out = result.stdout
    assert '"band":"maximum"' in out and '"honeytokens":[{' in out, out[-3000:] + result.stderr[-2000:]
    assert '"action":"divert"' in out and '"rule_hits":[{' in out and '"detail":"scanner"' in out, out[-3000:]
    assert '"items":[{"band":"maximum"' in out, out[-3000:]
    assert '{"client":"192.0.2.10","note":"uptime monitor"' in out, out[-1000:]
    assert "Traceback" not in result.stderr and "/problems/" not in out, out[-2000:] + result.stderr[-2000:]
