"""The decoy server over real loopback sockets with a small test responder."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from feint.camouflage.decoy.contract import Connection, Limits, Problem, Reply, Request, TimeoutPhase
from feint.camouflage.decoy.server import DecoyServer, run, serve

pytestmark = pytest.mark.integration

LIMITS = Limits(
    request_line_bytes_max=1024,
    header_line_bytes_max=1024,
    header_bytes_max=4096,
    header_count_max=50,
    body_bytes_max=10_000,
    header_timeout_seconds=0.4,
    body_timeout_seconds=0.4,
    keepalive_timeout_seconds=0.4,
    keepalive_requests_max=5,
)
READ_SECONDS = 3.0
BIG = b"x" * 65_536


def answer(request: Request, body: bytes = b"") -> bytes:
    """A response naming the request, so that order can be checked."""
    text = body or b"<" + request.method + b" " + request.target + b">"
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)


class PathResponder:
    """Answers by path: /slow awaits, /trickle and /stream write in pieces, /raise raises."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self._limits = limits
        self.seen: list[Connection] = []
        self.stream_closed = asyncio.Event()
        self.timeouts: list[tuple[str, bytes]] = []

    @property
    def limits(self) -> Limits:
        return self._limits

    def respond(self, request: Request, conn: Connection) -> Reply | Awaitable[Reply]:
        self.seen.append(conn)
        target = request.target
        if target == b"/slow":
            return self._slow(request)
        if target == b"/raise":
            raise RuntimeError("responder bug")
        if target == b"/slow-raise":
            return self._slow_raise()
        if target == b"/slow-not-a-reply":
            return self._not_a_reply()
        if target == b"/stream-raise":
            return Reply(data=b"S0", stream=self._broken_stream())
        if target == b"/trickle":
            return Reply(data=b"T1", trickle=((0.01, b"T2"), (0.01, b"T3")))
        if target == b"/stream" or target == b"/endless":
            return Reply(data=b"S0", stream=self._stream(endless=target == b"/endless"))
        if target == b"/big":
            return Reply(data=answer(request, BIG))
        if Problem.HTTP09 in request.problems:
            return Reply(data=b"bare body\n", close=True)
        return Reply(data=answer(request), close=request.header(b"connection") == b"close")

    async def _slow_raise(self) -> Reply:
        await asyncio.sleep(0)
        raise RuntimeError("slow responder bug")

    async def _not_a_reply(self) -> Reply:
        return b"raw"  # type: ignore[return-value]

    async def _broken_stream(self) -> AsyncIterator[bytes]:
        yield b"S1"
        raise RuntimeError("upstream broke")

    async def _slow(self, request: Request) -> Reply:
        await asyncio.sleep(0.05)
        return Reply(data=answer(request))

    async def _stream(self, *, endless: bool) -> AsyncIterator[bytes]:
        try:
            if endless:
                while True:
                    await asyncio.sleep(0)
                    yield BIG
            for i in range(3):
                await asyncio.sleep(0)
                yield b"S%d" % (i + 1)
        finally:
            self.stream_closed.set()

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        self.timeouts.append((phase, partial))
        return None if phase == "idle" else Reply(data=b"408 " + phase.encode())


async def talk(port: int, data: bytes, *, seconds: float = READ_SECONDS) -> tuple[bytes, bool]:
    """Send ``data``, read until EOF or ``seconds``; the bytes and whether the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    closed = False
    try:
        async with asyncio.timeout(seconds):
            while True:
                piece = await reader.read(65536)
                if not piece:
                    closed = True
                    break
                out += piece
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    writer.close()
    return out, closed


def get(path: str, *extra: str) -> bytes:
    return ("GET {} HTTP/1.1\r\nHost: a\r\n{}\r\n".format(path, "".join(h + "\r\n" for h in extra))).encode()


@pytest.fixture
async def decoy() -> AsyncIterator[tuple[DecoyServer, PathResponder, list[dict[str, Any]]]]:
    """A decoy on a free loopback port, with the loop's exception handler recording."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    responder = PathResponder()
    server = await serve(responder, host="127.0.0.1", port=0, send_timeout_seconds=0.5, linger_seconds=0.5)
    yield server, responder, errors
    await server.stop(grace_seconds=2.0)
    assert server.stats.connections_open == 0


