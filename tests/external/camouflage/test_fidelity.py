"""The decoys answer the whole probe corpus as the real nginx and Apache do (>= 95% identical)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from feint.camouflage.decoy import exchange, fidelity, persona, probes, server
from feint.camouflage.decoy.responder import PersonaResponder
from tests.external.camouflage import real_servers
from tests.external.conftest import debian_tool

pytestmark = pytest.mark.external

IDENTICAL_SHARE_MIN = 0.95


@pytest.fixture
def www() -> Iterator[Path]:
    """A docroot parent the servers' workers can read (pytest's tmp dirs are 0700)."""
    with real_servers.workdir() as path:
        yield path


@pytest.fixture
def real_nginx() -> Iterator[tuple[int, str]]:
    """Debian's nginx with its package configuration, on a loopback port, serving nginx-debian's site."""
    with real_servers.nginx(debian_tool("nginx", "nginx"), "nginx-debian", main_edits={}) as port:
        yield port, "nginx-debian"


@pytest.fixture
def real_apache() -> Iterator[tuple[int, str]]:
    """Debian's apache2 with its package configuration, on a loopback port, serving apache-debian's site."""
    with real_servers.apache(debian_tool("apache2", "apache2"), "apache-debian", security={}) as port:
        yield port, "apache-debian"


async def _score(real_port: int, name: str) -> float:
    corpus = list(probes.load())
    loaded = persona.load(name)
    decoy = await server.serve(PersonaResponder(loaded), host="127.0.0.1", port=0)
    try:
        # Both serve the persona's site at its site_mtime (real_servers sets it on the files).
        real = await exchange.exchange_all("127.0.0.1", real_port, corpus, mtime=loaded.site_mtime)
        fake = await exchange.exchange_all("127.0.0.1", decoy.port, corpus, mtime=loaded.site_mtime)
    finally:
        await decoy.stop(grace_seconds=1)
    verdicts = [
        fidelity.compare(real[p.name], fake[p.name], real_port=real_port, decoy_port=decoy.port) for p in corpus
    ]
    print(fidelity.report(name, verdicts))
    return fidelity.score(verdicts)


async def test_nginx_decoy_matches_real_nginx(real_nginx: tuple[int, str]) -> None:
    """At least 95% of the probes get the same bytes and close behaviour from the nginx decoy."""
    assert await _score(*real_nginx) >= IDENTICAL_SHARE_MIN


async def test_apache_decoy_matches_real_apache(real_apache: tuple[int, str]) -> None:
    """At least 95% of the probes get the same bytes and close behaviour from the Apache decoy."""
    assert await _score(*real_apache) >= IDENTICAL_SHARE_MIN


def _nmap_service(port: int) -> str:
    return real_servers.nmap_line(debian_tool("nmap", "nmap"), port).split(None, 3)[-1].replace(str(port), "PORT")


async def test_nmap_reports_the_same_service(real_nginx: tuple[int, str]) -> None:
    """nmap -sV names the nginx decoy exactly as it names the real nginx."""
    import asyncio

    real_port, name = real_nginx
    decoy = await server.serve(PersonaResponder(persona.load(name)), host="127.0.0.1", port=0)
    try:
        real_line = await asyncio.to_thread(_nmap_service, real_port)
        decoy_line = await asyncio.to_thread(_nmap_service, decoy.port)
    finally:
        await decoy.stop(grace_seconds=1)
    print(f"real:  {real_line}\ndecoy: {decoy_line}")
    assert "nginx 1.22.1" in real_line
    assert decoy_line == real_line
