"""The persona format's variant features: site overlays, header flags and alternates, the head-line
timeout phase, the request echo, and the refusal of unusable versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from feint.camouflage.decoy import persona, recorder
from feint.camouflage.decoy.contract import Connection
from feint.camouflage.decoy.responder import PersonaResponder, listing_mtime

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=8080, requests_served=0)

BASE = """name: base
family: test
server_format: Test/{version}
version: '1.0'
limits: {request_line_bytes_max: 8192, header_line_bytes_max: 8192, header_bytes_max: 16384,
  header_count_max: 100, body_bytes_max: 1000, header_timeout_seconds: 5, body_timeout_seconds: 5,
  keepalive_timeout_seconds: 5, keepalive_requests_max: 10}
index: [index.html]
flags: {html: {header: accept, contains: text/html}}
timeouts: {head: r408, head-line: null, body: r408}
connection: {keep-alive: [], close: [[Connection, close]]}
responses:
  r200: {status: HTTP/1.1 200 OK, headers: [[Server, '{{server}}']], body: {kind: file}}
  r404: {status: HTTP/1.1 404 Not Found, headers: [[Content-Type, application/json]],
    body: {kind: inline, text: json}, alternates: {html: r404-html}}
  r404-html: {status: HTTP/1.1 404 Not Found, headers: [[Content-Type, text/html]], body: {kind: inline, text: html}}
  r408: {status: HTTP/1.1 408 Request Timeout, headers: ['@connection'], body: {kind: inline, text: 'at {{host}}'}}
  echo: {status: HTTP/1.1 200 OK, headers: [], body: {kind: inline, text: '{{request_head}}'}}
rules:
  '': {response: r404}
  problems=none|method=GET|version=HTTP/1.1|target=origin|resource=dir: {response: r200}
  problems=none|method=TRACE: {response: echo}
"""


def _write(root: Path, name: str, text: str, files: dict[str, bytes] | None = None) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "persona.yaml").write_text(text)
    for rel, data in (files or {}).items():
        path = root / name / "site" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _write(tmp_path, "base", BASE, {"index.html": b"base index", "robots.txt": b"base robots"})
    return tmp_path


def _answer(p: persona.Persona, payload: bytes) -> bytes:
    return PersonaResponder(p).respond(recorder.requests_of(payload, p)[0], CONN).data


def test_site_overlay_lays_the_variants_files_over_the_parents(root: Path) -> None:
    """With site_overlay the variant keeps the parent's files and replaces those it has itself."""
    _write(root, "over", "name: over\nextends: base\nsite_overlay: true\n", {"index.html": b"variant index"})
    _write(root, "swap", "name: swap\nextends: base\n", {"index.html": b"variant index"})
    over = persona.load("over", root=root)
    assert over.site == {"/index.html": b"variant index", "/robots.txt": b"base robots"}
    assert persona.load("swap", root=root).site == {"/index.html": b"variant index"}


def test_alternate_answers_when_the_request_carries_the_flag(root: Path) -> None:
    """Accept: text/html switches r404 to its html alternate; without it the JSON one answers."""
    p = persona.load("base", root=root)
    assert _answer(p, b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: Text/HTML\r\n\r\n").endswith(b"\r\n\r\nhtml")
    assert _answer(p, b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n").endswith(b"\r\n\r\njson")


def test_alternates_must_name_a_declared_flag(root: Path) -> None:
    """An alternate on an undeclared flag is a load error naming the response."""
    _write(root, "bad", BASE.replace("name: base", "name: bad").replace("alternates: {html:", "alternates: {xml:"))
    with pytest.raises(persona.PersonaError, match=r"responses\.r404\.alternates"):
        persona.load("bad", root=root)


def test_head_line_phase_closes_silently_before_a_whole_request_line(root: Path) -> None:
    """Half a request line by the head timeout: silence; a line and some headers: the 408; a stalled body: Host known."""
    responder = PersonaResponder(persona.load("base", root=root))
    assert responder.timeout("head", partial=b"", conn=CONN) is None
    assert responder.timeout("head", partial=b"GET / HT", conn=CONN) is None
    head = responder.timeout("head", partial=b"GET / HTTP/1.1\r\nHost: x\r\n", conn=CONN)
    assert head is not None and head.data.endswith(b"at 127.0.0.1") and head.close
    body = responder.timeout("body", partial=b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab", conn=CONN)
    assert body is not None and body.data.endswith(b"at x")


def test_request_head_echoes_the_request_as_received(root: Path) -> None:
    """{{request_head}} is the head byte for byte (Apache's TRACE echo)."""
    payload = b"TRACE / HTTP/1.1\r\nHost: a\r\nX-Odd:  spaced \r\n\r\n"
    assert _answer(persona.load("base", root=root), payload).endswith(b"\r\n\r\n" + payload)


@pytest.mark.parametrize("version", ["", " 1.0", "1.0\r\nSet-Cookie: x=1", "1.0\x00", "x" * 65])
def test_unusable_versions_are_refused(root: Path, version: str) -> None:
    """Versions that would break or inject header lines are refused with the reason."""
    with pytest.raises(persona.PersonaError, match="printable ASCII"):
        persona.load("base", root=root, version=version)


def test_unknown_persona_names_the_known_ones(root: Path) -> None:
    with pytest.raises(persona.PersonaError, match=r"unknown persona 'nope'.*base"):
        persona.load("nope", root=root)


def test_apache_listing_shows_the_site_files_time() -> None:
    """Apache's /backup/ listing carries the site's file time (the real server lists the served files' mtime)."""
    p = persona.load("apache-debian")
    data = _answer(p, b"GET /backup/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert f'<td align="right">{listing_mtime(p.site_mtime)}  </td>'.encode() in data
