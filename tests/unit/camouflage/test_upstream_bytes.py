"""What the gateway writes upstream: hop-by-hop fields dropped, X-Forwarded-For appended."""

from __future__ import annotations

import pytest

from feint.camouflage.decoy.contract import Request
from feint.camouflage.engine.upstream import client_keeps_alive, request_bytes

pytestmark = pytest.mark.unit


def req(headers: tuple[tuple[bytes, bytes], ...], *, version: bytes | None = b"HTTP/1.1", body: bytes = b"") -> Request:
    return Request(
        request_line=b"GET / " + (version or b""),
        method=b"GET",
        target=b"/x?y=1",
        version=version,
        headers=headers,
        body=body,
        problems=frozenset(),
    )


def test_hop_by_hop_dropped_and_named_ones_too() -> None:
    """Connection, Keep-Alive, TE, Upgrade and fields named in Connection do not travel."""
    sent = request_bytes(
        req(((b"Host", b"h"), (b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"1"), (b"TE", b"trailers"))),
        client_ip="192.0.2.1",
        default_host=b"up",
    )
    assert sent == b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n"


def test_forwarded_for_chain_folded_in_place() -> None:
    """Earlier X-Forwarded-For values stay first, in the position of the first field."""
    sent = request_bytes(
        req(((b"X-Forwarded-For", b"a"), (b"Host", b"h"), (b"x-forwarded-for", b"b"))),
        client_ip="c",
        default_host=b"up",
    )
    assert sent == b"GET /x?y=1 HTTP/1.1\r\nX-Forwarded-For: a, b, c\r\nHost: h\r\n\r\n"


def test_missing_host_and_body_length() -> None:
    """A request without Host gets the upstream's; a body gets its Content-Length."""
    sent = request_bytes(req((), version=b"HTTP/1.0", body=b"abc"), client_ip="c", default_host=b"up:81")
    assert sent.endswith(b"Host: up:81\r\nX-Forwarded-For: c\r\nContent-Length: 3\r\n\r\nabc")


def test_client_keep_alive_rules() -> None:
    """HTTP/1.1 keeps alive unless close; HTTP/1.0 only with keep-alive."""
    assert client_keeps_alive(req(()))
    assert not client_keeps_alive(req(((b"Connection", b"close"),)))
    assert not client_keeps_alive(req((), version=b"HTTP/1.0"))
    assert client_keeps_alive(req(((b"Connection", b"Keep-Alive"),), version=b"HTTP/1.0"))
