"""The harness's baseline: a static HTTP/1.1 endpoint that costs next to nothing per request.

`load.py` runs locust against it at the offered rate before the platform: what locust achieves
and the latency it reports here is the load generator's own overhead on this machine (its
pacing, its client, its scheduling on the shared cores), the floor under every figure of the
platform's run.

    .venv/bin/python bench/load/baseline.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

BODY = b"ok\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
HEAD_MAX = 65_536


class Static(asyncio.Protocol):
    """Answers every request of a keep-alive connection with the same 200 (requests without body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        answers = self.buffer.count(b"\r\n\r\n")
        if answers:
            self.transport.write(RESPONSE * answers)
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
        elif len(self.buffer) > HEAD_MAX:
            self.transport.close()


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Static, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> int:
    try:
        import uvloop
    except ImportError:  # the platform's virtualenv has it; plain asyncio is fine for the baseline
        asyncio.run(serve(int(sys.argv[1])))
    else:
        uvloop.run(serve(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
