"""The decoy's TCP server: frames requests with ``http.RequestParser`` and writes exactly the bytes
its ``Responder`` decides, with keep-alive, pipelining, timeouts and bounded memory.

One ``asyncio.Protocol`` per connection and no task on the common path: bytes arrive, complete
requests are parsed and answered in order, and the answers of a pipelined burst go out in one
write. A task is started only when a reply is slow (an awaitable ``respond()``, a trickle, a
stream); the next pipelined request waits for it, so answers stay in order.

Bounds (named below, per connection unless said otherwise):
- reads: the parser cuts a head at the ``Limits``; while a reply is in progress or the client
  does not read, reading pauses once ``PIPELINE_BUFFER_BYTES_MAX`` are held;
- writes: reading and answering pause while the transport holds more than
  ``WRITE_BUFFER_HIGH_BYTES``; a client that reads nothing for ``SEND_TIMEOUT_SECONDS`` is cut;
- time: the ``Limits`` timeouts (the whole head, each body read, idle keep-alive) call
  ``Responder.timeout`` and close; a close after lost framing lingers at most
  ``LINGER_SECONDS_MAX`` (discarding input, as nginx's lingering close does, so that the client
  gets the answer instead of a reset);
- connections: over ``connections_max`` a new connection is reset at once, before a byte is read
  (counted in ``cap_hits``): under a flood, a reset keeps no state on the server.

``serve()`` returns a ``DecoyServer`` with the bound port, ``stats`` (counters the gateway exports
to Prometheus) and a graceful ``stop()``. Run it on uvloop with ``run()`` when installed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from feint.camouflage.decoy.contract import Connection, Reply, Request, Responder
from feint.camouflage.decoy.http import RequestParser

CONNECTIONS_MAX = 10_000  # open connections per server; more are reset on arrival
LISTEN_BACKLOG = 1024  # pending connections the kernel queues before accept
WRITE_BUFFER_HIGH_BYTES = 64 * 1024  # above this, stop reading and answering (backpressure)
WRITE_BUFFER_LOW_BYTES = 16 * 1024  # resume below this
PIPELINE_BUFFER_BYTES_MAX = 64 * 1024  # input held while busy before reading pauses
SEND_TIMEOUT_SECONDS = 60.0  # nginx send_timeout default: a client that reads nothing is cut
LINGER_SECONDS_MAX = 5.0  # nginx lingering_timeout default
LINGER_BYTES_MAX = 1024 * 1024  # input discarded while lingering before the connection is reset
STOP_GRACE_SECONDS = 10.0  # in-flight replies get this long on stop() before connections are reset

T = TypeVar("T")
TimerPhase = Literal["head", "body", "idle", "send", "linger"]


@dataclass(slots=True)
class DecoyStats:
    """Counters of one server since it started (the gateway exports them)."""

    connections_open: int = 0
    connections_total: int = 0
    cap_hits: int = 0  # connections reset because connections_max were open
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    timeouts: dict[str, int] = field(default_factory=lambda: {"head": 0, "body": 0, "idle": 0, "send": 0})
    framing_lost: int = 0  # requests after which the connection had to close
    lingering_closes: int = 0
    responder_errors: int = 0  # respond()/timeout()/stream raised: reported to the loop, connection reset


class _DecoyProtocol(asyncio.Protocol):
    """One client connection; see the module docstring."""

    __slots__ = (
        "_busy",
        "_closed",
        "_deadline",
        "_drain",
        "_eof",
        "_limits",
        "_linger_bytes",
        "_lingering",
        "_local",
        "_loop",
        "_parser",
        "_peer",
        "_reading_paused",
        "_responder",
        "_served",
        "_server",
        "_stats",
        "_stopping",
        "_task",
        "_timer",
        "_timer_phase",
        "_timer_when",
        "_tls",
        "_transport",
        "_writing_paused",
    )

    def __init__(self, server: DecoyServer) -> None:
        self._server = server
        self._responder: Responder = server.responder
        self._limits = server.responder.limits
        self._stats = server.stats
        self._loop = server.loop
        self._tls = server.tls
        self._transport: asyncio.Transport | None = None
        self._parser = RequestParser(self._limits)
        self._served = 0
        self._busy = False  # a slow reply is being written
        self._closed = False
        self._eof = False  # the client half-closed
        self._stopping = False
        self._lingering = False
        self._linger_bytes = 0
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._timer_phase: TimerPhase | None = None
        self._deadline = 0.0
        self._peer: tuple[str, int] = ("", 0)
        self._local: tuple[str, int] = ("", 0)

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport has the Transport methods without subclassing asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        stats = self._stats
        if stats.connections_open >= self._server.connections_max:
            stats.cap_hits += 1
            self._closed = True
            transport.abort()
            return
        stats.connections_open += 1
        stats.connections_total += 1
        self._server.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES, low=WRITE_BUFFER_LOW_BYTES)
        self._peer = _address(transport.get_extra_info("peername"))
        self._local = _address(transport.get_extra_info("sockname"))
        self._arm("idle", self._limits.keepalive_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None or self not in self._server.connections:
            return
        self._server.connections.discard(self)
        self._stats.connections_open -= 1
        self._closed = True
        self._disarm()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wake_writer()
        self._server.connection_gone()

    def data_received(self, data: bytes) -> None:
        self._stats.bytes_in += len(data)
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > LINGER_BYTES_MAX and self._transport is not None:
                self._transport.abort()
            return
        parser = self._parser
        parser.feed(data)
        if self._busy or self._writing_paused:
            if parser.buffered > PIPELINE_BUFFER_BYTES_MAX:
                self._pause_reading()
            return
        self._answer()

    def eof_received(self) -> bool:
        self._eof = True
        # Keep the write side open while a reply is still being written; it closes after it.
        return self._busy and not self._lingering

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()
        self._arm("send", SEND_TIMEOUT_SECONDS)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()
        if self._timer_phase == "send":
            self._disarm()
        if not self._busy and not self._closed:
            self._resume_reading()
            self._answer()

    # -- answering -------------------------------------------------------------------------------

    def _answer(self) -> None:
        """Answer every complete request held, in order, in one write; stop at a slow reply."""
        parser = self._parser
        transport = self._transport
        if transport is None or self._closed:
            return
        out: list[bytes] = []
        size = 0
        while True:
            request = parser.next_request()
            if request is None:
                break
            conn = Connection(
                peer_host=self._peer[0],
                peer_port=self._peer[1],
                local_host=self._local[0],
                local_port=self._local[1],
                requests_served=self._served,
                tls=self._tls,
            )
            self._served += 1
            self._stats.requests += 1
            try:
                reply = self._responder.respond(request, conn)
            except Exception as exc:  # noqa: BLE001 - reported to the loop's handler, not swallowed
                self._write(out)
                self._fail(exc, "respond() raised")
                return
            if not isinstance(reply, Reply):
                self._write(out)
                self._start(self._slow(reply, request))
                return
            close = self._must_close(reply, request)
            if reply.trickle or reply.stream is not None:
                out.append(reply.data)
                self._write(out)
                self._start(self._send_slow(reply, request, close=close))
                return
            out.append(reply.data)
            size += len(reply.data)
            if close:
                self._write(out)
                self._close_after(request)
                return
            if size > WRITE_BUFFER_HIGH_BYTES:
                self._write(out)
                out, size = [], 0
                if self._writing_paused:
                    return
        self._write(out)
        self._after_reads()

    def _must_close(self, reply: Reply, request: Request) -> bool:
        return (
            reply.close
            or not request.framing_intact
            or self._served >= self._limits.keepalive_requests_max
            or self._stopping
            or self._eof
        )

    def _write(self, out: list[bytes]) -> None:
        if not out or self._transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if data:
            self._stats.bytes_out += len(data)
            self._transport.write(data)

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        self._busy = True
        self._disarm()
        self._task = self._loop.create_task(coro)

    async def _slow(self, pending: Any, request: Request) -> None:
        try:
            reply = await pending
        except Exception as exc:  # noqa: BLE001 - reported to the loop's handler, not swallowed
            self._fail(exc, "respond() raised")
            return
        if not isinstance(reply, Reply):
            self._fail(TypeError(f"respond() gave {type(reply).__name__}, not a Reply"), "respond() failed")
            return
        close = self._must_close(reply, request)
        if reply.data:
            self._write([reply.data])
        await self._send_slow(reply, request, close=close)

    async def _send_slow(self, reply: Reply, request: Request, *, close: bool) -> None:
        """Write the trickle and stream of ``reply`` (its data is written), then go on or close."""
        stream = reply.stream
        try:
            for delay, chunk in reply.trickle:
                await asyncio.sleep(delay)
                if not await self._writable():
                    return
                self._write([chunk])
            if stream is not None:
                async for chunk in stream:
                    if not await self._writable():
                        return
                    self._write([chunk])
        except Exception as exc:  # noqa: BLE001 - reported to the loop's handler, not swallowed
            self._fail(exc, "reply stream raised")
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        self._busy = False
        self._task = None
        if close:
            self._close_after(request)
            return
        self._resume_reading()
        self._answer()

    async def _writable(self) -> bool:
        """Wait while the transport's buffer is high; False once the connection is gone."""
        while self._writing_paused and not self._closed:
            self._drain = self._loop.create_future()
            await self._drain
        return not self._closed

    def _wake_writer(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._drain = None

    def _after_reads(self) -> None:
        """Arm the read timeout that applies to what the parser waits for."""
        if self._stopping and self._parser.phase == "idle":
            self._close_now()
            return
        phase = self._parser.phase
        limits = self._limits
        if phase == "idle":
            self._arm("idle", limits.keepalive_timeout_seconds)
        elif phase == "body":
            self._arm("body", limits.body_timeout_seconds)
        elif self._timer_phase != "head":
            # The whole head must arrive within the timeout: armed once, at its first bytes.
            self._arm("head", limits.header_timeout_seconds)

    # -- closing ---------------------------------------------------------------------------------

    def _close_after(self, request: Request) -> None:
        """Close once the reply is written; linger when the client may still be sending."""
        transport = self._transport
        if transport is None or self._closed:
            return
        self._closed = True
        self._disarm()
        if request.framing_intact and not self._parser.buffered:
            transport.close()
            return
        self._stats.framing_lost += 0 if request.framing_intact else 1
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        self._stats.lingering_closes += 1
        self._lingering = True
        transport.write_eof()
        self._resume_reading()
        self._arm("linger", LINGER_SECONDS_MAX)

    def _close_now(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._closed = True
            self._disarm()
            self._transport.close()

    def _fail(self, exc: BaseException, message: str) -> None:
        """Report ``exc`` to the loop's exception handler and reset the connection."""
        self._stats.responder_errors += 1
        self._busy = False
        self._loop.call_exception_handler(
            {"message": f"decoy: {message}", "exception": exc, "protocol": self, "transport": self._transport}
        )
        if self._transport is not None:
            self._closed = True
            self._disarm()
            self._transport.abort()

    def stop(self) -> None:
        """Graceful stop: close now when idle, else after the reply in progress."""
        self._stopping = True
        if not self._busy and self._parser.phase == "idle" and not self._lingering:
            self._close_now()

    def abort(self) -> None:
        if self._transport is not None:
            self._closed = True
            self._transport.abort()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._transport.is_closing():
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._transport.is_closing():
            self._reading_paused = False
            self._transport.resume_reading()

    # -- timers: one handle per connection, re-armed lazily --------------------------------------

    def _arm(self, phase: TimerPhase, seconds: float) -> None:
        deadline = self._loop.time() + seconds
        self._timer_phase = phase
        self._deadline = deadline
        timer = self._timer
        if timer is not None:
            if self._timer_when <= deadline:
                return  # it fires first, sees the later deadline and re-arms
            timer.cancel()
        self._timer_when = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _disarm(self) -> None:
        self._timer_phase = None

    def _on_timer(self) -> None:
        self._timer = None
        phase = self._timer_phase
        if phase is None or self._transport is None:
            return
        if self._loop.time() < self._deadline:
            self._timer_when = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._timer_phase = None
        transport = self._transport
        if phase == "linger":
            transport.close()
            return
        self._stats.timeouts[phase] += 1
        if phase == "send" or self._closed:
            transport.abort()
            return
        conn = Connection(
            peer_host=self._peer[0],
            peer_port=self._peer[1],
            local_host=self._local[0],
            local_port=self._local[1],
            requests_served=self._served,
            tls=self._tls,
        )
        try:
            reply = self._responder.timeout(phase, partial=self._parser.partial(), conn=conn)
        except Exception as exc:  # noqa: BLE001 - reported to the loop's handler, not swallowed
            self._fail(exc, "timeout() raised")
            return
        self._closed = True
        if reply is not None and reply.data:
            self._write([reply.data])
        transport.close()


def _address(info: Any) -> tuple[str, int]:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return ("", 0)


class DecoyServer:
    """A listening decoy: its port, counters, and a graceful stop."""

    def __init__(
        self, responder: Responder, *, loop: asyncio.AbstractEventLoop, connections_max: int, tls: bool
    ) -> None:
        if connections_max < 1:
            raise ValueError(f"connections_max must be at least 1, got {connections_max}")
        self.responder = responder
        self.loop = loop
        self.connections_max = connections_max
        self.tls = tls
        self.stats = DecoyStats()
        self.connections: set[_DecoyProtocol] = set()
        self._server: asyncio.Server | None = None
        self._all_gone: asyncio.Event = asyncio.Event()
        self.host = ""
        self.port = 0

    def connection_gone(self) -> None:
        if not self.connections:
            self._all_gone.set()

    def close(self) -> None:
        """Stop accepting; close idle connections now and the others after their reply."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.stop()
        if not self.connections:
            self._all_gone.set()

    async def wait_closed(self, *, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Wait for the connections to finish; reset those still open after ``grace_seconds``."""
        try:
            async with asyncio.timeout(grace_seconds):
                await self._all_gone.wait()
        except TimeoutError:
            for conn in list(self.connections):
                conn.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def stop(self, *, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """``close()`` then ``wait_closed()``."""
        self.close()
        await self.wait_closed(grace_seconds=grace_seconds)

    async def _listen(
        self, *, host: str, port: int, backlog: int, reuse_port: bool, ssl_context: ssl.SSLContext | None
    ) -> None:
        self._all_gone.clear()
        self._server = await self.loop.create_server(
            lambda: _DecoyProtocol(self),
            host=host,
            port=port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
            ssl=ssl_context,
            family=socket.AF_UNSPEC,
        )
        bound = self._server.sockets[0].getsockname()
        self.host, self.port = str(bound[0]), int(bound[1])


async def serve(
    responder: Responder,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    connections_max: int = CONNECTIONS_MAX,
    backlog: int = LISTEN_BACKLOG,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> DecoyServer:
    """Listen on ``host:port`` (0: any free port, see ``.port``) and answer with ``responder``."""
    server = DecoyServer(
        responder, loop=asyncio.get_running_loop(), connections_max=connections_max, tls=ssl_context is not None
    )
    await server._listen(host=host, port=port, backlog=backlog, reuse_port=reuse_port, ssl_context=ssl_context)
    return server


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
