"""docs/gateway-nginx.conf in a real nginx: it asks the gateway, and diverted clients meet the decoy."""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path

import httpx
import pytest

from feint.camouflage.decoy import server
from feint.camouflage.engine.clients import MemoryClients
from feint.camouflage.engine.decisions import DecisionLog
from feint.camouflage.engine.rulesource import RuleReloader
from feint.camouflage.engine.upstream import Upstream
from feint.camouflage.gateway import Gateway, OnePersona
from feint.camouflage.listener import MinimalNginx
from tests.external.conftest import debian_tool
from tests.integration.camouflage.upstream import RawUpstream, raw_upstream
from tests.nginx import free_port, running_nginx

pytestmark = pytest.mark.external

DOC = Path(__file__).resolve().parents[3] / "docs" / "gateway-nginx.conf"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


async def test_auth_request_config_routes_by_decision(tmp_path: Path) -> None:
    """Through nginx: a browser reaches the application, sqlmap gets the decoy; the app never sees sqlmap."""
    binary = debian_tool("nginx", "nginx")
    async with raw_upstream() as app:
        rules = RuleReloader.for_settings(db=None, tenant="t", ruleset="starter", path=None, poll_seconds=60)
        await rules.refresh()
        gateway = Gateway(
            upstream=Upstream(f"http://127.0.0.1:{app.port}"),
            rules=rules,
            clients=MemoryClients(),
            diverter=OnePersona(MinimalNginx(), persona="nginx"),
            decisions=DecisionLog(db=None, path=None, queue_max=100),
            tenant_id=uuid.uuid4(),
            divert_threshold=5,
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
        )
        listening = await server.serve(gateway, host="127.0.0.1", port=0)
        port = free_port()
        site = DOC.read_text()
        site = site.replace("127.0.0.1:3000", f"127.0.0.1:{app.port}")
        site = site.replace("127.0.0.1:8080", f"127.0.0.1:{listening.port}")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
        (tmp_path / "feint.conf").write_text(site)
        try:
            with running_nginx(
                tmp_path,
                http=f"include {tmp_path}/feint.conf;",
                port=port,
                binary=binary,
                worker_connections=64,
                access_log=True,
            ):
                await _routes_by_decision(port, app)
        finally:
            await listening.stop(grace_seconds=1)
            await gateway.upstream.close()


async def _routes_by_decision(port: int, app: RawUpstream) -> None:
    """A browser reaches the application through nginx; sqlmap and an injection meet the decoy."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        benign = await client.post("/cart?item=3", content=b"qty=1", headers={"user-agent": BROWSER})
        assert benign.status_code == 200 and benign.content.startswith(b"POST /cart?item=3 HTTP/1.")
        assert b"qty=1" in benign.content
        seen = len(app.requests)
        attack = await client.get("/", headers={"user-agent": "sqlmap/1.7.2#stable (https://sqlmap.org)"})
        assert attack.status_code == 404 and b"nginx/1.22.1" in attack.content  # the decoy's page
        probe = await client.get("/?id=1+union+select+password", headers={"user-agent": BROWSER + " x"})
        assert b"nginx/1.22.1" in probe.content
        assert len(app.requests) == seen
        assert not any(b"sqlmap" in raw for raw in app.requests)
