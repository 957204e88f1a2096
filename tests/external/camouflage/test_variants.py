"""Each recorded variant persona answers the probe corpus as the real server so configured (>= 95%),
and Apache's request timeout (408, or a silent close) is answered as the real Apache answers it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil

import pytest

from feint.camouflage.decoy import exchange, fidelity, persona, probes, server
from feint.camouflage.decoy.responder import PersonaResponder
from tests.conftest import require_or_skip
from tests.external.camouflage import real_servers
from tests.external.conftest import _apt_install, debian_tool

pytestmark = pytest.mark.external

IDENTICAL_SHARE_MIN = 0.95
PLAIN_VARIANTS = sorted(n for n, v in real_servers.VARIANTS.items() if v.kind in ("nginx", "apache"))


async def _score(real_port: int, loaded: persona.Persona) -> float:
    corpus = list(probes.load())
    decoy = await server.serve(PersonaResponder(loaded), host="127.0.0.1", port=0)
    try:
        real = await exchange.exchange_all("127.0.0.1", real_port, corpus, mtime=loaded.site_mtime)
        fake = await exchange.exchange_all("127.0.0.1", decoy.port, corpus, mtime=loaded.site_mtime)
    finally:
        await decoy.stop(grace_seconds=1)
    verdicts = [
        fidelity.compare(real[p.name], fake[p.name], real_port=real_port, decoy_port=decoy.port) for p in corpus
    ]
    print(fidelity.report(loaded.name, verdicts))
    return fidelity.score(verdicts)


def _binary(kind: str) -> str:
    binary, package = real_servers.BINARIES[kind]
    if kind == "tomcat":
        _need_tomcat()
    return debian_tool(binary, package)


def _need_tomcat() -> None:
    """Debian's tomcat10 (its catalina.sh is not on PATH, so debian_tool cannot look for it)."""
    catalina = real_servers.TOMCAT_HOME / "bin" / "catalina.sh"
    if not catalina.is_file() and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install("tomcat10")
    if not catalina.is_file():
        require_or_skip("tomcat10", f"{catalina} is missing (apt-get install tomcat10)", env="FEINT_REQUIRE_EXTERNAL")


@pytest.mark.parametrize("name", PLAIN_VARIANTS)
async def test_variant_matches_the_real_server_so_configured(name: str) -> None:
    """nginx server_tokens off / upstream defaults, Apache ServerTokens Prod / TraceEnable On: >= 95% identical."""
    variant = real_servers.VARIANTS[name]
    with variant.start(_binary(variant.kind)) as port:
        score = await _score(port, persona.load(name))
    assert score >= IDENTICAL_SHARE_MIN


async def test_nginx_upstream_120_page_is_served_as_the_real_nginx_serves_it() -> None:
    """The 1.18-1.21.1 welcome page variant, announced as the real binary's version, matches it."""
    loaded = persona.load("nginx-upstream-1.20", version="1.22.1")
    binary = _binary("nginx")
    with real_servers.nginx(
        binary, "nginx-upstream-1.20", main_edits={"gzip on;": "gzip off;"}, upstream_conf=True
    ) as port:
        score = await _score(port, loaded)
    assert score >= IDENTICAL_SHARE_MIN


async def _silence(port: int, payload: bytes) -> bytes:
    """What the server writes after ``payload`` and then silence, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if payload:
        writer.write(payload)
        await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=120)
    writer.close()
    return data


async def test_apache_request_timeout_matches_real_apache() -> None:
    """A stalled head gets Apache's 408 page, half a request line a silent close, a stalled body a 408 naming Host."""
    cases = {
        "head": b"GET / HTTP/1.1\r\nHost: x\r\n",
        "line": b"GET / HT",
        "body": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab",
    }
    loaded = persona.load("apache-debian")
    decoy = await server.serve(PersonaResponder(loaded), host="127.0.0.1", port=0)
    try:
        with real_servers.apache(_binary("apache"), "apache-debian", security={}) as port:
            real = await asyncio.gather(*(_silence(port, c) for c in cases.values()))
        fake = await asyncio.gather(*(_silence(decoy.port, c) for c in cases.values()))
    finally:
        await decoy.stop(grace_seconds=1)
    for name, r, f in zip(cases, real, fake, strict=True):
        print(f"{name}: real {r[:40]!r}… decoy {f[:40]!r}…")
        assert _strip(r, port) == _strip(f, decoy.port), name
    assert real[1] == b"" and real[0].startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def _strip(data: bytes, port: int) -> bytes:
    """``data`` with the Date value and the port number blanked."""
    return re.sub(rb"Date: [^\r]*", b"Date: -", data).replace(str(port).encode(), b"PORT")


PROTOCOL_STATUSES = (b"HTTP/1.1 400 ", b"HTTP/1.1 417 ", b"HTTP/1.1 505 ")


async def test_spring_persona_answers_tomcats_protocol_refusals_as_real_tomcat() -> None:
    """Where Tomcat 10.1's connector refuses a request (400, 417, 505, a silent close), the Spring decoy
    answers as the real Tomcat does; the servlet-level answers are Spring's (tests/unit/…/test_spring_persona)."""
    corpus = list(probes.load())
    variant = real_servers.VARIANTS["spring-boot-tomcat"]
    decoy = await server.serve(PersonaResponder(persona.load("spring-boot-tomcat")), host="127.0.0.1", port=0)
    try:
        with variant.start(_binary("tomcat")) as port:
            real = await exchange.exchange_all("127.0.0.1", port, corpus)
        fake = await exchange.exchange_all("127.0.0.1", decoy.port, corpus)
    finally:
        await decoy.stop(grace_seconds=1)
    refused = [p for p in corpus if real[p.name].data.startswith(PROTOCOL_STATUSES) or not real[p.name].data]
    verdicts = [fidelity.compare(real[p.name], fake[p.name], real_port=port, decoy_port=decoy.port) for p in refused]
    print(fidelity.report("spring-boot-tomcat (Tomcat's refusals)", verdicts))
    assert len(refused) >= 20
    assert fidelity.score(verdicts) >= IDENTICAL_SHARE_MIN
