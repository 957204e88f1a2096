"""An incremental HTTP/1.x request parser over bytes that reports, never refuses.

``RequestParser.feed(data)`` appends what the socket gave; ``next_request()`` returns the next
complete ``Request`` or None when more bytes are needed. Nothing is normalised (header case,
order and duplicates stay as sent) and nothing raises: whatever a real server could object to is
a ``Problem`` flag, and the persona decides the answer. When the start of the next request
cannot be known (a head cut off by a limit, a broken chunk, an unknown transfer coding, an
HTTP/0.9 line), the request carries ``framing_intact=False`` and the parser stops: every later
``next_request()`` returns None and fed bytes are dropped, since the server closes.

Memory is bounded by the ``Limits``: a head is cut off (and reported) as soon as the buffered
bytes pass the request-line or header limits, and a body is collected in pieces up to
``body_bytes_max``. Empty lines before a request line are skipped and counted (RFC 9112 section
2.2) without being buffered.

This is the decoy's and the gateway's hot path: a complete request in one buffer is parsed with
a few ``bytes.find``/``split`` calls and no regular expression; the incremental states are only
entered when a request arrives in pieces.
"""

from __future__ import annotations

from typing import Literal

from feint.camouflage.decoy.contract import Limits, Problem, Request

# A chunk-size line (`1a2b;name=value`) longer than this is a broken chunk, not a wait.
CHUNK_SIZE_LINE_BYTES_MAX = 4096
# Hex digits of a chunk size; more would exceed any body limit anyway.
CHUNK_SIZE_DIGITS_MAX = 16
# Digits of a Content-Length value; more would exceed any body limit anyway.
CONTENT_LENGTH_DIGITS_MAX = 19

# RFC 9110 section 5.6.2 tchar: deleting these from a name leaves nothing when the name is a token.
TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HEX_DIGITS = b"0123456789abcdefABCDEF"
_FOLD_STARTS = (b" ", b"\t")  # a line starting with one continues the previous field (obs-fold)
# Methods, versions and field names that need no character check (the hot path's common case).
_PLAIN_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"CONNECT"})
_PLAIN_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
_PLAIN_NAMES = frozenset(
    {
        b"Host", b"User-Agent", b"Accept", b"Accept-Language", b"Accept-Encoding", b"Connection",
        b"Cookie", b"Referer", b"Content-Type", b"Content-Length", b"Cache-Control", b"Origin",
        b"Upgrade-Insecure-Requests", b"Authorization", b"Pragma", b"If-None-Match", b"If-Modified-Since",
        b"X-Forwarded-For", b"Sec-Fetch-Dest", b"Sec-Fetch-Mode", b"Sec-Fetch-Site", b"Sec-Fetch-User",
        b"DNT", b"TE", b"Range", b"Transfer-Encoding", b"X-Requested-With", b"host", b"user-agent",
        b"accept", b"accept-encoding", b"accept-language", b"connection", b"cookie", b"content-type",
        b"content-length",
    }
)  # fmt: skip
_EMPTY_HEADERS: tuple[tuple[bytes, bytes], ...] = ()
_NO_PROBLEMS: frozenset[Problem] = frozenset()

Phase = Literal["idle", "head", "body"]

# Parser states between feeds.
_HEAD = 0  # waiting for (the rest of) a head
_BODY_LENGTH = 1  # collecting a Content-Length body
_CHUNK_SIZE = 2  # waiting for a chunk-size line
_CHUNK_DATA = 3  # collecting chunk data (then its line ending)
_TRAILERS = 4  # waiting for trailer lines and the final empty line
_STOPPED = 5  # framing lost: nothing more is parsed


