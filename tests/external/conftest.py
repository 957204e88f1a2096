"""The external tier: real Debian tools (nginx, apache2, nmap, whatweb, …).

A missing tool is installed with apt when the tests run as root (with a ``policy-rc.d`` that
keeps packages from starting their services on port 80); otherwise the test skips with the
reason, except under ``FEINT_REQUIRE_EXTERNAL=1`` (CI), where that is a failure. Each server a
test starts listens on its own loopback port and is stopped by the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from tests.conftest import require_or_skip

APT_SECONDS_MAX = 900
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_apt_lock = threading.Lock()
_apt_updated = False


def debian_tool(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian ``package`` first when it is missing and we are root."""
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        require_or_skip(
            binary,
            f"{binary} is not installed (apt-get install {package}) and we are not root",
            env="FEINT_REQUIRE_EXTERNAL",
        )
    _apt_install(package)
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not found:
        require_or_skip(binary, f"apt-get install {package} did not provide {binary}", env="FEINT_REQUIRE_EXTERNAL")
    return str(found)


def _apt_install(package: str) -> None:
    global _apt_updated
    with _apt_lock:
        created = not POLICY_RC_D.exists()
        if created:
            # exit 101 = "action forbidden": packages are installed but their services are not started.
            POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            if not _apt_updated:
                subprocess.run(
                    ["apt-get", "update", "-qq"], check=True, env=env, timeout=APT_SECONDS_MAX, capture_output=True
                )
                _apt_updated = True
            result = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                env=env,
                timeout=APT_SECONDS_MAX,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                require_or_skip(
                    package, f"apt-get install {package} failed: {result.stderr[-500:]}", env="FEINT_REQUIRE_EXTERNAL"
                )
        finally:
            if created:
                POLICY_RC_D.unlink()
