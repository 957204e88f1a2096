"""iis-10: the hand-written IIS persona agrees with the published facts its header cites."""

from __future__ import annotations

import calendar
import time

import pytest

from feint.camouflage.decoy import persona, recorder
from feint.camouflage.decoy.contract import Connection
from feint.camouflage.decoy.responder import PersonaResponder, filetime_hex

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="192.0.2.9", peer_port=50000, local_host="127.0.0.1", local_port=80, requests_served=0)
FILETIME_EPOCH_OFFSET = 11_644_473_600  # seconds from 1601-01-01 to 1970-01-01


def _answer(payload: bytes) -> bytes:
    p = persona.load("iis-10")
    return PersonaResponder(p).respond(recorder.requests_of(payload, p)[0], CONN).data


def _head_and_body(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


@pytest.mark.parametrize(
    ("etag", "octets", "last_modified"),
    [
        ("557c50d443acd81", (0x55, 0x7C, 0x50, 0xD4, 0x43, 0xAC, 0xD8, 0x01), "Tue, 09 Aug 2022 23:00:33 GMT"),
        ("965c9516cb2d61", (0x09, 0x65, 0xC9, 0x51, 0x6C, 0xB2, 0xD6, 0x01), "Wed, 04 Nov 2020 05:35:35 GMT"),
    ],
)
def test_published_iis_etags_are_the_files_filetime_little_endian(
    etag: str, octets: tuple[int, ...], last_modified: str
) -> None:
    """Each published ETag (S2) is 8 little-endian FILETIME octets in unpadded hex, inside its Last-Modified second."""
    ticks = int.from_bytes(bytes(octets), "little")
    assert filetime_hex(ticks) == etag
    seconds = calendar.timegm(time.strptime(last_modified, "%a, %d %b %Y %H:%M:%S GMT"))
    assert ticks // 10_000_000 - FILETIME_EPOCH_OFFSET == seconds


def test_default_page_is_703_bytes_as_published_with_iis_header_order() -> None:
    """GET / over HTTP/1.0: iisstart.htm, 703 bytes, IIS's header order, Connection: close before Content-Length."""
    lines, body = _head_and_body(_answer(b"GET / HTTP/1.0\r\n\r\n"))
    assert lines[0] == b"HTTP/1.1 200 OK" and len(body) == 703
    assert body.startswith(b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"') and b"iisstart.png" in body
    names = [line.split(b":")[0] for line in lines[1:]]
    assert names == [
        b"Content-Type",
        b"Last-Modified",
        b"Accept-Ranges",
        b"ETag",
        b"Server",
        b"X-Powered-By",
        b"Date",
        b"Connection",
        b"Content-Length",
    ]
    assert b"Server: Microsoft-IIS/10.0" in lines and b"X-Powered-By: ASP.NET" in lines
    etag = next(line for line in lines if line.startswith(b"ETag: "))
    assert etag.endswith(b':0"') and etag.startswith(b'ETag: "')


@pytest.mark.parametrize(
    ("payload", "h2", "length"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"Bad Request - Invalid Hostname", 334),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", b"Bad Request - Invalid Header", 339),
        (b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", b"Bad Request - Invalid Verb", 326),
    ],
)
def test_httpsys_refusals_have_the_published_lengths(payload: bytes, h2: bytes, length: int) -> None:
    """HTTP.sys answers malformed requests itself: Microsoft-HTTPAPI/2.0, the published page lengths (S4)."""
    lines, body = _head_and_body(_answer(payload))
    assert lines[0] == b"HTTP/1.1 400 Bad Request"
    assert lines[1:3] == [b"Content-Type: text/html; charset=us-ascii", b"Server: Microsoft-HTTPAPI/2.0"]
    assert lines[4:] == [b"Connection: close", f"Content-Length: {length}".encode()]
    assert f"<h2>{h2.decode()}</h2>".encode() in body and len(body) == length


def test_missing_file_gets_the_1245_byte_custom_error_page() -> None:
    """A remote client's 404 is custerr/404.htm: 1245 bytes (S5), with IIS's Server and X-Powered-By."""
    lines, body = _head_and_body(_answer(b"GET /nope.html HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert lines[0] == b"HTTP/1.1 404 Not Found" and len(body) == 1245
    assert b"<h2>404 - File or directory not found.</h2>" in body
    assert lines[1:4] == [b"Content-Type: text/html", b"Server: Microsoft-IIS/10.0", b"X-Powered-By: ASP.NET"]


def test_version_flag_changes_server_header() -> None:
    """--version 8.5 announces Microsoft-IIS/8.5."""
    assert persona.load("iis-10", version="8.5").server == "Microsoft-IIS/8.5"