def split_request_line(line: bytes) -> tuple[bytes, bytes, bytes | None, set[Problem]]:
    """Method, target and version of a request line (without its line ending), and its problems."""
    problems: set[Problem] = set()
    parts = line.split(b" ")
    if b"" in parts:
        # nginx accepts several SP between the parts (measured): drop the empty parts, flag it.
        parts = [part for part in parts if part]
        if len(parts) > 1 or line.strip(b" ") != line:
            problems.add(Problem.EXTRA_SPACE)
    count = len(parts)
    if count == 3:
        method, target, version = parts
    elif count == 2:
        method, target = parts
        version = None
        problems.add(Problem.HTTP09)
    elif count > 3:
        # A SP inside the target: nginx and Apache both answer 400 (measured).
        method, version = parts[0], parts[-1]
        target = b" ".join(parts[1:-1])
        problems.add(Problem.MALFORMED_REQUEST_LINE)
    else:
        problems.add(Problem.MALFORMED_REQUEST_LINE)
        return (parts[0] if parts else b""), b"", None, problems
    if method in _PLAIN_METHODS:
        pass
    elif method.translate(None, TCHARS):
        problems.add(Problem.BAD_METHOD)
    elif method.upper() != method:
        problems.add(Problem.LOWERCASE_METHOD)
    if target[:1] != b"/" and b"://" in target:
        problems.add(Problem.ABSOLUTE_URI)
    if b"\r" in line:
        problems.add(Problem.MALFORMED_REQUEST_LINE)
    if version is not None and version not in _PLAIN_VERSIONS:
        if len(version) != 8 or version[:5] != b"HTTP/" or version[6] != 46 or not version[5:8:2].isdigit():
            problems.add(Problem.BAD_VERSION)
        elif version[5] != 49:  # major version other than 1: HTTP/2.0, HTTP/3.0, HTTP/0.9
            problems.add(Problem.UNSUPPORTED_VERSION)
    return method, target, version, problems


def _header_lines(block: bytes, problems: set[Problem]) -> list[bytes]:
    """The lines of a header block that ends with its last line ending (CRLF or bare LF)."""
    if not block:
        return []
    lf = block.count(b"\n")
    crlf = block.count(b"\r\n")
    if lf == crlf:
        lines = block[:-2].split(b"\r\n")
    else:
        problems.add(Problem.BARE_LF)
        lines = [line[:-1] if line[-1:] == b"\r" else line for line in block[:-1].split(b"\n")]
    if block.count(b"\r") != crlf:
        # A CR inside a line (nginx and Apache answer 400, measured): mark the lines holding one.
        problems.add(Problem.BAD_HEADER_LINE)
    return lines


def parse_header_lines(
    lines: list[bytes], limits: Limits, problems: set[Problem]
) -> tuple[list[tuple[bytes, bytes]], int]:
    """(name, value) pairs as sent, obs-fold lines joined to their field with one SP, and the number of Host fields."""
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    line_max = limits.header_line_bytes_max
    for line in lines:
        if len(line) > line_max:
            problems.add(Problem.HEADER_LINE_TOO_LONG)
        if line[:1] in _FOLD_STARTS:
            problems.add(Problem.OBS_FOLD)
            if headers:
                name, value = headers[-1]
                headers[-1] = (name, value + b" " + line.strip(b" \t"))
            else:
                problems.add(Problem.BAD_HEADER_LINE)
            continue
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not name:
            problems.add(Problem.BAD_HEADER_LINE)
            headers.append((name, value))
            continue
        if (name not in _PLAIN_NAMES and name.translate(None, TCHARS)) or b"\r" in value:
            problems.add(Problem.BAD_HEADER_LINE)
        if len(name) == 4 and name.lower() == b"host":
            hosts += 1
        headers.append((name, value))
    if len(headers) > limits.header_count_max:
        problems.add(Problem.TOO_MANY_HEADERS)
    return headers, hosts


