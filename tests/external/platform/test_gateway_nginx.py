"""The gateway in front of a real nginx: what a client gets through it is what nginx sent."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.external.conftest import debian_tool
from tests.nginx import free_port, running_nginx

pytestmark = pytest.mark.external


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[str]:
    """A real nginx serving a static site on its own loopback port."""
    binary = debian_tool("nginx", "nginx")
    port = free_port()
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>real nginx</h1>\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)
    http = f"""
        gzip on;
        gzip_types text/html;
        gzip_min_length 1;
        server {{
            listen 127.0.0.1:{port};
            root {root};
            location /echo {{ return 200 "$request_method $request_uri $http_x_forwarded_for\\n"; }}
        }}
    """
    with running_nginx(tmp_path, http=http, port=port, binary=binary, worker_connections=64, access_log=True):
        yield f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def gateway_in_front_of(upstream: str) -> AsyncIterator[str]:
    """The real gateway (decoy server + gateway responder, starter rules) in front of ``upstream``."""
    from feint.camouflage.decoy import server
    from feint.camouflage.engine.clients import MemoryClients
    from feint.camouflage.engine.decisions import DecisionLog
    from feint.camouflage.engine.rulesource import RuleReloader
    from feint.camouflage.engine.upstream import Upstream
    from feint.camouflage.gateway import Gateway, OnePersona
    from feint.camouflage.listener import MinimalNginx

    rules = RuleReloader.for_settings(db=None, tenant="t", ruleset="starter", path=None, poll_seconds=60)
    await rules.refresh()
    gateway = Gateway(
        upstream=Upstream(upstream),
        rules=rules,
        clients=MemoryClients(),
        diverter=OnePersona(MinimalNginx(), persona="nginx"),
        decisions=DecisionLog(db=None, path=None, queue_max=100),
        tenant_id=uuid.uuid4(),
        divert_threshold=5,
    )
    listening = await server.serve(gateway, host="127.0.0.1", port=0)
    try:
        yield f"http://127.0.0.1:{listening.port}"
    finally:
        await listening.stop(grace_seconds=1)
        await gateway.upstream.close()


async def test_pass_through_is_faithful(nginx: str) -> None:
    """Status, body (byte for byte, compressed or not) and the forwarded-for chain survive the gateway."""
    async with gateway_in_front_of(nginx) as base, httpx.AsyncClient(base_url=base) as client:
        direct = httpx.get(nginx + "/big.bin")
        through = await client.get("/big.bin")
        assert through.status_code == 200
        assert through.content == direct.content
        assert through.headers["etag"] == direct.headers["etag"]
        gz = await client.get("/", headers={"accept-encoding": "gzip"})
        assert gz.headers["content-encoding"] == "gzip"
        assert gz.text == "<h1>real nginx</h1>\n"
        echo = await client.get("/echo?a=1&b=%20x")
        assert echo.text == "GET /echo?a=1&b=%20x 127.0.0.1\n"
        missing = await client.get("/nope")
        assert missing.status_code == 404
        assert "nginx" in missing.text


async def test_nmap_version_scan_meets_the_decoy(nginx: str, tmp_path: Path) -> None:
    """nmap -sV against the gateway: its probes are answered by the decoy; nginx never sees them."""
    binary = debian_tool("nmap", "nmap")
    async with gateway_in_front_of(nginx) as base:
        port = base.rsplit(":", 1)[1]
        out = tmp_path / "nmap.txt"
        proc = await asyncio.create_subprocess_exec(
            binary, "-sV", "--version-light", "-Pn", "-n", "-p", port, "-oN", str(out), "127.0.0.1",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(120):
            await proc.wait()
    report = out.read_text()
    assert f"{port}/tcp open" in report and "http" in report
    access = (tmp_path / "access.log").read_text() if (tmp_path / "access.log").exists() else ""
    assert "Nmap" not in access and "nmap" not in access
