"""The gateway forwards benign requests unchanged and relays the upstream's answer byte for byte."""

from __future__ import annotations

import pytest

from tests.integration.camouflage.conftest import Running, exchange
from tests.integration.camouflage.upstream import BIG_BODY

pytestmark = pytest.mark.integration

BROWSER = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"


def _get(path: bytes, *extra: bytes, close: bool = True) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: shop.example", b"User-Agent: " + BROWSER, *extra]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_request_reaches_upstream_unchanged(gw: Running) -> None:
    """Method, target, header names (case, order), values and body arrive as sent, plus X-Forwarded-For."""
    raw = (
        b"POST /api/cart?item=3&qty=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: " + BROWSER + b"\r\n"
        b"X-Custom-CASE: MiXeD\r\naccept: */*\r\nX-Forwarded-For: 203.0.113.9\r\nContent-Length: 11\r\n"
        b"Connection: close\r\n\r\nhello=world"
    )
    answer = await exchange(gw.port, raw)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    seen = gw.upstream.requests[-1]
    assert seen == (
        b"POST /api/cart?item=3&qty=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: " + BROWSER + b"\r\n"
        b"X-Custom-CASE: MiXeD\r\naccept: */*\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.1\r\n"
        b"Content-Length: 11\r\n\r\nhello=world"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == seen
    assert b"Keep-Alive" not in head  # hop-by-hop from the upstream is dropped
    assert b"\r\nX-Echo: 1\r\n" in head and b"\r\nConnection: close" in head


async def test_big_body_byte_for_byte(gw: Running) -> None:
    """A 1 MiB answer streams through whole and unchanged."""
    answer = await exchange(gw.port, _get(b"/big"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 1048576" in head
    assert body == BIG_BODY


async def test_chunked_relayed_as_written(gw: Running) -> None:
    """A chunked answer keeps its chunks, extensions and trailer for an HTTP/1.1 client."""
    answer = await exchange(gw.port, _get(b"/chunked"))
    assert answer.endswith(b"\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in answer


async def test_chunked_dechunked_for_http10(gw: Running) -> None:
    """An HTTP/1.0 client gets the body without chunk framing, ended by closing."""
    raw = b"GET /chunked HTTP/1.0\r\nHost: shop.example\r\nUser-Agent: " + BROWSER + b"\r\n\r\n"
    answer = await exchange(gw.port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"hello, world"
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head


async def test_close_delimited(gw: Running) -> None:
    """An answer ended by the upstream closing reaches the client whole, and the client is closed."""
    answer = await exchange(gw.port, _get(b"/close", close=False))
    assert answer.endswith(b"\r\n\r\nuntil close")
    assert b"Connection: close" in answer


async def test_keep_alive_reuses_upstream_connection(gw: Running) -> None:
    """Ten requests on one client connection use one upstream connection."""
    raw = b"".join(_get(b"/item/%d" % n, close=False) for n in range(10))
    answer = await exchange(gw.port, raw + _get(b"/last"))
    assert answer.count(b"HTTP/1.1 200 OK") == 11
    assert gw.upstream.connections == 1


async def test_upstream_down_is_502(gw: Running) -> None:
    """An upstream that refuses connections gives 502, counted."""
    from feint.camouflage.engine.upstream import Upstream

    gw.gateway.upstream = Upstream("http://127.0.0.1:1")
    answer = await exchange(gw.port, _get(b"/"))
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
