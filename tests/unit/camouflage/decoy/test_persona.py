"""Personas as data: loading, situation keys, rendering, recording and the fidelity compare."""

from __future__ import annotations

import gzip
import zlib

import pytest

from feint.camouflage.decoy import fidelity, persona, probes, recorder
from feint.camouflage.decoy.contract import Connection
from feint.camouflage.decoy.exchange import Answer
from feint.camouflage.decoy.responder import PersonaResponder, gzip_bytes
from feint.camouflage.decoy.situation import SiteIndex

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=8080, requests_served=0)


def _answer(name: str, payload: bytes) -> bytes:
    p = persona.load(name)
    request = recorder.requests_of(payload, p)[0]
    return PersonaResponder(p).respond(request, CONN).data


def test_every_shipped_persona_loads_with_a_default_rule() -> None:
    """Each persona directory loads and has the catch-all rule."""
    names = persona.available()
    assert {"nginx-debian", "apache-debian"} <= set(names)
    for name in names:
        assert "" in persona.load(name).rules


def test_corpus_has_at_least_100_probes_with_unique_names() -> None:
    """The probe corpus holds >= 100 raw requests, nmap's GetRequest among them."""
    corpus = probes.load()
    assert len(corpus) >= 100
    assert len({p.name for p in corpus}) == len(corpus)
    get = next(p for p in corpus if p.name == "nmap-GetRequest")
    assert get.render(hostport="h:1") == b"GET / HTTP/1.0\r\n\r\n"


def test_repeat_expands_nested_blocks() -> None:
    """{{rep N}} blocks expand, one level of nesting included."""
    probe = probes.Probe(name="x", source="t", template="{{rep 2}}a{{rep 3}}b{{/rep}};{{/rep}}")
    assert probe.render(hostport="h") == b"abbb;abbb;"


def test_nginx_404_page_is_byte_exact() -> None:
    """The nginx 404 carries nginx's header order and page with the version in it."""
    data = _answer("nginx-debian", b"GET /nope HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 404 Not Found"
    assert [line.split(b":")[0] for line in lines[1:]] == [
        b"Server",
        b"Date",
        b"Content-Type",
        b"Content-Length",
        b"Connection",
    ]
    assert body == (
        b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n"
        b"<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n"
    )


def test_version_override_rewrites_server_and_signature() -> None:
    """--version changes the Server header and the page signature together."""
    p = persona.load("apache-debian", version="2.4.99 (Ubuntu)")
    request = recorder.requests_of(b"GET /nope HTTP/1.1\r\nHost: example.org\r\n\r\n", p)[0]
    data = PersonaResponder(p).respond(request, CONN).data
    assert b"Server: Apache/2.4.99 (Ubuntu)\r\n" in data
    assert b"<address>Apache/2.4.99 (Ubuntu) Server at example.org Port 8080</address>" in data


def test_apache_keepalive_max_counts_down() -> None:
    """Apache's Keep-Alive max= falls by one per request served on the connection."""
    p = persona.load("apache-debian")
    request = recorder.requests_of(b"GET /robots.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", p)[0]
    later = Connection(peer_host="h", peer_port=1, local_host="127.0.0.1", local_port=80, requests_served=3)
    assert b"Keep-Alive: timeout=5, max=97\r\n" in PersonaResponder(p).respond(request, later).data


def test_honeytokens_are_filled_per_session() -> None:
    """{{token:KIND}} in a site file is replaced by the session's filler."""
    p = persona.load("nginx-debian")
    responder = PersonaResponder(p, fill=lambda kind: f"<{kind}>")
    request = recorder.requests_of(b"GET /.env HTTP/1.1\r\nHost: x\r\n\r\n", p)[0]
    data = responder.respond(request, CONN).data
    assert b"AWS_ACCESS_KEY_ID=<aws_access_key>\n" in data
    assert b"{{token:" not in data


def test_nginx_gzip_matches_zlib_with_shrunk_window() -> None:
    """The gzip body decompresses to the input and carries nginx's XFL byte."""
    data = b"<html>" + b"x" * 5000 + b"</html>"
    out = gzip_bytes(data, level=1, window_bits=15, mem_level=8, xfl=4, shrink=True)
    assert out[8] == 4
    assert gzip.decompress(out) == data
    assert zlib.decompress(out, 16 + zlib.MAX_WBITS) == data


def test_site_index_resolves_kinds() -> None:
    """Paths resolve to files, directories, directories without slash, and escapes above the root."""
    site = SiteIndex(files=frozenset({"/admin/index.html", "/a.txt", "/.env"}), index_names=("index.html",))
    assert site.resolve(b"/admin/").kind == "dir"
    assert site.resolve(b"/admin").kind == "dir-noslash"
    assert site.resolve(b"/a.txt").kind == "file.txt"
    assert site.resolve(b"/.env").kind == "dotfile"
    assert site.resolve(b"/../../etc/passwd").kind == "outside"
    assert site.resolve(b"/nope/").kind == "missing-dir"


def test_split_answer_cuts_pipelined_responses_and_interim() -> None:
    """A 100 Continue becomes the interim of the next response; pipelined answers split by length."""
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 X\r\nContent-Length: 1\r\n\r\nn"
    raws = recorder.split_answer(data, heads=[False, False])
    assert [r.status for r in raws] == ["HTTP/1.1 200 OK", "HTTP/1.1 404 X"]
    assert raws[0].interim == "HTTP/1.1 100 Continue\r\n\r\n"
    assert raws[1].body == b"n"


def test_learn_rules_keeps_the_majority_and_prunes_redundant_keys() -> None:
    """A lone outlier does not erase the rule its key's other probes agree on."""
    p = persona.load("nginx-debian")
    index = p.site_index()
    from feint.camouflage.decoy.situation import situation

    reqs = [recorder.requests_of(f"GET /x{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode(), p)[0] for i in range(3)]
    sits = [situation(r, index) for r in reqs]
    rules = recorder.learn_rules(
        [(sits[0], "r404", "by-request"), (sits[1], "r404", "by-request"), (sits[2], "r200", "by-request")]
    )
    assert rules[""]["response"] == "r404"
    assert all(rule["response"] == "r404" for rule in rules.values())


def test_fidelity_normalises_only_volatile_values() -> None:
    """Date/ETag/Last-Modified values and the port are normalised; anything else differs."""
    real = Answer(probe="p", data=b'HTTP/1.1 200 OK\r\nDate: a\r\nETag: "1"\r\n\r\nport 1111', closed=True)
    same = Answer(probe="p", data=b'HTTP/1.1 200 OK\r\nDate: b\r\nETag: "2"\r\n\r\nport 2222', closed=True)
    other = Answer(probe="p", data=b'HTTP/1.1 200 OK\r\ndate: b\r\nETag: "2"\r\n\r\nport 2222', closed=True)
    assert fidelity.compare(real, same, real_port=1111, decoy_port=2222).same
    assert not fidelity.compare(real, other, real_port=1111, decoy_port=2222).same
    assert not fidelity.compare(
        real, Answer(probe="p", data=same.data, closed=False), real_port=1111, decoy_port=2222
    ).same
