"""The upstream pool against upstreams that misbehave: each failure is named, none hangs or leaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from feint.camouflage.decoy.contract import Request
from feint.camouflage.engine import upstream as upstream_module
from feint.camouflage.engine.upstream import Upstream, UpstreamFailed

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def request(method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> Request:
    return Request(
        request_line=method + b" / " + version,
        method=method,
        target=b"/",
        version=version,
        headers=((b"Host", b"x"),),
        body=b"",
        problems=frozenset(),
    )


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Upstream]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    pool = Upstream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", read_timeout_seconds=0.5)
    try:
        yield pool
    finally:
        await pool.close()
        server.close()
        await asyncio.sleep(0.05)  # let handlers see their connections close


def answering(raw: bytes, *, close: bool = True) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(raw)
                await writer.drain()
                if close:
                    break
        writer.close()

    return handler


async def body_of(pool: Upstream, req: Request) -> tuple[int, bytes]:
    answer = await pool.forward(req, client_ip="192.0.2.1")
    data = answer.data
    if answer.stream is not None:
        async for chunk in answer.stream:
            data += chunk
    return answer.status, data


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"garbage\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "invalid content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "body"),
        (b"", "closed"),
    ],
)
async def test_bad_answers_fail_with_a_reason(raw: bytes, reason: str) -> None:
    """A broken answer is UpstreamFailed naming what was wrong."""
    async with serving(answering(raw)) as pool:
        with pytest.raises(UpstreamFailed) as failed:
            await body_of(pool, request())
    assert failed.value.reason.startswith(reason)


async def test_silent_upstream_times_out() -> None:
    """An upstream that never answers is a 504-kind failure after the read timeout."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the gateway gives up and closes
        writer.close()

    async with serving(silent) as pool:
        with pytest.raises(UpstreamFailed) as failed:
            await pool.forward(request(), client_ip="192.0.2.1")
    assert failed.value.timeout


async def test_truncated_streamed_body_raises_and_frees_the_slot() -> None:
    """A big body cut short raises while streaming; the connection slot is given back."""
    size = upstream_module.UPSTREAM_INLINE_BODY_BYTES_MAX + 10
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * 100
    async with serving(answering(raw)) as pool:
        with pytest.raises(UpstreamFailed):
            await body_of(pool, request())
        assert pool._slots._value == upstream_module.UPSTREAM_CONNECTIONS_MAX


async def test_stale_kept_alive_connection_retried_for_get() -> None:
    """A kept-alive connection the upstream closed after one answer is replaced for an idempotent request."""
    async with serving(answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as pool:
        assert (await body_of(pool, request()))[0] == 204
        await asyncio.sleep(0.05)
        assert (await body_of(pool, request()))[0] == 204
        assert pool.opened == 2


async def test_interim_100_skipped_and_http10_upstream_not_reused() -> None:
    """A 100 Continue before the answer is skipped; an HTTP/1.0 upstream's connection is not kept."""
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with serving(answering(raw, close=False)) as pool:
        assert await body_of(pool, request()) == (200, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert len(pool._idle) == 0


async def test_head_and_http10_client() -> None:
    """HEAD gets no body; an HTTP/1.0 client asking keep-alive gets Connection: keep-alive."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    async with serving(answering(raw)) as pool:
        status, data = await body_of(pool, request(b"HEAD"))
        assert status == 200 and data == raw  # no body read, nothing added for a kept-alive HTTP/1.1 client
