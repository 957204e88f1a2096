"""The express-4 persona and the decoy features it needs (measured on Express 4.22.3, Node 20.20)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from feint.camouflage.decoy import persona, recorder
from feint.camouflage.decoy.contract import Connection, Problem
from feint.camouflage.decoy.exchange import Answer
from feint.camouflage.decoy.http import RequestParser
from feint.camouflage.decoy.probes import Probe
from feint.camouflage.decoy.responder import PersonaResponder, encode_path
from feint.camouflage.decoy.situation import SiteIndex

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=3000, requests_served=0)
FINALHANDLER_404 = (
    b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n</head>\n'
    b"<body>\n<pre>Cannot %s %s</pre>\n</body>\n</html>\n"
)


def _answer(payload: bytes) -> tuple[bytes, bool]:
    p = persona.load("express-4")
    request = recorder.requests_of(payload, p)[0]
    reply = PersonaResponder(p).respond(request, CONN)
    return reply.data, reply.close


@pytest.mark.parametrize(
    ("raw", "printed"),
    [
        (b"/x", "/x"),
        (b"/%zz", "/%25zz"),  # a % without two hex digits is encoded (measured)
        (b"/%41", "/%41"),
        (b"/<script>alert(1)</script>", "/%3Cscript%3Ealert(1)%3C/script%3E"),  # measured
        (b'/a b"`{}', "/a%20b%22%60%7B%7D"),
        (b"/#$|^[]\\", "/#$|^[]\\"),
        (b"/'&", "/&#39;&amp;"),
        (b"/\xe9", "/%C3%A9"),  # Node's Latin-1 character, encoded as UTF-8 by encodeURI
    ],
)
def test_encode_path_is_encodeurl_then_escape_html(raw: bytes, printed: str) -> None:
    """Paths print as finalhandler prints them (encodeurl 2.0, escape-html)."""
    assert encode_path(raw) == printed


def test_finalhandler_404_is_byte_exact() -> None:
    """A missing path gets finalhandler's page, X-Powered-By and Node's Keep-Alive: timeout=5."""
    data, close = _answer(b"GET /nope%zz HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 404 Not Found"
    assert lines[1:5] == [
        b"X-Powered-By: Express",
        b"Content-Security-Policy: default-src 'none'",
        b"X-Content-Type-Options: nosniff",
        b"Content-Type: text/html; charset=utf-8",
    ]
    assert lines[-2:] == [b"Connection: keep-alive", b"Keep-Alive: timeout=5"]
    assert body == FINALHANDLER_404 % (b"GET", b"/nope%25zz")
    assert f"Content-Length: {len(body)}".encode() in lines
    assert not close


def test_head_of_a_missing_page_counts_the_head_message() -> None:
    """HEAD gets the Content-Length of "Cannot HEAD /x" and no body."""
    data, _ = _answer(b"HEAD /nope HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b""
    assert f"Content-Length: {len(FINALHANDLER_404 % (b'HEAD', b'/nope'))}".encode() in head.split(b"\r\n")


def test_dot_directory_files_are_served_and_dotfiles_hidden() -> None:
    """send 0.19's default: /.git/config is served, /.env and /.git answer 404."""
    config, _ = _answer(b"GET /.git/config HTTP/1.1\r\nHost: a\r\n\r\n")
    env, _ = _answer(b"GET /.env HTTP/1.1\r\nHost: a\r\n\r\n")
    git, _ = _answer(b"GET /.git HTTP/1.1\r\nHost: a\r\n\r\n")
    assert config.startswith(b"HTTP/1.1 200 OK\r\n") and b"[core]" in config
    assert env.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"Cannot GET /.env" in env
    assert git.startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_site_index_last_segment_dotfiles() -> None:
    """Only a dot last segment is a dotfile under last-segment; any dot segment by default."""
    files = frozenset({"/.git/config", "/.env", "/a/index.html"})
    last = SiteIndex(files=files, index_names=("index.html",), dot_last_segment=True)
    anywhere = SiteIndex(files=files, index_names=("index.html",))
    assert last.resolve(b"/.git/config").kind == "file"
    assert last.resolve(b"/.env").kind == "dotfile"
    assert last.resolve(b"/.git").kind == "dotfile"
    assert last.resolve(b"/.git/").kind == "dir-noindex"
    assert anywhere.resolve(b"/.git/config").kind == "dotfile"
    assert anywhere.resolve(b"/.git").kind == "dir-noslash"


