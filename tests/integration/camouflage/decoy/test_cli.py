"""`feint camouflage personas|decoy`: the listing names every persona; a decoy process serves the persona's
Server header (with --version); bad persona and version names fail with a clear message and exit 1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from feint.camouflage.decoy import persona
from feint.cli import app

pytestmark = pytest.mark.integration

START_SECONDS_MAX = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _feint(*args: str) -> subprocess.Popen[bytes]:
    code = "from feint.cli import app; app()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "camouflage", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def port() -> int:
    return _free_port()


def _exchange(port: int, request: bytes) -> bytes:
    deadline = time.monotonic() + START_SECONDS_MAX
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def decoy_process(request: pytest.FixtureRequest, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = _feint("decoy", "--port", str(port), *request.param)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def test_personas_lists_every_shipped_persona() -> None:
    """Each persona directory appears in the table, with its Server header."""
    result = CliRunner().invoke(app, ["camouflage", "personas"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in persona.available():
        assert name in result.stdout, name
    assert "Microsoft-IIS/10.0" in result.stdout and "nginx/1.22.1" in result.stdout


@pytest.mark.parametrize(
    ("decoy_process", "server"),
    [
        (["--persona", "iis-10", "--version", "8.5"], b"Server: Microsoft-IIS/8.5\r\n"),
        (["--persona", "apache-debian", "--version", "2.4.58 (Ubuntu)"], b"Server: Apache/2.4.58 (Ubuntu)\r\n"),
        (["--persona", "nginx-debian-tokens-off"], b"Server: nginx\r\n"),
        (["--persona", "nginx-upstream-1.20", "--version", "1.18.0"], b"Server: nginx/1.18.0\r\n"),
    ],
    indirect=["decoy_process"],
)
def test_decoy_serves_the_personas_server_header(
    decoy_process: subprocess.Popen[bytes], port: int, server: bytes
) -> None:
    """`feint camouflage decoy --persona P [--version V] --port N` answers with P's Server header for V."""
    data = _exchange(port, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert server in data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--persona", "nginx-debain"], "unknown persona 'nginx-debain'"),
        (["--persona", "nginx-debian", "--version", "1.2\r\nX-Injected: 1"], "must be 1-64 printable ASCII"),
        (["--persona", "nginx-debian-tokens-off", "--version", "1.24.0"], "does not announce a version"),
        (["--persona", "spring-boot-tomcat", "--version", "3.5.9"], "does not announce a version"),
    ],
)
def test_bad_persona_or_version_is_a_clear_error(args: list[str], message: str, port: int) -> None:
    """A typo'd persona or an unusable version exits 1 naming the problem, and nothing listens."""
    result = CliRunner().invoke(app, ["camouflage", "decoy", "--port", str(port), *args], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split())
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
