"""The real Express 4 (npm, pinned by tests/external/camouflage/express/package-lock.json) on Node.

``npm ci`` installs the locked tree once per lock file into ``.feint-test/express-<lock hash>/``
(gitignored; CI has the npm registry); each test then starts ``express/app.js`` on its own
loopback port, serving the express-4 persona's site tree, and stops it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, require_or_skip
from tests.external.camouflage.real_servers import docroot, wait_listening
from tests.external.conftest import debian_tool

APP_DIR = Path(__file__).parent / "express"
APP_FILES = ("package.json", "package-lock.json", "app.js")
NPM_SECONDS_MAX = 600
PERSONA = "express-4"


def _installed_app() -> Path:
    """A directory holding app.js and the locked node_modules (npm ci, cached by the lock's hash)."""
    debian_tool("node", "nodejs")
    npm = debian_tool("npm", "npm")
    digest = hashlib.sha256(b"".join((APP_DIR / name).read_bytes() for name in APP_FILES)).hexdigest()[:16]
    target = REPO / ".feint-test" / f"express-{digest}"
    if (target / "node_modules" / "express" / "package.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-", dir=target.parent))
    try:
        for name in APP_FILES:
            shutil.copy2(APP_DIR / name, staging / name)
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=NPM_SECONDS_MAX,
            check=False,
        )
        if result.returncode != 0:
            require_or_skip("express", f"npm ci failed: {result.stderr[-800:]}", env="FEINT_REQUIRE_EXTERNAL")
        try:
            staging.rename(target)
        except OSError:
            # Another test process finished first: its tree is the same lock's.
            if not (target / "node_modules" / "express" / "package.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture
def real_express(www: Path) -> Iterator[tuple[int, str]]:
    """Express 4 with express.static over the express-4 persona's site tree, on a loopback port."""
    app = _installed_app()
    node = debian_tool("node", "nodejs")
    docroot(PERSONA, www / "html")
    port = free_port()
    proc = subprocess.Popen([node, str(app / "app.js"), str(www / "html"), str(port)])
    try:
        wait_listening(port, proc=proc)
        yield port, PERSONA
    finally:
        proc.terminate()
        proc.wait(timeout=10)
