"""nmap -sV names the IIS decoy "Microsoft IIS httpd" with the version it announces."""

from __future__ import annotations

import asyncio
import re

import pytest

from feint.camouflage.decoy import persona, server
from feint.camouflage.decoy.responder import PersonaResponder
from tests.external.camouflage import real_servers
from tests.external.conftest import debian_tool

pytestmark = pytest.mark.external


def _nmap_service(port: int) -> str:
    return real_servers.nmap_line(debian_tool("nmap", "nmap"), port)


@pytest.mark.parametrize("version", ["10.0", "8.5"])
async def test_nmap_reports_microsoft_iis_httpd_with_the_version(version: str) -> None:
    """The IIS decoy is "Microsoft IIS httpd <version>" to nmap (nmap-service-probes' own IIS match)."""
    decoy = await server.serve(PersonaResponder(persona.load("iis-10", version=version)), host="127.0.0.1", port=0)
    try:
        line = await asyncio.to_thread(_nmap_service, decoy.port)
    finally:
        await decoy.stop(grace_seconds=1)
    print(line)
    assert re.search(rf"\bhttp\s+Microsoft IIS httpd {re.escape(version)}$", line), line