def test_http09_line_reads_headers_when_the_persona_says_so() -> None:
    """Node waits for the headers after `GET /x` and answers with a status line, then closes."""
    limits = persona.load("express-4").limits
    parser = RequestParser(limits)
    parser.feed(b"GET /x\r\n")
    assert parser.next_request() is None
    parser.feed(b"Host: a\r\n\r\n")
    request = parser.next_request()
    assert request is not None
    assert request.version is None and Problem.HTTP09 in request.problems
    assert request.headers == ((b"Host", b"a"),)
    data, close = _answer(b"GET /x\r\nHost: a\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"\r\nConnection: close\r\n\r\n" in data
    assert close
    nginx_like = RequestParser(replace(limits, http09_reads_headers=False))
    nginx_like.feed(b"GET /x\r\n")
    assert nginx_like.next_request() is not None  # answered at once


def test_connect_is_a_silent_close() -> None:
    """Node with no 'connect' listener hangs up on CONNECT without a byte."""
    assert _answer(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n") == (b"", True)


def test_parser_errors_are_nodes_prewritten_400() -> None:
    """A lowercase method gets Node's bare 400 with Connection: close."""
    assert _answer(b"get / HTTP/1.1\r\nHost: a\r\n\r\n") == (
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n",
        True,
    )


def test_recorder_learns_a_silent_close_and_the_encoded_path_page(tmp_path: Path) -> None:
    """An empty answer that hangs up is a silent close; {{path}} pages merge into {{path_encoded}} ones."""
    base = persona.load("express-4")
    abstractor = recorder.Abstractor(base, server="", host="127.0.0.1", port=3000)
    page = FINALHANDLER_404.decode()
    probes = [
        Probe(name="connect", source="t", template="CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
        Probe(name="plain", source="t", template="GET /plain HTTP/1.1\r\nHost: a\r\n\r\n"),
        Probe(name="odd", source="t", template="GET /o<d HTTP/1.1\r\nHost: a\r\n\r\n"),
    ]

    def answer(name: str, path: str) -> Answer:
        body = (page % ("GET", path)).encode()
        head = f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        return Answer(probe=name, data=head.encode() + body, closed=False)

    answers = {
        "connect": Answer(probe="connect", data=b"", closed=True),
        "plain": answer("plain", "/plain"),
        "odd": answer("odd", "/o%3Cd"),
    }
    observations = recorder.observe(probes, answers, base, abstractor)
    responses, rules, _ = recorder.build(observations, abstractor)
    silent = responses[rules["problems=none|method=CONNECT"]["response"]]
    assert silent["status"] is None and silent["body"] == {"kind": "none"}
    assert rules["problems=none|method=CONNECT"]["close"] == "always"
    assert list(abstractor.pages) == [page % ("{{method}}", "{{path_encoded}}")]
    timeouts = {"head": "timeout-408", "body": None, "idle": None}
    doc = {**yaml.safe_load((base.directory / persona.PERSONA_FILE).read_text()), "timeouts": timeouts}
    path = recorder.write(
        tmp_path / "express-4", base=doc, responses=responses, rules=rules, abstractor=abstractor, source={}
    )
    written = yaml.safe_load(path.read_text())
    assert written["responses"]["timeout-408"]["status"] == "HTTP/1.1 408 Request Timeout"


def test_site_command_writes_the_docroot_record_needs(tmp_path: Path) -> None:
    """`feint camouflage site` writes every file, tokens filled, with the persona's mtime."""
    from typer.testing import CliRunner

    from feint.camouflage.cli import camouflage_app

    p = persona.load("express-4")
    result = CliRunner().invoke(camouflage_app, ["site", "--persona", "express-4", "--out", str(tmp_path / "www")])
    assert result.exit_code == 0, result.output
    config = tmp_path / "www" / ".git" / "config"
    assert b"{{token:" not in config.read_bytes() and config.read_bytes().startswith(b"[core]")
    assert config.stat().st_mtime == p.site_mtime
    assert sum(1 for f in (tmp_path / "www").rglob("*") if f.is_file()) == len(p.site)
    missing = CliRunner().invoke(camouflage_app, ["site", "--persona", "nope", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "unknown persona" in missing.output
