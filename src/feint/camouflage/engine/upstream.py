"""The pass-through: a request forwarded to the upstream over a pool of kept-alive connections.

A raw asyncio stream proxy, chosen over httpx and aiohttp's client by measurement
(``bench/camouflage/gateway.py``, figures in ``bench/camouflage/RESULTS.md``): the request
arrives already framed by the decoy server as bytes, so forwarding it is one ``write``, and the
answer goes back as the upstream wrote it. What changes on the way (RFC 9110 section 7.6.1):

* to the upstream: hop-by-hop fields dropped (the fixed list and any named in ``Connection``),
  ``Content-Length`` set for the body the server de-chunked, the client address appended to
  ``X-Forwarded-For``; always HTTP/1.1, so the connection can be kept;
* to the client: the upstream's status line and fields as sent, minus hop-by-hop fields; a
  chunked body is relayed chunk by chunk as written (``Transfer-Encoding: chunked`` stays) to an
  HTTP/1.1 client, and de-chunked for an HTTP/1.0 one; ``Connection: close`` added when the
  client's connection ends after this answer.

Every read has a size bound and a time bound; at most ``connections_max`` connections are in
use and ``idle_max`` wait for reuse, each for at most ``idle_seconds`` (below the 5 s keep-alive
of uvicorn and the 75 s of nginx, so the upstream rarely closes a connection we are about to use).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from feint.camouflage.decoy.contract import Request
from feint.errors import ConfigError, FeintError

UPSTREAM_CONNECTIONS_MAX: Final = 256
UPSTREAM_IDLE_CONNECTIONS_MAX: Final = 64
UPSTREAM_IDLE_SECONDS: Final = 4.0
UPSTREAM_CONNECT_TIMEOUT_SECONDS: Final = 5.0
UPSTREAM_READ_TIMEOUT_SECONDS: Final = 30.0
UPSTREAM_HEAD_BYTES_MAX: Final = 64 * 1024
UPSTREAM_CHUNK_LINE_BYTES_MAX: Final = 4 * 1024
UPSTREAM_TRAILER_BYTES_MAX: Final = 16 * 1024
UPSTREAM_READ_BYTES: Final = 64 * 1024
# A body up to this size is read whole and written with the head in one reply.
UPSTREAM_INLINE_BODY_BYTES_MAX: Final = 64 * 1024

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CRLF: Final = b"\r\n"


class UpstreamFailed(FeintError):
    """The upstream could not be reached or gave no valid answer (502; 504 for a timeout)."""

    slug, title, status = "upstream-failed", "Bad Gateway", 502

    def __init__(self, *, reason: str, timeout: bool = False) -> None:
        super().__init__(f"upstream failed: {reason}", reason=reason)
        self.reason = reason
        self.timeout = timeout


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    reused: bool = False

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """The upstream's answer, ready for the client: ``data`` (head, and the body when small),
    then ``stream`` (the rest of the body), and whether the client connection must close."""

    status: int
    data: bytes
    stream: AsyncIterator[bytes] | None
    close: bool


def _tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def client_keeps_alive(request: Request) -> bool:
    """Whether the client's connection stays open after this exchange (RFC 9112 section 9.3)."""
    tokens: set[bytes] = set()
    for name, value in request.headers:
        if name.lower() == b"connection":
            tokens |= _tokens(value)
    if request.version == b"HTTP/1.1":
        return b"close" not in tokens
    return request.version == b"HTTP/1.0" and b"keep-alive" in tokens


def request_bytes(request: Request, *, client_ip: str, default_host: bytes) -> bytes:
    """The request as written to the upstream (see the module docstring for what changes)."""
    named: set[bytes] = set()
    for name, value in request.headers:
        if name.lower() == b"connection":
            named |= _tokens(value)
    drop = HOP_BY_HOP | named | {b"content-length"}
    lines = [request.method + b" " + request.target + b" HTTP/1.1"]
    forwarded = False
    has_host = False
    for name, value in request.headers:
        lowered = name.lower()
        if lowered in drop:
            continue
        if lowered == b"x-forwarded-for":
            if forwarded:
                continue  # folded into the first one below
            chain = [v for n, v in request.headers if n.lower() == b"x-forwarded-for"]
            value = b", ".join([*chain, client_ip.encode()])
            forwarded = True
        elif lowered == b"host":
            has_host = True
        lines.append(name + b": " + value)
    if not has_host:
        lines.append(b"Host: " + default_host)
    if not forwarded:
        lines.append(b"X-Forwarded-For: " + client_ip.encode())
    if request.body or request.method in (b"POST", b"PUT", b"PATCH"):
        lines.append(b"Content-Length: " + str(len(request.body)).encode())
    return _CRLF.join(lines) + _CRLF + _CRLF + request.body


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    version: bytes


