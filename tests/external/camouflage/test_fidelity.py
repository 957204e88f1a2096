"""The decoys answer the whole probe corpus as the real nginx and Apache do (>= 95% identical)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from feint.camouflage.decoy import exchange, fidelity, persona, probes, recorder, server
from feint.camouflage.decoy.responder import PersonaResponder
from tests.external.conftest import debian_tool
from tests.nginx import free_port, wait_listening

pytestmark = pytest.mark.external

IDENTICAL_SHARE_MIN = 0.95


def _docroot(name: str, root: Path) -> persona.Persona:
    """The persona's site tree, tokens filled, mtimes as the decoy announces them."""
    p = persona.load(name)
    recorder.render_site(p, root)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (p.site_mtime, p.site_mtime))
    subprocess.run(["chmod", "-R", "a+rX", str(root.parent)], check=True)
    return p


@pytest.fixture
def www() -> Iterator[Path]:
    """A docroot parent the servers' www-data workers can read (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="feint-fidelity-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def real_nginx(tmp_path: Path, www: Path) -> Iterator[tuple[int, str]]:
    """Debian's nginx with its package configuration, on a loopback port, serving nginx-debian's site."""
    binary = debian_tool("nginx", "nginx")
    conf = tmp_path / "nginx"
    shutil.copytree("/etc/nginx", conf, symlinks=False)
    docroot = www / "html"
    _docroot("nginx-debian", docroot)
    port = free_port()
    site = (conf / "sites-enabled" / "default").read_text()
    site = site.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
    site = site.replace("listen [::]:80 default_server;", "").replace("/var/www/html", str(docroot))
    (conf / "sites-enabled" / "default").write_text(site)
    main = (conf / "nginx.conf").read_text()
    main = main.replace("pid /run/nginx.pid;", f"pid {conf}/nginx.pid;").replace("/var/log/nginx/", f"{conf}/")
    main = main.replace("include /etc/nginx/", f"include {conf}/").replace(
        "worker_processes auto;", "worker_processes 1;"
    )
    (conf / "nginx.conf").write_text(main)
    proc = subprocess.Popen([binary, "-c", str(conf / "nginx.conf"), "-p", str(conf), "-g", "daemon off;"])
    try:
        wait_listening(port, proc=proc)
        yield port, "nginx-debian"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def real_apache(tmp_path: Path, www: Path) -> Iterator[tuple[int, str]]:
    """Debian's apache2 with its package configuration, on a loopback port, serving apache-debian's site."""
    binary = debian_tool("apache2", "apache2")
    conf = tmp_path / "apache2"
    shutil.copytree("/etc/apache2", conf, symlinks=False)
    _docroot("apache-debian", www / "html")
    port = free_port()
    (conf / "ports.conf").write_text(f"Listen 127.0.0.1:{port}\n")
    for rel in ("apache2.conf", "sites-enabled/000-default.conf"):
        text = (
            (conf / rel)
            .read_text()
            .replace("/var/www", str(www))
            .replace("<VirtualHost *:80>", f"<VirtualHost *:{port}>")
        )
        (conf / rel).write_text(text)
    for d in ("run", "lock", "logs"):
        (conf / d).mkdir()
    env = {
        **os.environ,
        "APACHE_RUN_USER": "www-data",
        "APACHE_RUN_GROUP": "www-data",
        "APACHE_PID_FILE": f"{conf}/run/apache2.pid",
        "APACHE_RUN_DIR": f"{conf}/run",
        "APACHE_LOCK_DIR": f"{conf}/lock",
        "APACHE_LOG_DIR": f"{conf}/logs",
        "LANG": "C",
    }
    proc = subprocess.Popen([binary, "-d", str(conf), "-f", str(conf / "apache2.conf"), "-DFOREGROUND"], env=env)
    try:
        wait_listening(port, proc=proc)
        yield port, "apache-debian"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _score(real_port: int, name: str) -> float:
    corpus = list(probes.load())
    decoy = await server.serve(PersonaResponder(persona.load(name)), host="127.0.0.1", port=0)
    try:
        real = await exchange.exchange_all("127.0.0.1", real_port, corpus)
        fake = await exchange.exchange_all("127.0.0.1", decoy.port, corpus)
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
    nmap = debian_tool("nmap", "nmap")
    result = subprocess.run(
        [nmap, "-sV", "-Pn", "-n", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if re.match(rf"{port}/tcp", line))
    return line.split(None, 3)[-1].replace(str(port), "PORT")


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
