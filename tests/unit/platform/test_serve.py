"""The workers' listening socket: shared port, no Nagle delay on the connections it accepts."""

from __future__ import annotations

import socket

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
