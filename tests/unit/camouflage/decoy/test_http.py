"""The incremental request parser: framing, problems as flags, limits, and partial feeds."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from feint.camouflage.decoy.contract import Limits, Problem, Request
from feint.camouflage.decoy.http import CHUNK_SIZE_LINE_BYTES_MAX, RequestParser, split_request_line

pytestmark = pytest.mark.unit

P = Problem
LIMITS = Limits(
    request_line_bytes_max=64,
    header_line_bytes_max=48,
    header_bytes_max=200,
    header_count_max=6,
    body_bytes_max=100,
    header_timeout_seconds=1.0,
    body_timeout_seconds=1.0,
    keepalive_timeout_seconds=1.0,
    keepalive_requests_max=100,
)
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def parse(data: bytes, *, step: int | None = None, limits: Limits = LIMITS) -> tuple[list[Request], RequestParser]:
    """Every request in ``data`` fed at once, or ``step`` bytes at a time."""
    parser = RequestParser(limits)
    out: list[Request] = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        parser.feed(piece)
        while (request := parser.next_request()) is not None:
            out.append(request)
    return out, parser


# (name, bytes, problems of the first request, framing intact, requests framed)
CASES: list[tuple[str, bytes, set[Problem], bool, int]] = [
    ("plain", GET, set(), True, 1),
    ("http10 no host", b"GET / HTTP/1.0\r\n\r\n", set(), True, 1),
    ("missing host", b"GET / HTTP/1.1\r\n\r\n", {P.MISSING_HOST}, True, 1),
    ("duplicate host", b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", {P.DUPLICATE_HOST}, True, 1),
    ("garbage line", b"GARBAGE\r\n", {P.MALFORMED_REQUEST_LINE}, False, 1),
    ("tab separators", b"GET\t/\tHTTP/1.1\r\n", {P.MALFORMED_REQUEST_LINE}, False, 1),
    ("space in target", b"GET /a b HTTP/1.1\r\n", {P.MALFORMED_REQUEST_LINE}, False, 1),
    ("extra spaces", b"GET  /  HTTP/1.1\r\nHost: a\r\n\r\n", {P.EXTRA_SPACE}, True, 1),
    ("leading space", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", {P.EXTRA_SPACE}, True, 1),
    ("bad method", b"G@T / HTTP/1.1\r\n", {P.BAD_METHOD}, False, 1),
    ("lowercase method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", {P.LOWERCASE_METHOD}, True, 1),
    ("unknown method", b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", set(), True, 1),
    ("lowercase version", b"GET / http/1.1\r\n", {P.BAD_VERSION}, False, 1),
    ("version letters", b"GET / HTTP/x.y\r\n", {P.BAD_VERSION}, False, 1),
    ("version too long", b"GET / HTTP/1.10\r\n", {P.BAD_VERSION}, False, 1),
    ("http2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", {P.UNSUPPORTED_VERSION}, True, 1),
    ("http 1.2 is major 1", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", set(), True, 1),
    ("http09", b"GET /x\r\n", {P.HTTP09}, False, 1),
    ("absolute uri", b"GET http://a.example/x HTTP/1.1\r\nHost: a\r\n\r\n", {P.ABSOLUTE_URI}, True, 1),
    ("asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", set(), True, 1),
    ("bare lf", b"GET / HTTP/1.1\nHost: a\n\n", {P.BARE_LF}, True, 1),
    ("bare lf last line only", b"GET / HTTP/1.1\r\nHost: a\r\n\n", {P.BARE_LF}, True, 1),
    ("bare cr in header", b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", {P.BAD_HEADER_LINE}, True, 1),
    ("cr in request line", b"GET /\rx HTTP/1.1\r\nHost: a\r\n\r\n", {P.MALFORMED_REQUEST_LINE}, False, 1),
    ("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", {P.BAD_HEADER_LINE}, True, 1),
    ("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n", {P.BAD_HEADER_LINE}, True, 1),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", {P.BAD_HEADER_LINE, P.MISSING_HOST}, True, 1),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  b\r\n\r\n", {P.OBS_FOLD}, True, 1),
    ("fold first", b"GET / HTTP/1.1\r\n x\r\nHost: a\r\n\r\n", {P.OBS_FOLD, P.BAD_HEADER_LINE}, True, 1),
    ("nul byte", b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", {P.NUL_BYTE}, True, 1),
    (
        "content length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + GET,
        set(),
        True,
        2,
    ),
    ("content length zero", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" + GET, set(), True, 2),
    (
        "content length letters",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc",
        {P.BAD_CONTENT_LENGTH},
        False,
        1,
    ),
    (
        "content length signed",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        {P.BAD_CONTENT_LENGTH},
        False,
        1,
    ),
    (
        "content length list",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
        {P.BAD_CONTENT_LENGTH},
        False,
        1,
    ),
    (
        "content length twice, same",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc" + GET,
        {P.BAD_CONTENT_LENGTH},
        True,
        2,
    ),
    (
        "content length twice, different",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        {P.BAD_CONTENT_LENGTH},
        False,
        1,
    ),
    ("body over limit", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", {P.BODY_TOO_LARGE}, False, 1),
    (
        "huge content length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        {P.BAD_CONTENT_LENGTH},
        False,
        1,
    ),
    (
        "chunked",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nA;ext=1\r\n0123456789\r\n0\r\n\r\n"
        + GET,
        set(),
        True,
        2,
    ),
    (
        "chunked bare lf",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n" + GET,
        {P.BARE_LF},
        True,
        2,
    ),
    (
        "chunked bad size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n" + GET,
        {P.BAD_CHUNKED},
        False,
        1,
    ),
    (
        "chunked negative size",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        {P.BAD_CHUNKED},
        False,
        1,
    ),
    (
        "chunked data too long",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
        {P.BAD_CHUNKED},
        False,
        1,
    ),
    (
        "chunked over limit",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + b"a" * 64 + b"\r\n40\r\n",
        {P.BODY_TOO_LARGE},
        False,
        1,
    ),
    (
        "chunked size too many digits",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000001\r\na\r\n0\r\n\r\n",
        {P.BAD_CHUNKED},
        False,
        1,
    ),
    (
        "chunked and content length",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        + GET,
        {P.CONTENT_LENGTH_AND_CHUNKED},
        True,
        2,
    ),
    (
        "gzip, chunked frames",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + GET,
        {P.UNKNOWN_TRANSFER_ENCODING},
        True,
        2,
    ),
    (
        "gzip only",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nxyz" + GET,
        {P.UNKNOWN_TRANSFER_ENCODING},
        False,
        1,
    ),
    ("request line too long", b"GET /" + b"a" * 80 + b" HTTP/1.1\r\n\r\n", {P.REQUEST_LINE_TOO_LONG}, False, 1),
    (
        "header line too long, complete",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 50 + b"\r\n\r\n",
        {P.HEADER_LINE_TOO_LONG},
        False,
        1,
    ),
    ("header line too long, cut", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 60, {P.HEADER_LINE_TOO_LONG}, False, 1),
    (
        "headers too large",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"Y: " + b"b" * 43 + b"\r\n") * 5,
        {P.HEADERS_TOO_LARGE},
        False,
        1,
    ),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 6 + b"\r\n", {P.TOO_MANY_HEADERS}, True, 1),
]


@pytest.mark.parametrize(("name", "data", "problems", "intact", "count"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("step", [None, 1, 5])
def test_problems_and_framing(
    name: str, data: bytes, problems: set[Problem], intact: bool, count: int, step: int | None
) -> None:
    """Each input gives the same requests, problems and framing fed whole, byte by byte, or 5 bytes at a time."""
    requests, parser = parse(data, step=step)
    assert len(requests) == count, name
    assert set(requests[0].problems) == problems
    assert requests[0].framing_intact is intact
    assert all(r.framing_intact for r in requests[:-1])
    assert parser.stopped is not intact or not requests[-1].framing_intact


def test_fields_as_sent() -> None:
    """Header names keep their case, order and duplicates; values lose only their OWS."""
    data = b"PoSt /p?q=1 HTTP/1.1\r\nHOST: a\r\nx-B:  1 \r\nX-b: 2\r\nContent-Length: 2\r\n\r\nhi"
    [request], _ = parse(data)
    assert request.request_line == b"PoSt /p?q=1 HTTP/1.1"
    assert (request.method, request.target, request.version) == (b"PoSt", b"/p?q=1", b"HTTP/1.1")
    assert request.headers == ((b"HOST", b"a"), (b"x-B", b"1"), (b"X-b", b"2"), (b"Content-Length", b"2"))
    assert request.header(b"x-b") == b"1"
    assert request.header(b"missing") is None
    assert request.body == b"hi"
    assert request.head == data[:-2]
    assert request.problems == {P.LOWERCASE_METHOD}


def test_obs_fold_joins_with_one_space() -> None:
    """A folded line is joined to its field with a single SP."""
    [request], _ = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n \t b\r\n\r\n")
    assert request.headers[-1] == (b"X", b"a b")


def test_chunked_body_and_trailers() -> None:
    """Chunks are joined and trailer fields kept as sent."""
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT-One: 1\r\nT-Two: 2\r\n\r\n"
    for step in (None, 1, 2, 3):
        [request], parser = parse(data, step=step)
        assert request.body == b"abcde"
        assert request.trailers == ((b"T-One", b"1"), (b"T-Two", b"2"))
        assert parser.phase == "idle"


def test_pipelined_requests_in_order() -> None:
    """A burst of pipelined requests is framed in order, whatever the read boundaries."""
    rng = random.Random(7)
    burst = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (i, i % 10, b"x" * (i % 10))
        if i % 3
        else b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
        for i in range(200)
    )
    for _ in range(20):
        parser = RequestParser(LIMITS)
        targets: list[bytes] = []
        pos = 0
        while pos < len(burst):
            size = rng.randint(1, 300)
            parser.feed(burst[pos : pos + size])
            pos += size
            while (request := parser.next_request()) is not None:
                targets.append(request.target)
        assert targets == [b"/%d" % i for i in range(200)]
        assert parser.buffered == 0


def test_empty_lines_before_request_are_skipped_and_counted() -> None:
    """Leading CRLF and LF lines are skipped (RFC 9112 section 2.2), counted, and a bare LF flagged."""
    [request], _ = parse(b"\r\n" * 12 + GET)
    assert request.empty_lines_skipped == 12
    assert request.problems == frozenset()
    [request], _ = parse(b"\n\r\n" + GET, step=1)
    assert request.empty_lines_skipped == 2
    assert request.problems == {P.BARE_LF}
    first, second = parse(GET + b"\r\n\r\n" + GET)[0]
    assert (first.empty_lines_skipped, second.empty_lines_skipped) == (0, 2)


def test_empty_lines_are_not_buffered() -> None:
    """A flood of empty lines holds no memory: only the head timeout ends it."""
    parser = RequestParser(LIMITS)
    for _ in range(10_000):
        parser.feed(b"\r\n\r\n")
        assert parser.next_request() is None
    assert parser.buffered == 0
    assert parser.phase == "head"


def test_lone_cr_before_request_is_not_an_empty_line() -> None:
    """A CR without LF starts the request line, which is then malformed."""
    [request], _ = parse(b"\r\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert P.MALFORMED_REQUEST_LINE in request.problems


def test_phase_and_partial() -> None:
    """The phase says which timeout applies, and partial() holds what arrived of the request."""
    parser = RequestParser(LIMITS)
    assert parser.phase == "idle"
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n")
    assert parser.next_request() is None
    assert parser.phase == "head"
    parser.feed(b"\r\nab")
    assert parser.next_request() is None
    assert parser.phase == "body"
    assert parser.partial().endswith(b"\r\n\r\nab")
    parser.feed(b"cde")
    request = parser.next_request()
    assert request is not None
    assert request.body == b"abcde"
    assert parser.phase == "idle"


def test_stopped_parser_drops_input() -> None:
    """After a request with lost framing, fed bytes are dropped and nothing more is framed."""
    parser = RequestParser(LIMITS)
    parser.feed(b"GARBAGE\r\n" + GET)
    request = parser.next_request()
    assert request is not None
    assert not request.framing_intact
    parser.feed(GET)
    assert parser.next_request() is None
    assert parser.buffered == 0
    assert parser.stopped
    assert parser.phase == "idle"


def test_answer_at_request_line_is_the_personas_choice() -> None:
    """With an empty answer_at_request_line, a broken request line waits for its headers."""
    limits = replace(LIMITS, answer_at_request_line=frozenset())
    request, following = parse(b"GET / http/1.1\r\nHost: a\r\n\r\n" + GET, limits=limits)[0]
    assert following.problems == frozenset()
    assert request.problems == {P.BAD_VERSION}
    assert request.headers == ((b"Host", b"a"),)
    assert request.framing_intact


def test_head_cut_at_limit_without_its_end() -> None:
    """A head that never ends is cut once it passes the header limits, not buffered further."""
    parser = RequestParser(LIMITS)
    parser.feed(b"GET / HTTP/1.1\r\n")
    for _ in range(100):
        parser.feed(b"X: 1\r\n")
        request = parser.next_request()
        if request is not None:
            break
        assert parser.buffered <= 16 + LIMITS.header_bytes_max + 2
    assert request is not None
    assert P.HEADERS_TOO_LARGE in request.problems
    assert not request.framing_intact
    assert request.headers[0] == (b"X", b"1")


def test_request_line_cut_without_line_end() -> None:
    """A request line longer than its limit is reported as soon as the limit passes, with its method."""
    parser = RequestParser(LIMITS)
    parser.feed(b"GET /" + b"a" * 59)
    assert parser.next_request() is None
    parser.feed(b"aa")
    request = parser.next_request()
    assert request is not None
    assert request.problems == {P.REQUEST_LINE_TOO_LONG}
    assert request.method == b"GET"
    assert len(request.request_line) == LIMITS.request_line_bytes_max


def test_request_line_at_limit_with_crlf_is_fine() -> None:
    """A request line of exactly the limit, ending with CRLF, is not too long."""
    line = b"GET /" + b"a" * (LIMITS.request_line_bytes_max - 14) + b" HTTP/1.1"
    assert len(line) == LIMITS.request_line_bytes_max
    for step in (None, 1):
        [request], _ = parse(line + b"\r\nHost: a\r\n\r\n", step=step)
        assert request.problems == frozenset()


def test_chunk_size_line_bounded() -> None:
    """A chunk-size line that never ends is a broken chunk once it passes its bound."""
    parser = RequestParser(LIMITS)
    parser.feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * CHUNK_SIZE_LINE_BYTES_MAX
    )
    request = parser.next_request()
    assert request is not None
    assert request.problems == {P.BAD_CHUNKED}


def test_split_request_line() -> None:
    """The parts of a request line, and an empty line as malformed."""
    assert split_request_line(b"GET / HTTP/1.1")[:3] == (b"GET", b"/", b"HTTP/1.1")
    assert split_request_line(b"")[3] == {P.MALFORMED_REQUEST_LINE}
    assert split_request_line(b"   ")[3] == {P.MALFORMED_REQUEST_LINE, P.EXTRA_SPACE}


def test_random_mutations_never_raise() -> None:
    """Mutated and random inputs, fed in random pieces, never raise and stay within the bounds."""
    rng = random.Random(3)
    seeds = [c[1] for c in CASES]
    alphabet = b"\r\n :;0aF\t\x00GETHTTP/1.chunked"
    bound = (
        CHUNK_SIZE_LINE_BYTES_MAX + LIMITS.body_bytes_max + LIMITS.request_line_bytes_max + LIMITS.header_bytes_max + 8
    )
    for _ in range(3000):
        data = bytearray(b"".join(rng.choice(seeds) for _ in range(rng.randint(1, 3))))
        for _ in range(rng.randint(0, 6)):
            pos = rng.randrange(len(data) + 1)
            roll = rng.random()
            if roll < 0.4:
                data[pos:pos] = bytes([rng.choice(alphabet)]) * rng.choice([1, 2, 70])
            elif roll < 0.7:
                del data[pos : pos + rng.randint(1, 5)]
            elif data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
        step = rng.choice([1, 3, 64, len(data) or 1])
        parser = RequestParser(LIMITS)
        for pos in range(0, len(data), step):
            parser.feed(bytes(data[pos : pos + step]))
            while parser.next_request() is not None:
                pass
            assert parser.buffered <= bound + step
            assert parser.phase in ("idle", "head", "body")


@pytest.mark.parametrize(
    ("sent", "answered"),
    [(b"\x80\x00\x01", True), (b"GE@", True), (b"GET /a\x00", False), (b"\r", False), (b"GET", False)],
)
def test_bad_method_byte_at_once(sent: bytes, answered: bool) -> None:
    """With answer_bad_method_byte_at_once, a non-token byte before the first SP is answered before any LF."""
    limits = replace(LIMITS, answer_bad_method_byte_at_once=True)
    parser = RequestParser(limits)
    parser.feed(sent)
    request = parser.next_request()
    assert (request is not None) is answered
    if request is not None:
        assert request.problems == {P.BAD_METHOD}
        assert not request.framing_intact
    waiting = RequestParser(LIMITS)
    waiting.feed(sent)
    assert waiting.next_request() is None  # without the flag the parser waits for the line end
