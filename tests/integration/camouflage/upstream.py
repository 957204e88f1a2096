"""A raw HTTP/1.1 upstream for gateway tests: answers with exactly the bytes it received.

Starlette and uvicorn normalise header case and order, so they cannot show that the gateway
forwards a request unchanged; this server echoes the request (head and body, as received) and
offers answers in each framing the gateway must relay: ``Content-Length``, chunked (with a
trailer), and ended by closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

BIG_BODY = bytes(range(256)) * 4096  # 1 MiB


@dataclass
class RawUpstream:
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0


async def _handle(state: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    state.connections += 1
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            raw = head + body
            state.requests.append(raw)
            target = head.split(b" ", 2)[1]
            if target == b"/chunked":
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                    b"X-Upstream: Raw\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n"
                )
            elif target == b"/close":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nuntil close")
                await writer.drain()
                return
            elif target == b"/big":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG_BODY) + BIG_BODY)
            elif target == b"/missing":
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
            elif target == b"/fail":
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror")
            elif target == b"/hang":
                await asyncio.sleep(3600)
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Echo: 1\r\n"
                    b"Keep-Alive: timeout=5\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw
                )
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    """The echo upstream on a free loopback port."""
    state = RawUpstream()
    server = await asyncio.start_server(lambda r, w: _handle(state, r, w), "127.0.0.1", 0)
    state.port = int(server.sockets[0].getsockname()[1])
    try:
        yield state
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await server.wait_closed()