async def test_keep_alive_and_connection_info(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """Requests on one connection are answered in turn, the connection stays open, and each knows its index."""
    server, responder, errors = decoy
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for index in range(3):
        writer.write(get(f"/k{index}"))
        expected = answer_for(f"/k{index}")
        assert await asyncio.wait_for(reader.readexactly(len(expected)), READ_SECONDS) == expected
    assert [c.requests_served for c in responder.seen] == [0, 1, 2]
    assert responder.seen[0].local_port == server.port
    assert responder.seen[0].peer_host == "127.0.0.1"
    writer.close()
    assert server.stats.requests == 3
    assert not errors


def answer_for(path: str, method: str = "GET") -> bytes:
    text = f"<{method} {path}>".encode()
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)


async def test_pipelined_answers_in_order(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A pipelined burst mixing immediate, awaited, trickled and streamed replies is answered in order."""
    server, responder, errors = decoy
    responder._limits = Limits(**{**_fields(LIMITS), "keepalive_requests_max": 1000})
    paths = ["/a", "/slow", "/trickle", "/b", "/stream", "/c"]
    data, closed = await talk(server.port, b"".join(get(p) for p in paths) + get("/d", "Connection: close"))
    expected = (
        answer_for("/a")
        + answer_for("/slow")
        + b"T1T2T3"
        + answer_for("/b")
        + b"S0S1S2S3"
        + answer_for("/c")
        + answer_for("/d")
    )
    assert data == expected
    assert closed
    assert not errors


async def test_pipelined_burst_in_one_write(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A burst of immediate replies needs no task and comes back complete."""
    server, responder, _ = decoy
    responder._limits = Limits(**{**_fields(LIMITS), "keepalive_requests_max": 1000})
    burst = b"".join(get(f"/{i}") for i in range(500))
    data, _ = await talk(server.port, burst, seconds=1.0)
    assert data == b"".join(answer_for(f"/{i}") for i in range(500))


def _fields(limits: Limits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__slots__}


async def test_keepalive_requests_max(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """After keepalive_requests_max answers the connection closes, and later requests get nothing."""
    server, _, _ = decoy
    data, closed = await talk(server.port, b"".join(get(f"/{i}") for i in range(7)))
    assert data == b"".join(answer_for(f"/{i}") for i in range(5))
    assert closed


@pytest.mark.parametrize(
    ("sent", "phase", "written"),
    [
        (b"GET / HTTP/1.1\r\nHos", "head", b"408 head"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc", "body", b"408 body"),
        (b"", "head", b"408 head"),
    ],
)
async def test_read_timeouts(
    decoy: tuple[DecoyServer, PathResponder, list[Any]], sent: bytes, phase: str, written: bytes
) -> None:
    """A read that times out calls Responder.timeout with the phase and what arrived, writes its reply, and closes."""
    server, responder, _ = decoy
    data, closed = await talk(server.port, sent)
    assert (data, closed) == (written, True)
    assert responder.timeouts == [(phase, sent)]
    assert server.stats.timeouts[phase] == 1


async def test_idle_timeout_after_a_request(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """After an answer, the keep-alive timeout closes the idle connection silently."""
    server, responder, _ = decoy
    data, closed = await talk(server.port, get("/x"))
    assert (data, closed) == (answer_for("/x"), True)
    assert responder.timeouts == [("idle", b"")]


async def test_slowloris_cut_at_header_timeout(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A head sent a byte at a time is cut when the whole-head timeout passes, though bytes keep coming."""
    server, responder, _ = decoy
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def drip() -> None:
        for byte in get("/slowloris") * 10:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    dripping = asyncio.create_task(drip())
    data = await asyncio.wait_for(reader.read(), READ_SECONDS)
    dripping.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await dripping
    assert data == b"408 head"
    assert loop.time() - started < 3
    assert responder.timeouts[0][0] == "head"
    writer.close()


async def test_huge_head_is_cut_and_closed(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A megabyte of header lines is answered (as a flagged request) and the connection closed."""
    server, _responder, _ = decoy
    data, closed = await talk(server.port, b"GET / HTTP/1.1\r\n" + b"X-Filler: 0123456789\r\n" * 50_000)
    assert data.startswith(b"HTTP/1.1 404")
    assert closed
    assert server.stats.framing_lost == 1
    assert server.stats.lingering_closes == 1


async def test_malformed_line_answered_then_closed(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A broken request line is answered before its headers and the connection closes (lingering)."""
    server, _, _ = decoy
    data, closed = await talk(server.port, b"GARBAGE\r\n")
    assert data == answer_for("", method="GARBAGE")
    assert closed


async def test_http09_bare_body(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """An HTTP/0.9 line gets the responder's bare body and a close."""
    server, _, _ = decoy
    assert await talk(server.port, b"GET /\r\n") == (b"bare body\n", True)


async def test_half_close_still_answered(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A client that sends its request and shuts its write side still gets a slow answer."""
    server, _, _ = decoy
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/slow"))
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), READ_SECONDS) == answer_for("/slow")
    writer.close()


async def test_connection_cap() -> None:
    """Over connections_max, a new connection is reset before a byte is read, and counted."""
    server = await serve(PathResponder(), connections_max=2)
    try:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await asyncio.sleep(0.05)
        data, closed = await talk(server.port, get("/over"), seconds=1.0)
        assert (data, closed) == (b"", True)
        assert server.stats.cap_hits == 1
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        data, _ = await talk(server.port, get("/after"), seconds=0.2)
        assert data == answer_for("/after")
    finally:
        await server.stop(grace_seconds=1.0)


async def test_responder_error_reported_and_reset(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """An exception in respond() reaches the loop's exception handler and resets that connection only."""
    server, _, errors = decoy
    data, closed = await talk(server.port, get("/a") + get("/raise") + get("/b"))
    assert data == answer_for("/a")
    assert closed
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], RuntimeError)
    assert server.stats.responder_errors == 1
    assert (await talk(server.port, get("/c"), seconds=0.2))[0] == answer_for("/c")


async def test_backpressure_pauses_reading() -> None:
    """A client that does not read stops the server from reading; once it reads, every answer comes."""
    responder = PathResponder(
        Limits(**{**_fields(LIMITS), "keepalive_requests_max": 10_000, "keepalive_timeout_seconds": 5})
    )
    server = await serve(responder, send_timeout_seconds=5.0)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setblocking(False)
    count = 300
    burst = get("/big") * count
    loop = asyncio.get_running_loop()
    sent = 0
    async with asyncio.timeout(2.0):
        while sent < len(burst):
            try:
                sent += sock.send(burst[sent:])
            except BlockingIOError:
                break
            await asyncio.sleep(0)
    await asyncio.sleep(0.3)
    assert server.stats.requests < count  # paused: not every request was read and answered
    total = 0
    expected = len(b"HTTP/1.1 404 Not Found\r\nContent-Length: 65536\r\n\r\n" + BIG) * count
    async with asyncio.timeout(10):
        while total < expected:
            if sent < len(burst):
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(burst[sent:])
            try:
                piece = await loop.sock_recv(sock, 1 << 20)
            except BlockingIOError:
                continue
            if not piece:
                break
            total += len(piece)
    sock.close()
    assert total == expected
    assert server.stats.requests == count
    await server.stop(grace_seconds=1.0)


async def test_send_timeout_cuts_a_client_that_never_reads(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A client that never reads an endless stream is cut after the send timeout, and the stream is closed."""
    server, responder, _ = decoy
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(get("/endless"))
    await asyncio.wait_for(responder.stream_closed.wait(), 5.0)
    assert server.stats.timeouts["send"] == 1
    sock.close()


async def test_stream_closed_when_client_leaves(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """A client that disconnects during a stream makes the server close the stream (aclose)."""
    server, responder, _ = decoy
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/endless"))
    await reader.readexactly(100)
    writer.transport.abort()
    await asyncio.wait_for(responder.stream_closed.wait(), READ_SECONDS)


async def test_graceful_stop() -> None:
    """stop() refuses new connections, closes idle ones at once and lets a reply in flight finish."""
    responder = PathResponder(Limits(**{**_fields(LIMITS), "keepalive_timeout_seconds": 30}))
    server = await serve(responder)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", server.port)
    busy_writer.write(get("/slow"))
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(server.stop(grace_seconds=2.0))
    assert await asyncio.wait_for(idle_reader.read(), READ_SECONDS) == b""
    assert await asyncio.wait_for(busy_reader.read(), READ_SECONDS) == answer_for("/slow")
    await stopping
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
    idle_writer.close()
    busy_writer.close()
    assert server.stats.connections_open == 0


async def test_stop_resets_what_outlives_the_grace() -> None:
    """A connection still busy after the grace period is reset."""
    responder = PathResponder()
    server = await serve(responder)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/endless"))
    await reader.readexactly(10)
    await server.stop(grace_seconds=0.2)
    assert server.stats.connections_open == 0
    writer.close()


def test_on_uvloop() -> None:
    """The same pipelined exchange on uvloop, through run()."""

    async def scenario() -> tuple[bytes, bool]:
        server = await serve(PathResponder())
        try:
            return await talk(server.port, get("/a") + get("/slow") + get("/stream") + get("/b", "Connection: close"))
        finally:
            await server.stop()

    assert run(scenario()) == (answer_for("/a") + answer_for("/slow") + b"S0S1S2S3" + answer_for("/b"), True)


@pytest.mark.parametrize(
    ("path", "written", "kind"),
    [
        ("/slow-raise", b"", RuntimeError),
        ("/slow-not-a-reply", b"", TypeError),
        ("/stream-raise", b"S0S1", RuntimeError),
    ],
)
async def test_slow_reply_errors_reported_and_reset(
    decoy: tuple[DecoyServer, PathResponder, list[Any]], path: str, written: bytes, kind: type[Exception]
) -> None:
    """An awaited reply or a stream that fails reaches the loop's exception handler; the connection is reset."""
    server, _, errors = decoy
    data, closed = await talk(server.port, get("/a") + get(path) + get("/b"))
    assert data == answer_for("/a") + written
    assert closed
    assert [type(e["exception"]) for e in errors] == [kind]
    assert server.stats.responder_errors == 1


class BrokenTimeout(PathResponder):
    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        raise RuntimeError("timeout bug")


async def test_timeout_error_reported_and_reset() -> None:
    """An exception in Responder.timeout reaches the loop's exception handler and resets the connection."""
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    server = await serve(BrokenTimeout())
    try:
        assert await talk(server.port, b"GET / HTTP/1.1\r\n") == (b"", True)
        assert [str(e["exception"]) for e in errors] == ["timeout bug"]
    finally:
        await server.stop(grace_seconds=1.0)


async def test_pipelined_input_bounded_while_busy(decoy: tuple[DecoyServer, PathResponder, list[Any]]) -> None:
    """While a slow reply is pending, input past the pipeline bound pauses reading; every request is still answered in order."""
    server, responder, _ = decoy
    responder._limits = Limits(**{**_fields(LIMITS), "keepalive_requests_max": 10_000})
    paths = [f"/p{i:05d}" + "x" * 200 for i in range(600)]
    data, _ = await talk(server.port, get("/slow") + b"".join(get(p) for p in paths), seconds=1.5)
    assert data == answer_for("/slow") + b"".join(answer_for(p) for p in paths)


async def test_serve_rejects_bad_bounds() -> None:
    """A server cannot be made with no connections or non-positive timeouts."""
    with pytest.raises(ValueError, match="connections_max"):
        await serve(PathResponder(), connections_max=0)
    with pytest.raises(ValueError, match="timeouts must be positive"):
        await serve(PathResponder(), send_timeout_seconds=0)
