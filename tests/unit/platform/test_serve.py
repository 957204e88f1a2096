"""The workers' listening socket (shared port, no Nagle delay on the connections it accepts) and the
heap a serving process starts with."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from feint.platform.serve import reuse_port_socket

pytestmark = pytest.mark.unit


def test_reuse_port_socket_shares_the_port_and_sets_nodelay() -> None:
    """Two sockets bind one port with SO_REUSEPORT; accepted connections have TCP_NODELAY."""
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)
    try:
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        second.listen(1)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = second.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            client.sendall(b"")
    finally:
        first.close()
        second.close()


_SERVE_ONCE = """
import asyncio, gc, uvicorn
from feint.platform.serve import serve_all

async def app(scope, receive, send):
    raise RuntimeError("not called")

server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="error"))
before = gc.get_freeze_count()

def ready():
    print(before, gc.get_freeze_count(), flush=True)
    server.should_exit = True

asyncio.run(serve_all([server], on_ready=ready))
"""


def test_serving_starts_with_the_start_up_heap_frozen() -> None:
    """Once its servers are up, a process's start-up objects are out of the collector's sight (a full
    collection over them paused every request for up to ~110 ms under load)."""
    done = subprocess.run([sys.executable, "-c", _SERVE_ONCE], capture_output=True, text=True, timeout=60, check=True)
    before, after = (int(n) for n in done.stdout.split())
    assert before == 0
    assert after > 10_000  # modules, uvicorn, the app: tens of thousands of objects
