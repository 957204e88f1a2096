"""nmap -sV and WhatWeb report for each decoy exactly what they report for the real server.

Each tool runs against the real server (nginx and apache2 from Debian, Express 4 from npm) and
against its persona's decoy on loopback; only the port and the address are normalised.
"""

from __future__ import annotations

import asyncio
import re
import subprocess

import pytest

from feint.camouflage.decoy import persona, server
from feint.camouflage.decoy.responder import PersonaResponder
from tests.external.camouflage.real_express import real_express  # noqa: F401 (fixture)
from tests.external.camouflage.test_fidelity import real_apache, real_nginx, www  # noqa: F401 (fixtures)
from tests.external.conftest import debian_tool

pytestmark = pytest.mark.external

TOOL_SECONDS_MAX = 300
# WhatWeb's default run on the site root, on a directory without its slash (it follows the 301
# with the same request: probes whatweb-redirect and whatweb-follow) and on a missing page.
WHATWEB_PATHS = ("/", "/admin", "/whatweb-missing")
# 1, the default (one request per URL), and 3, aggressive (plugins that matched send their own
# requests: Apache's fetches /icons/apache_pb.gif and apache_pb2.gif, in the corpus too).
WHATWEB_AGGRESSION = (1, 3)
# What each tool must name for the real server: the check is not vacuous when both say nothing.
EXPECTED = {
    "nginx-debian": ("nginx 1.22.1", "HTTPServer[nginx/1.22.1]"),
    "apache-debian": ("Apache httpd 2.4.", "HTTPServer[Debian Linux][Apache/2.4."),
    "express-4": ("Express", "X-Powered-By[Express]"),
}
SERVERS = ["real_nginx", "real_apache", "real_express"]


def _nmap(port: int) -> str:
    """nmap -sV's service line for ``port``, the port replaced by PORT."""
    nmap = debian_tool("nmap", "nmap")
    result = subprocess.run(
        [nmap, "-sV", "-Pn", "-n", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=TOOL_SECONDS_MAX,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if re.match(rf"{port}/tcp", line))
    return line.split(None, 3)[-1].replace(str(port), "PORT")


def _whatweb(port: int) -> list[str]:
    """WhatWeb's report lines for WHATWEB_PATHS at each of WHATWEB_AGGRESSION, port and address
    normalised, sorted."""
    whatweb = debian_tool("whatweb", "whatweb")
    urls = [f"http://127.0.0.1:{port}{path}" for path in WHATWEB_PATHS]
    lines = []
    for level in WHATWEB_AGGRESSION:
        result = subprocess.run(
            [whatweb, "--color=never", "--no-errors", "--max-threads=1", f"--aggression={level}", *urls],
            capture_output=True,
            text=True,
            timeout=TOOL_SECONDS_MAX,
            check=True,
        )
        lines += [
            f"-a {level}: " + line.replace(f"127.0.0.1:{port}", "HOST:PORT") for line in result.stdout.splitlines()
        ]
    return sorted(line for line in lines if not line.endswith(": "))


async def _both(real_port: int, name: str, tool: str) -> tuple[object, object]:
    run = _nmap if tool == "nmap" else _whatweb
    decoy = await server.serve(PersonaResponder(persona.load(name)), host="127.0.0.1", port=0)
    try:
        real = await asyncio.to_thread(run, real_port)
        fake = await asyncio.to_thread(run, decoy.port)
    finally:
        await decoy.stop(grace_seconds=1)
    return real, fake


@pytest.mark.parametrize("real_server", SERVERS)
async def test_nmap_reports_the_same_service(real_server: str, request: pytest.FixtureRequest) -> None:
    """nmap -sV names each decoy exactly as it names the real server."""
    real_port, name = request.getfixturevalue(real_server)
    real, fake = await _both(real_port, name, "nmap")
    print(f"{name} nmap real:  {real}\n{name} nmap decoy: {fake}")
    assert EXPECTED[name][0] in str(real)
    assert fake == real


@pytest.mark.parametrize("real_server", SERVERS)
async def test_whatweb_reports_the_same(real_server: str, request: pytest.FixtureRequest) -> None:
    """WhatWeb reports the same plugins and values for each decoy as for the real server."""
    real_port, name = request.getfixturevalue(real_server)
    real, fake = await _both(real_port, name, "whatweb")
    print(f"{name} whatweb real:\n  " + "\n  ".join(map(str, real)))
    print(f"{name} whatweb decoy:\n  " + "\n  ".join(map(str, fake)))
    assert any(EXPECTED[name][1] in line for line in real)  # type: ignore[attr-defined]
    assert fake == real
