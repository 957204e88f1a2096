"""Apache's directory listing dates and the icons WhatWeb's aggressive check fetches."""

from __future__ import annotations

import pytest

from feint.camouflage.decoy import persona, recorder
from feint.camouflage.decoy.contract import Connection
from feint.camouflage.decoy.responder import PersonaResponder, listing_mtime
from feint.camouflage.decoy.situation import SiteIndex

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=80, requests_served=0)


def _answer(payload: bytes) -> bytes:
    p = persona.load("apache-debian")
    return PersonaResponder(p).respond(recorder.requests_of(payload, p)[0], CONN).data


def test_listing_prints_the_sites_mtime() -> None:
    """The /backup/ listing shows the persona's file mtime in mod_autoindex's format, not a recorded one."""
    p = persona.load("apache-debian")
    data = _answer(b"GET /backup/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert listing_mtime(0) == "1970-01-01 00:00"
    assert f">{listing_mtime(p.site_mtime)}  <".encode() in data
    assert b"{{" not in data


def test_files_under_a_special_prefix_are_served() -> None:
    """/icons/apache_pb.gif is a file of its own kind; other /icons/ paths stay as recorded (404)."""
    site = SiteIndex(files=frozenset({"/icons/a.gif"}), index_names=(), special={"/icons/": "icons"})
    assert site.resolve(b"/icons/a.gif").kind == "icons-file"
    assert site.resolve(b"/icons/b.gif").kind == "icons"
    gif = _answer(b"GET /icons/apache_pb.gif HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
    head, _, body = gif.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Type: image/gif" in head
    assert body.startswith(b"GIF89a") and len(body) == 4463
    assert _answer(b"GET /icons/README HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 404 Not Found\r\n")
