"""`feint serve camouflage` in front of a real upstream process: scanners get decoys, shoppers the shop."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, running_service, service_env

pytestmark = pytest.mark.e2e

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SQLMAP = "sqlmap/1.7.2#stable (https://sqlmap.org)"
NIKTO_PATHS = ("/admin.php", "/.git/config", "/phpmyadmin/", "/cgi-bin/test-cgi", "/../../../../etc/passwd",
               "/index.php?page=../../../../etc/passwd", "/wp-login.php", "/.env", "/server-status")  # fmt: skip
HEAD_SECONDS_MAX = 20.0  # the slowest engagement profile trickles 64 bytes every 2 s
NIKTO = "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000003)"


async def _head(port: int, path: str, agent: str) -> bytes:
    """The head of the answer to one request (decoys may trickle the rest slowly: not waited for)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: shop\r\nUser-Agent: {agent}\r\nAccept: */*\r\n\r\n".encode())
        async with asyncio.timeout(HEAD_SECONDS_MAX):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


async def _heads(port: int, probes: list[tuple[str, str]]) -> list[bytes]:
    return list(await asyncio.gather(*(_head(port, path, agent) for path, agent in probes)))


@contextlib.contextmanager
def upstream_process(root: Path) -> Iterator[tuple[str, Path]]:
    """Python's http.server on a folder; its request log (stderr) shows every request it saw."""
    port = free_port()
    log = root.parent / "upstream.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
            stdout=sink,
            stderr=sink,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(base + "/index.html", timeout=0.5)
                break
            time.sleep(0.05)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_scanners_get_decoys_browsing_reaches_upstream(clean_db: str, tmp_path: Path) -> None:
    """sqlmap's agent and nikto-style probes are answered by the decoy and never reach the upstream;
    a browser's pages arrive byte for byte as the upstream serves them."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(b"<h1>the real shop</h1>\n")
    (site / "catalogue.json").write_bytes(b'{"items": [1, 2, 3]}\n' * 500)
    gateway_port = free_port()
    with upstream_process(site) as (upstream, upstream_log):
        env = service_env(
            clean_db,
            tmp_path / "home",
            FEINT_UPSTREAM_URL=upstream,
            FEINT_GATEWAY_PORT=str(gateway_port),
            FEINT_GATEWAY_DECISION_LOG=str(tmp_path / "decisions.jsonl"),
        )
        with running_service("camouflage", env):
            gateway = f"http://127.0.0.1:{gateway_port}"
            for _ in range(100):
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(gateway + "/index.html", headers={"user-agent": BROWSER}, timeout=1)
                    break
                time.sleep(0.05)
            with httpx.Client(base_url=gateway, headers={"user-agent": BROWSER}) as shopper:
                for path in ("/index.html", "/catalogue.json"):
                    through = shopper.get(path)
                    direct = httpx.get(upstream + path)
                    assert through.status_code == 200 and through.content == direct.content
            probes = [("/index.html?id=1", SQLMAP)]
            probes += [(path, NIKTO.replace("000003", f"{n:06d}")) for n, path in enumerate(NIKTO_PATHS)]
            heads = asyncio.run(_heads(gateway_port, probes))
            for head in heads:
                assert head.startswith(b"HTTP/1.1 ") and b"the real shop" not in head
                assert re.search(rb"(?i)\r\nserver: (nginx|apache|microsoft|express)", head), head[:200]
            time.sleep(0.5)  # the decision log is written in batches
        seen = upstream_log.read_text(errors="replace")
    assert "sqlmap" not in seen and "Nikto" not in seen
    assert not any(path.split("?")[0] in seen for path in NIKTO_PATHS if path != "/")
    decisions = (tmp_path / "decisions.jsonl").read_text().splitlines()
    assert sum('"action":"divert"' in line for line in decisions) >= 1 + len(NIKTO_PATHS)