def _framing(headers: list[tuple[bytes, bytes]], problems: set[Problem]) -> tuple[int, bool, bool]:
    """(Content-Length or -1, chunked, framing intact) from the framing fields of a head."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for name, value in headers:
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            lengths.append(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            codings.append(value)
    if codings:
        if lengths:
            problems.add(Problem.CONTENT_LENGTH_AND_CHUNKED)
        names = [coding.strip(b" \t").lower() for coding in b",".join(codings).split(b",")]
        if names[-1] != b"chunked":
            # RFC 9112 section 6.3: the body length cannot be known; the server must close.
            problems.add(Problem.UNKNOWN_TRANSFER_ENCODING)
            return -1, False, False
        if len(names) > 1:
            problems.add(Problem.UNKNOWN_TRANSFER_ENCODING)
        return -1, True, True
    if not lengths:
        return -1, False, True
    first = lengths[0]
    valid = first.isdigit() and len(first) <= CONTENT_LENGTH_DIGITS_MAX
    if len(lengths) > 1:
        # nginx and Apache refuse even identical duplicates (measured); identical ones still frame.
        problems.add(Problem.BAD_CONTENT_LENGTH)
        valid = valid and all(other == first for other in lengths)
    if not valid:
        problems.add(Problem.BAD_CONTENT_LENGTH)
        return -1, False, False
    return int(first), False, True


class RequestParser:
    """Frames the requests of one connection within ``limits``; see the module docstring."""

    __slots__ = (
        "_body_need",
        "_body_parts",
        "_body_size",
        "_buf",
        "_chunk_left",
        "_head_problems",
        "_limits",
        "_line_window",
        "_pending",
        "_scan_from",
        "_skipped",
        "_skipped_bare_lf",
        "_state",
        "_trailer_bytes",
        "_trailers",
    )

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._buf = b""
        self._state = _HEAD
        self._skipped = 0  # empty lines skipped before the current request line
        self._skipped_bare_lf = False  # one of them ended with a bare LF
        self._scan_from = 0  # where the search for the end of an incomplete head resumes
        # A request whose head is parsed and whose body is being collected, as keyword arguments.
        self._pending: dict[str, object] = {}
        self._head_problems: set[Problem] = set()
        self._body_parts: list[bytes] = []
        self._body_size = 0
        self._body_need = 0
        self._chunk_left = 0
        self._trailers: list[bytes] = []
        self._trailer_bytes = 0
        # A request line may end with CRLF: search one byte past the limit for its LF.
        self._line_window = limits.request_line_bytes_max + 2

    # -- what the server asks between reads ------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Which read timeout applies while waiting: idle between requests, head, or body."""
        state = self._state
        if state == _HEAD:
            return "head" if self._buf or self._skipped else "idle"
        return "idle" if state == _STOPPED else "body"

    @property
    def buffered(self) -> int:
        """Bytes held for requests not yet returned (head bytes and body pieces)."""
        return len(self._buf) + self._body_size

    @property
    def stopped(self) -> bool:
        """True once a request with lost framing was returned."""
        return self._state == _STOPPED

    def partial(self) -> bytes:
        """The bytes of the request in progress, as far as received (for ``Responder.timeout``)."""
        head = self._pending.get("head")
        if isinstance(head, bytes):
            return head + b"".join(self._body_parts) + self._buf
        return self._buf

    def feed(self, data: bytes) -> None:
        """Append bytes read from the connection (dropped once framing is lost)."""
        if self._state == _STOPPED:
            return
        self._buf = self._buf + data if self._buf else data

    # -- framing -----------------------------------------------------------------------------

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes arrive (or after framing is lost)."""
        state = self._state
        if state == _HEAD:
            return self._head()
        if state == _BODY_LENGTH:
            return self._body_length()
        if state == _STOPPED:
            return None
        return self._chunked()

    def _head(self) -> Request | None:
        buf = self._buf
        if not buf:
            return None
        first = buf[0]
        if first == 13 or first == 10:
            buf = self._skip_empty_lines(buf)
            if not buf:
                return None
        limits = self._limits
        lf = buf.find(b"\n", 0, self._line_window)
        if lf < 0:
            if len(buf) >= self._line_window or (len(buf) == self._line_window - 1 and buf[-1] != 13):
                return self._cut_request_line(buf)
            if limits.answer_bad_method_byte_at_once and buf != b"\r":
                space = buf.find(b" ")
                method = buf if space < 0 else buf[:space]
                if method.translate(None, TCHARS):
                    problems = {Problem.BAD_METHOD}
                    return self._stop(buf, buf, method, b"", None, _EMPTY_HEADERS, problems, self._skipped)
            return None
        end = lf - 1 if lf and buf[lf - 1] == 13 else lf
        line = buf[:end]
        if end > limits.request_line_bytes_max:
            return self._cut_request_line(buf)
        method, target, version, problems = split_request_line(line)
        if end == lf or self._skipped_bare_lf:
            problems.add(Problem.BARE_LF)
        http09_at_once = Problem.HTTP09 in problems and not limits.http09_reads_headers
        if problems and (http09_at_once or not problems.isdisjoint(limits.answer_at_request_line)):
            # HTTP/0.9 has no headers and no keep-alive; a broken line is answered before them.
            return self._stop(buf[: lf + 1], line, method, target, version, _EMPTY_HEADERS, problems, self._skipped)
        # The head ends at the first LF followed by an empty line (CRLF or bare LF).
        scan = max(lf, self._scan_from)
        window = lf + 3 + limits.header_bytes_max
        crlf_end = buf.find(b"\n\r\n", scan, window)
        lf_end = buf.find(b"\n\n", scan, crlf_end + 1 if crlf_end >= 0 else window)
        if lf_end >= 0:
            head_end, block_end = lf_end + 2, lf_end + 1
            problems.add(Problem.BARE_LF)
        elif crlf_end >= 0:
            head_end, block_end = crlf_end + 3, crlf_end + 1
        else:
            return self._incomplete_head(buf, lf, line, method, target, version, problems)
        head = buf[:head_end]
        block = head[lf + 1 : block_end]
        if len(block) > limits.header_bytes_max:
            problems.add(Problem.HEADERS_TOO_LARGE)
        lines = _header_lines(block, problems)
        headers, hosts = parse_header_lines(lines, limits, problems)
        if hosts > 1:
            problems.add(Problem.DUPLICATE_HOST)
        elif hosts == 0 and version == b"HTTP/1.1":
            problems.add(Problem.MISSING_HOST)
        if b"\x00" in head:
            problems.add(Problem.NUL_BYTE)
        length, chunked, intact = _framing(headers, problems)
        if Problem.HEADER_LINE_TOO_LONG in problems or Problem.HEADERS_TOO_LARGE in problems:
            # An oversized head is cut when it arrives in pieces; so it is when it arrives whole.
            intact = False
        skipped = self._skipped
        self._skipped = 0
        self._skipped_bare_lf = False
        self._scan_from = 0
        if not intact:
            return self._stop(head, line, method, target, version, tuple(headers), problems, skipped)
        if length <= 0 and not chunked:
            # The common case: a request without a body, returned without any state change.
            self._buf = buf[head_end:]
            return Request(
                request_line=line,
                method=method,
                target=target,
                version=version,
                headers=tuple(headers),
                body=b"",
                problems=frozenset(problems) if problems else _NO_PROBLEMS,
                head=head,
                empty_lines_skipped=skipped,
            )
        self._pending = {
            "request_line": line,
            "method": method,
            "target": target,
            "version": version,
            "headers": tuple(headers),
            "head": head,
            "empty_lines_skipped": skipped,
        }
        self._head_problems = problems
        if length > limits.body_bytes_max:
            problems.add(Problem.BODY_TOO_LARGE)
            return self._stop_pending(b"")
        self._buf = buf[head_end:]
        if chunked:
            self._state = _CHUNK_SIZE
            return self._chunked()
        self._state = _BODY_LENGTH
        self._body_need = length
        return self._body_length()

    def _skip_empty_lines(self, buf: bytes) -> bytes:
        """``buf`` without its leading empty lines, which are counted; a lone CR stays (it is not an empty line)."""
        stripped = buf.lstrip(b"\r\n")
        gone = buf[: len(buf) - len(stripped)]
        crlf = gone.count(b"\r\n")
        if gone.count(b"\r") != crlf or gone[-1:] == b"\r":
            # A CR not followed by LF (or whose LF has not arrived): skip byte by byte up to it.
            index, crlf = 0, 0
            while index < len(gone):
                if gone[index] == 10:
                    index += 1
                elif gone[index + 1 : index + 2] == b"\n":
                    index += 2
                    crlf += 1
                else:
                    break
            gone, stripped = gone[:index], buf[index:]
        lines = gone.count(b"\n")
        if lines != crlf:
            self._skipped_bare_lf = True
        self._skipped += lines
        self._buf = stripped
        return stripped

    def _cut_request_line(self, buf: bytes) -> Request:
        """The request line passed its limit before its end: report what arrived, framing lost."""
        line = buf[: self._limits.request_line_bytes_max]
        space = line.find(b" ")
        method = line[:space] if space > 0 else b""
        problems = {Problem.REQUEST_LINE_TOO_LONG}
        return self._stop(line, line, method, b"", None, _EMPTY_HEADERS, problems, self._skipped)

    def _incomplete_head(
        self,
        buf: bytes,
        lf: int,
        line: bytes,
        method: bytes,
        target: bytes,
        version: bytes | None,
        problems: set[Problem],
    ) -> Request | None:
        """Wait for the rest of the head, or cut it off once it passes the header limits."""
        limits = self._limits
        block = buf[lf + 1 :]
        last_lf = block.rfind(b"\n")
        partial_line = len(block) - last_lf - 1
        if len(block) <= limits.header_bytes_max and partial_line <= limits.header_line_bytes_max + 1:
            self._scan_from = max(lf, len(buf) - 2)
            return None
        problems.add(
            Problem.HEADERS_TOO_LARGE if len(block) > limits.header_bytes_max else Problem.HEADER_LINE_TOO_LONG
        )
        complete = block[: last_lf + 1] if last_lf >= 0 else b""
        headers, _ = parse_header_lines(_header_lines(complete, problems), limits, problems)
        return self._stop(buf, line, method, target, version, tuple(headers), problems, self._skipped)

    def _stop(
        self,
        head: bytes,
        line: bytes,
        method: bytes,
        target: bytes,
        version: bytes | None,
        headers: tuple[tuple[bytes, bytes], ...],
        problems: set[Problem],
        skipped: int,
    ) -> Request:
        """A request after which framing is lost (no body read): the parser stops and holds nothing more."""
        self._reset()
        self._state = _STOPPED
        self._buf = b""
        return Request(
            request_line=line,
            method=method,
            target=target,
            version=version,
            headers=headers,
            body=b"",
            problems=frozenset(problems),
            framing_intact=False,
            head=head,
            empty_lines_skipped=skipped,
        )

    def _stop_pending(self, body: bytes) -> Request:
        """The pending request with lost framing (an oversized or broken body)."""
        pending = self._pending
        problems = self._head_problems
        request = Request(
            **pending,  # type: ignore[arg-type]
            body=body,
            problems=frozenset(problems),
            framing_intact=False,
            trailers=tuple(parse_header_lines(self._trailers, self._limits, problems)[0]),
        )
        self._reset()
        self._state = _STOPPED
        self._buf = b""
        return request

    def _finish_pending(self, body: bytes, *, trailers: tuple[tuple[bytes, bytes], ...] = ()) -> Request:
        problems = self._head_problems
        request = Request(
            **self._pending,  # type: ignore[arg-type]
            body=body,
            problems=frozenset(problems) if problems else _NO_PROBLEMS,
            trailers=trailers,
        )
        self._reset()
        return request

    def _reset(self) -> None:
        self._state = _HEAD
        self._pending = {}
        self._head_problems = set()
        self._body_parts = []
        self._body_size = 0
        self._body_need = 0
        self._chunk_left = 0
        self._trailers = []
        self._trailer_bytes = 0
        self._skipped = 0
        self._skipped_bare_lf = False
        self._scan_from = 0

    # -- bodies ------------------------------------------------------------------------------

    def _take(self, count: int) -> None:
        """Move up to ``count`` bytes from the buffer to the body pieces."""
        buf = self._buf
        piece = buf[:count]
        if piece:
            self._body_parts.append(piece)
            self._body_size += len(piece)
            self._buf = buf[count:]

    def _body_length(self) -> Request | None:
        need = self._body_need - self._body_size
        if len(self._buf) < need:
            self._take(need)
            return None
        self._take(need)
        parts = self._body_parts
        return self._finish_pending(parts[0] if len(parts) == 1 else b"".join(parts))

    def _chunked(self) -> Request | None:
        """Advance through chunk-size lines, chunk data and trailers as far as the buffer allows."""
        limits = self._limits
        problems = self._head_problems
        while True:
            buf = self._buf
            state = self._state
            if state == _CHUNK_SIZE:
                lf = buf.find(b"\n", 0, CHUNK_SIZE_LINE_BYTES_MAX + 1)
                if lf < 0:
                    if len(buf) > CHUNK_SIZE_LINE_BYTES_MAX:
                        problems.add(Problem.BAD_CHUNKED)
                        return self._stop_pending(b"".join(self._body_parts))
                    return None
                line = buf[:lf]
                if line[-1:] == b"\r":
                    line = line[:-1]
                else:
                    problems.add(Problem.BARE_LF)
                digits = line.split(b";", 1)[0].rstrip(b" \t")
                if not digits or len(digits) > CHUNK_SIZE_DIGITS_MAX or digits.translate(None, HEX_DIGITS):
                    problems.add(Problem.BAD_CHUNKED)
                    return self._stop_pending(b"".join(self._body_parts))
                size = int(digits, 16)
                self._buf = buf[lf + 1 :]
                if self._body_size + size > limits.body_bytes_max:
                    problems.add(Problem.BODY_TOO_LARGE)
                    return self._stop_pending(b"".join(self._body_parts))
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._state = _CHUNK_DATA
                    self._chunk_left = size
            elif state == _CHUNK_DATA:
                left = self._chunk_left
                if left:
                    before = self._body_size
                    self._take(left)
                    self._chunk_left = left - (self._body_size - before)
                    if self._chunk_left:
                        return None
                    buf = self._buf
                if buf[:2] == b"\r\n":
                    self._buf = buf[2:]
                elif buf[:1] == b"\n":
                    problems.add(Problem.BARE_LF)
                    self._buf = buf[1:]
                elif buf == b"\r" or not buf:
                    return None
                else:
                    problems.add(Problem.BAD_CHUNKED)
                    return self._stop_pending(b"".join(self._body_parts))
                self._state = _CHUNK_SIZE
            else:
                return self._trailer_lines()

    def _trailer_lines(self) -> Request | None:
        limits = self._limits
        problems = self._head_problems
        while True:
            buf = self._buf
            lf = buf.find(b"\n", 0, limits.header_line_bytes_max + 2)
            if lf < 0:
                if len(buf) > limits.header_line_bytes_max + 1:
                    problems.add(Problem.HEADER_LINE_TOO_LONG)
                    return self._stop_pending(b"".join(self._body_parts))
                return None
            line = buf[:lf]
            if line[-1:] == b"\r":
                line = line[:-1]
            else:
                problems.add(Problem.BARE_LF)
            self._buf = buf[lf + 1 :]
            if not line:
                trailers, _ = parse_header_lines(self._trailers, limits, problems)
                return self._finish_pending(b"".join(self._body_parts), trailers=tuple(trailers))
            self._trailers.append(line)
            self._trailer_bytes += lf + 1
            if self._trailer_bytes > limits.header_bytes_max or len(self._trailers) > limits.header_count_max:
                problems.add(Problem.HEADERS_TOO_LARGE)
                return self._stop_pending(b"".join(self._body_parts))