def _parse_head(raw: bytes) -> _Head:
    lines = raw[: -len(_CRLF + _CRLF)].split(_CRLF)
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise UpstreamFailed(reason="invalid status line")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise UpstreamFailed(reason="invalid header line")
        headers.append((name, value.strip(b" \t")))
    return _Head(int(parts[1]), status_line, headers, parts[0])


class Upstream:
    """A pool of connections to one upstream origin (``http://`` or ``https://``)."""

    def __init__(
        self,
        url: str,
        *,
        connections_max: int = UPSTREAM_CONNECTIONS_MAX,
        idle_max: int = UPSTREAM_IDLE_CONNECTIONS_MAX,
        idle_seconds: float = UPSTREAM_IDLE_SECONDS,
        read_timeout_seconds: float = UPSTREAM_READ_TIMEOUT_SECONDS,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("FEINT_UPSTREAM_URL", f"{url!r} is not an http(s) origin", "http(s)://host:port")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        self.host_header = (parts.netloc if not default_port else self.host).encode()
        self.idle_max = idle_max
        self.idle_seconds = idle_seconds
        self.read_timeout = read_timeout_seconds
        self._slots = asyncio.Semaphore(connections_max)
        self._idle: deque[_Conn] = deque()
        self.opened = 0  # connections opened since start (tests: reuse happened)

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if time.monotonic() - conn.idle_since < self.idle_seconds and not conn.reader.at_eof():
                conn.reused = True
                return conn
            conn.close()
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, limit=UPSTREAM_HEAD_BYTES_MAX
                )
        except TimeoutError as exc:
            raise UpstreamFailed(reason="connect timeout", timeout=True) from exc
        except OSError as exc:
            raise UpstreamFailed(reason=f"connect: {type(exc).__name__}") from exc
        self.opened += 1
        return _Conn(reader, writer)

    def _release(self, conn: _Conn, *, reusable: bool) -> None:
        if reusable and len(self._idle) < self.idle_max and not conn.reader.at_eof():
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def forward(self, request: Request, *, client_ip: str) -> Answer:
        """Send ``request`` upstream and return its answer for the client; UpstreamFailed otherwise."""
        payload = request_bytes(request, client_ip=client_ip, default_host=self.host_header)
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_SECONDS):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise UpstreamFailed(reason="all upstream connections busy", timeout=True) from exc
        handed_over = False
        try:
            conn = await self._connect()
            try:
                head = await self._exchange(conn, payload)
            except UpstreamFailed as exc:
                conn.close()
                # A kept-alive connection the upstream closed meanwhile: try once on a new one.
                if not (conn.reused and exc.reason == "closed" and request.method in IDEMPOTENT):
                    raise
                conn = await self._connect()
                head = await self._exchange(conn, payload)
            answer = await self._answer(conn, request, head)
            handed_over = answer.stream is not None
            return answer
        finally:
            if not handed_over:
                self._slots.release()

    async def _exchange(self, conn: _Conn, payload: bytes) -> _Head:
        try:
            conn.writer.write(payload)
            async with asyncio.timeout(self.read_timeout):
                await conn.writer.drain()
                while True:
                    raw = await conn.reader.readuntil(_CRLF + _CRLF)
                    head = _parse_head(raw)
                    if not 100 <= head.status < 200 or head.status == 101:
                        return head
                    # Interim answers (100 Continue, 103 Early Hints): the body is already sent.
        except TimeoutError as exc:
            conn.close()
            raise UpstreamFailed(reason="read timeout", timeout=True) from exc
        except asyncio.IncompleteReadError as exc:
            raise UpstreamFailed(reason="closed" if not exc.partial else "truncated head") from exc
        except asyncio.LimitOverrunError as exc:
            raise UpstreamFailed(reason=f"head over {UPSTREAM_HEAD_BYTES_MAX} bytes") from exc
        except (ConnectionError, OSError) as exc:
            raise UpstreamFailed(reason="closed" if conn.reused else f"io: {type(exc).__name__}") from exc

    async def _answer(self, conn: _Conn, request: Request, head: _Head) -> Answer:
        keep_client = client_keeps_alive(request)
        named: set[bytes] = set()
        length: int | None = None
        chunked = False
        upstream_close = head.version == b"HTTP/1.0"
        for name, value in head.headers:
            lowered = name.lower()
            if lowered == b"connection":
                tokens = _tokens(value)
                named |= tokens
                upstream_close = b"close" in tokens or (upstream_close and b"keep-alive" not in tokens)
            elif lowered == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif lowered == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    conn.close()
                    raise UpstreamFailed(reason="invalid content-length")
                length = int(value)
        no_body = request.method == b"HEAD" or head.status in (204, 304) or 100 <= head.status < 200
        relay_chunked = chunked and not no_body and request.version == b"HTTP/1.1"
        until_close = not no_body and not chunked and length is None
        if until_close:
            keep_client = False  # the end of the body is the end of the connection
        if chunked and not relay_chunked and not no_body:
            keep_client = False  # de-chunked for an HTTP/1.0 client, ended by closing
        drop = (HOP_BY_HOP | named) - ({b"transfer-encoding"} if relay_chunked else set())
        lines = [head.status_line]
        lines.extend(name + b": " + value for name, value in head.headers if name.lower() not in drop)
        if not keep_client:
            lines.append(b"Connection: close")
        elif request.version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive")
        data = _CRLF.join(lines) + _CRLF + _CRLF
        reusable = not upstream_close
        if no_body:
            self._release(conn, reusable=reusable)
            return Answer(head.status, data, None, not keep_client)
        if length is not None and not chunked and length <= UPSTREAM_INLINE_BODY_BYTES_MAX:
            body = await self._read_exactly(conn, length)
            self._release(conn, reusable=reusable)
            return Answer(head.status, data + body, None, not keep_client)
        if chunked:
            stream = self._chunks(conn, relay=relay_chunked, reusable=reusable)
        elif length is not None:
            stream = self._length(conn, length, reusable=reusable)
        else:
            stream = self._until_close(conn)
        return Answer(head.status, data, stream, not keep_client)

    async def _read_exactly(self, conn: _Conn, size: int) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                return await conn.reader.readexactly(size)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            conn.close()
            raise UpstreamFailed(reason=f"body: {type(exc).__name__}", timeout=isinstance(exc, TimeoutError)) from exc

    async def _read(self, conn: _Conn) -> bytes:
        async with asyncio.timeout(self.read_timeout):
            return await conn.reader.read(UPSTREAM_READ_BYTES)

    async def _readline(self, conn: _Conn) -> bytes:
        async with asyncio.timeout(self.read_timeout):
            line = await conn.reader.readuntil(_CRLF)
        if len(line) > UPSTREAM_CHUNK_LINE_BYTES_MAX:
            raise UpstreamFailed(reason="chunk line too long")
        return line

    async def _streamed(self, conn: _Conn, body: AsyncIterator[bytes], *, reusable: bool) -> AsyncIterator[bytes]:
        """Relay ``body``; on any failure close the upstream connection and re-raise, so that the
        server closes the client's connection (its answer is cut short)."""
        done = False
        try:
            async for chunk in body:
                yield chunk
            done = True
        finally:
            if done:
                self._release(conn, reusable=reusable)
            else:
                conn.close()
            self._slots.release()

    def _length(self, conn: _Conn, size: int, *, reusable: bool) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            left = size
            while left:
                chunk = await self._read(conn)
                if not chunk:
                    raise UpstreamFailed(reason="body truncated")
                chunk = chunk[:left]
                left -= len(chunk)
                yield chunk

        return self._streamed(conn, body(), reusable=reusable)

    def _until_close(self, conn: _Conn) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            while chunk := await self._read(conn):
                yield chunk

        return self._streamed(conn, body(), reusable=False)

    def _chunks(self, conn: _Conn, *, relay: bool, reusable: bool) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            while True:
                line = await self._readline(conn)
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError as exc:
                    raise UpstreamFailed(reason="invalid chunk size") from exc
                if size == 0:
                    trailer = b""
                    while (more := await self._readline(conn)) != _CRLF:
                        trailer += more
                        if len(trailer) > UPSTREAM_TRAILER_BYTES_MAX:
                            raise UpstreamFailed(reason="trailers too large")
                    if relay:
                        yield line + trailer + _CRLF
                    return
                data = await self._read_exactly(conn, size + len(_CRLF))
                if data[-2:] != _CRLF:
                    raise UpstreamFailed(reason="chunk not ended by CRLF")
                yield line + data if relay else data[:-2]

        return self._streamed(conn, body(), reusable=reusable)


@contextlib.asynccontextmanager
async def upstream(url: str) -> AsyncIterator[Upstream]:
    """An upstream pool closed on exit."""
    pool = Upstream(url)
    try:
        yield pool
    finally:
        await pool.close()
