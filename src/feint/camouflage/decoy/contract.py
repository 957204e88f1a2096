"""The seam between the decoy's byte-level HTTP server and whatever decides each answer.

    client bytes ──► server.py (framing, limits, timeouts, keep-alive, pipelining)
                        │ Request (every byte as sent, plus the problems the parser saw)
                        ▼
                     Responder.respond(request, conn) ──► Reply (exact bytes, close or not)
                        ▲
        personas (persona.py: nginx, Apache, IIS, Express, Spring as data files)
        gateway (engine: forward to the upstream, or hand the request to the session's persona)

The server judges nothing: it frames requests within the responder's ``Limits`` and reports
what it saw as ``Problem`` flags; the responder, which knows how the impersonated server
behaves, turns that into bytes. No framework sits in between, because one that normalises
header case or order, or answers malformed input itself, cannot impersonate anyone.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Literal, Protocol


class Problem(enum.StrEnum):
    """What the parser saw that a real server may refuse; the persona decides how it answers."""

    MALFORMED_REQUEST_LINE = "malformed-request-line"  # not `METHOD SP TARGET [SP VERSION]`
    BAD_METHOD = "bad-method"  # characters outside RFC 9110 token
    BAD_VERSION = "bad-version"  # version token not `HTTP/d.d`
    UNSUPPORTED_VERSION = "unsupported-version"  # well formed but not 1.0/1.1 (HTTP/2.0, HTTP/3.0)
    HTTP09 = "http09"  # request line without a version: the answer is a bare body
    BAD_HEADER_LINE = "bad-header-line"  # no colon, space before the colon, bad name bytes
    OBS_FOLD = "obs-fold"  # a header line continued with leading whitespace
    MISSING_HOST = "missing-host"  # HTTP/1.1 without Host
    DUPLICATE_HOST = "duplicate-host"
    BAD_CONTENT_LENGTH = "bad-content-length"  # not digits, or several different values
    BAD_CHUNKED = "bad-chunked"  # chunk size or framing broken
    CONTENT_LENGTH_AND_CHUNKED = "content-length-and-chunked"
    UNKNOWN_TRANSFER_ENCODING = "unknown-transfer-encoding"
    REQUEST_LINE_TOO_LONG = "request-line-too-long"  # over Limits.request_line_bytes_max
    HEADER_LINE_TOO_LONG = "header-line-too-long"  # one header line over Limits.header_line_bytes_max
    HEADERS_TOO_LARGE = "headers-too-large"  # all header lines over Limits.header_bytes_max
    TOO_MANY_HEADERS = "too-many-headers"
    BODY_TOO_LARGE = "body-too-large"  # declared or received body over Limits.body_bytes_max
    ABSOLUTE_URI = "absolute-uri"  # target `http://host/path` (not a problem for most servers)
    BARE_LF = "bare-lf"  # lines ended by LF alone
    NUL_BYTE = "nul-byte"
    # Measured on Debian nginx 1.22 and Apache 2.4.71: nginx accepts several SP between the parts
    # of the request line, Apache answers 400; nginx answers 400 to a lowercase method
    # (`get / HTTP/1.1`), Apache waits for the headers and answers 501.
    EXTRA_SPACE = "extra-space"  # more than one SP between the parts of the request line
    LOWERCASE_METHOD = "lowercase-method"  # a valid token with lowercase letters (`get`)


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds the server frames within; a persona sets them to its real server's defaults."""

    request_line_bytes_max: int
    header_line_bytes_max: int
    header_bytes_max: int
    header_count_max: int
    body_bytes_max: int
    # The whole head must arrive in this time (slowloris): counted from the accept for the first
    # request of a connection (nginx's client_header_timeout; nothing sent: phase "head" with
    # partial=b""), from its first byte for a later one.
    header_timeout_seconds: float
    body_timeout_seconds: float  # between two reads of a body
    keepalive_timeout_seconds: float  # idle time between requests on one connection
    keepalive_requests_max: int  # requests on one connection before the server closes it
    # Problems of the request line on which the server answers at once, without waiting for
    # the headers (nginx and Apache both answer `GARBAGE\r\n` before any header arrives; nginx
    # also answers `GET / HTTP/2.0\r\n` at once where Apache waits). The Request then has no
    # headers and framing_intact=False.
    answer_at_request_line: frozenset[Problem] = frozenset(
        {Problem.MALFORMED_REQUEST_LINE, Problem.BAD_METHOD, Problem.BAD_VERSION}
    )
    # nginx 1.22 and Express 4 (llhttp) answer 400 as soon as a byte that cannot be part of a
    # method arrives, before any line end (nmap's binary probes); Apache 2.4 waits for the line.
    # True: the parser returns a BAD_METHOD request (framing_intact=False) at that byte.
    answer_bad_method_byte_at_once: bool = False
    # A request line without a version (HTTP/0.9): nginx and Apache answer it at once with a
    # bare body; Node's llhttp (Express) reads header lines after it and answers when the empty
    # line comes, with a status line and Connection: close (measured on Node 20.20). True: the
    # parser frames such a request like any other, up to its empty line.
    http09_reads_headers: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """One request exactly as received. Names, values, case and order are never normalised."""

    request_line: bytes  # without the line ending
    method: bytes
    target: bytes
    version: bytes | None  # b"HTTP/1.1"; None for an HTTP/0.9 request or an unparsable line
    headers: tuple[tuple[bytes, bytes], ...]  # (name, value) as sent, value without OWS
    body: bytes
    problems: frozenset[Problem]
    # False when framing was lost (an oversized head, a broken chunk): the server closes after
    # the reply whatever the reply says, since the next request's start is unknown.
    framing_intact: bool = True
    # The head exactly as received, from the request line through the empty line (TRACE echoes it).
    head: bytes = b""
    # Trailer fields of a chunked body, as sent.
    trailers: tuple[tuple[bytes, bytes], ...] = ()
    # Empty lines (CRLF or LF) skipped before the request line (RFC 9112 section 2.2): nginx
    # skips any number, Apache 2.4 at most 10 and answers 400 to the 11th.
    empty_lines_skipped: int = 0

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (ASCII case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Connection:
    """What a responder may know about the connection a request came on."""

    peer_host: str
    peer_port: int
    local_host: str
    local_port: int
    requests_served: int  # before this one, on this connection
    tls: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """The bytes to write, in order, and whether the connection ends after them.

    ``data`` is written at once; then each ``(delay_seconds, bytes)`` of ``trickle`` after its
    delay (slow engagement profiles); then every chunk of ``stream`` (a pass-through response).
    ``close`` closes the connection once everything is written.
    """

    data: bytes
    close: bool = False
    trickle: tuple[tuple[float, bytes], ...] = ()
    stream: AsyncIterator[bytes] | None = field(default=None, compare=False)
    # With close: keep the connection open this long after the reply (write side too), reading
    # and discarding input, each read restarting the wait, then close. nginx does this when it
    # closes with a request body unread (lingering_timeout 5 s: measured, a 413 to a huge
    # Content-Length ends 5.0 s after the reply); Apache half-closes at once. 0: close now
    # (half-closing first and lingering briefly when input may still arrive).
    close_delay_seconds: float = 0.0


TimeoutPhase = Literal["head", "body", "idle"]


class Responder(Protocol):
    """Decides every answer of one listener (a persona, or the gateway)."""

    @property
    def limits(self) -> Limits: ...

    def respond(self, request: Request, conn: Connection) -> Reply | Awaitable[Reply]:
        """The answer to ``request``; may be awaitable (the gateway forwards upstream)."""
        ...

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        """What the real server writes when a read times out (Apache: a 408 page); None: close silently."""
        ...
