"""Conditional requests (If-None-Match, If-Modified-Since): the situation tells them apart, and each
recorded persona answers them as its real server did (304s measured from Debian nginx 1.22.1,
Debian apache2 2.4.71 and Express 4.22.3 with the probes cond-* of probes.yaml)."""

from __future__ import annotations

import re
import shutil
from email.utils import formatdate
from pathlib import Path

import pytest
import yaml

from feint.camouflage.decoy import persona, recorder
from feint.camouflage.decoy.contract import Connection
from feint.camouflage.decoy.probes import Probe
from feint.camouflage.decoy.responder import PersonaResponder, etag_value, site_index
from feint.camouflage.decoy.situation import situation

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=8080, requests_served=0)
PAST = "Thu, 01 Jan 1998 00:00:00 GMT"
FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"


def _request(p: persona.Persona, headers: str, *, method: str = "GET", path: str = "/robots.txt") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: h\r\n{headers}Connection: close\r\n\r\n".encode("latin-1")


def _extras(p: persona.Persona, payload: bytes) -> str:
    request = recorder.requests_of(payload, p)[0]
    return situation(request, site_index(p, p.rendered_site(lambda kind: kind))).fields[5]


def _status(p: persona.Persona, payload: bytes) -> bytes:
    request = recorder.requests_of(payload, p)[0]
    return PersonaResponder(p).respond(request, CONN).data.split(b"\r\n", 1)[0]


def _imf(epoch: float) -> str:
    return formatdate(int(epoch), usegmt=True)


def test_validators_are_classified_against_the_file() -> None:
    p = persona.load("nginx-debian")
    lm = _imf(p.site_mtime)
    assert _extras(p, _request(p, "")) == "none"
    assert _extras(p, _request(p, "If-None-Match: *\r\n")) == "inm-star"
    assert _extras(p, _request(p, 'If-None-Match: "nomatch"\r\n')) == "inm"
    assert _extras(p, _request(p, f"If-Modified-Since: {lm}\r\n")) == "ims-equal"
    assert _extras(p, _request(p, f"If-Modified-Since: {_imf(p.site_mtime + 1)}\r\n")) == "ims-newer"
    assert _extras(p, _request(p, f"If-Modified-Since: {PAST}\r\n")) == "ims-older"
    assert _extras(p, _request(p, f"If-Modified-Since: {FUTURE}\r\n")) == "ims-future"
    assert _extras(p, _request(p, "If-Modified-Since: yesterday\r\n")) == "ims-bad"
    assert _extras(p, _request(p, f"If-Modified-Since: {lm}\r\n", path="/nope")) == "ims"
    assert _extras(p, _request(p, f"Accept-Encoding: gzip\r\nIf-Modified-Since: {lm}\r\n")) == "gzip+ims-equal"


def test_if_none_match_compares_the_files_etag_weakly() -> None:
    """The ETag as the persona sends it for the file (size after the tokens are filled), W/ or not."""
    p = persona.load("express-4")
    site = p.rendered_site(lambda kind: kind)
    etag = etag_value(p, len(site["/robots.txt"]))
    assert _extras(p, _request(p, f'If-None-Match: "x", W/{etag}\r\n')) == "inm-match"
    assert _extras(p, _request(p, f"If-None-Match: {etag}\r\n")) == "inm-match"
    assert _extras(p, _request(p, f'If-None-Match: "{etag}x"\r\n')) == "inm"


@pytest.mark.parametrize(
    ("name", "header", "status"),
    [
        # nginx: if_modified_since exact (its default) and If-None-Match "*".
        ("nginx-debian", "If-None-Match: *\r\n", b"304"),
        ("nginx-debian", "If-Modified-Since: {lm}\r\n", b"304"),
        ("nginx-debian", "If-Modified-Since: {next}\r\n", b"200"),
        ("nginx-debian", f"If-Modified-Since: {FUTURE}\r\n", b"200"),
        # Apache: a date from the file's time up to now.
        ("apache-debian", "If-Modified-Since: {next}\r\n", b"304"),
        ("apache-debian", f"If-Modified-Since: {FUTURE}\r\n", b"200"),
        # Express (fresh): any date from the file's time on.
        ("express-4", f"If-Modified-Since: {FUTURE}\r\n", b"304"),
        ("express-4", 'If-None-Match: "nomatch"\r\nIf-Modified-Since: {lm}\r\n', b"200"),
        # Everyone: an old date is a 200.
        ("nginx-debian", f"If-Modified-Since: {PAST}\r\n", b"200"),
        ("apache-debian", f"If-Modified-Since: {PAST}\r\n", b"200"),
        ("express-4", f"If-Modified-Since: {PAST}\r\n", b"200"),
    ],
)
def test_personas_answer_validators_as_measured(name: str, header: str, status: bytes) -> None:
    p = persona.load(name)
    filled = header.format(lm=_imf(p.site_mtime), next=_imf(p.site_mtime + 1))
    assert _status(p, _request(p, filled)).split(b" ")[1] == status


def test_a_304_carries_the_files_validators_and_no_body() -> None:
    p = persona.load("nginx-debian")
    request = recorder.requests_of(_request(p, f"If-Modified-Since: {_imf(p.site_mtime)}\r\n"), p)[0]
    data = PersonaResponder(p).respond(request, CONN).data
    assert data.startswith(b"HTTP/1.1 304 Not Modified\r\n") and data.endswith(b"\r\n\r\n")
    assert f"Last-Modified: {_imf(p.site_mtime)}\r\n".encode() in data
    assert re.search(rb'\r\nETag: "[0-9a-f]+-[0-9a-f]+"\r\n', data)
    assert b"Content-Length" not in data


def test_requests_without_validators_answer_as_before() -> None:
    """The coarse rules are learned from requests without validators only: a 304 never leaks."""
    for name in ("nginx-debian", "apache-debian", "express-4"):
        p = persona.load(name)
        for method in ("GET", "HEAD"):
            assert _status(p, _request(p, "", method=method)) == b"HTTP/1.1 200 OK"
        http10 = b"GET /robots.txt HTTP/1.0\r\n\r\n"
        assert _status(p, http10) == b"HTTP/1.1 200 OK"


def test_conditional_requests_bypass_the_answer_cache() -> None:
    """Their answer depends on the clock (a future date becomes a past one): never cached."""
    p = persona.load("apache-debian")
    responder = PersonaResponder(p)
    request = recorder.requests_of(_request(p, f"If-Modified-Since: {_imf(p.site_mtime)}\r\n"), p)[0]
    for _ in range(2):
        assert responder.respond(request, CONN).data.startswith(b"HTTP/1.1 304 ")
    assert responder.cache_hits == responder.cache_misses == 0


def test_conditional_observations_teach_only_their_whole_key() -> None:
    p = persona.load("nginx-debian")
    index = site_index(p, p.rendered_site(lambda kind: kind))
    plain = situation(recorder.requests_of(_request(p, ""), p)[0], index)
    cond = situation(recorder.requests_of(_request(p, "If-None-Match: *\r\n"), p)[0], index)
    rules = recorder.learn_rules([(plain, "r200", "by-request"), (cond, "r304", "by-request")])
    assert {key for key, rule in rules.items() if rule["response"] == "r304"} == {cond.lookup_keys()[0]}
    assert rules[""]["response"] == "r200"


def test_probe_placeholders_quote_the_files_last_modified() -> None:
    probe = Probe("p", "test", "GET / HTTP/1.1\r\nA: {{last_modified}}\r\nB: {{last_modified_next}}\r\n\r\n")
    sent = probe.render(hostport="h:1", mtime=1_700_000_000.75)
    assert b"A: Tue, 14 Nov 2023 22:13:20 GMT\r\nB: Tue, 14 Nov 2023 22:13:21 GMT\r\n" in sent


def test_rerecording_keeps_the_page_of_a_hand_written_timeout_answer(tmp_path: Path) -> None:
    """apache-debian's r408 (measured by hand) names pages/408.html: a re-recording keeps both."""
    base = persona.load("apache-debian")
    out = tmp_path / "apache-debian"
    shutil.copytree(base.directory / "pages", out / "pages")
    (out / "pages" / "stale.html").write_text("recorded last time, not now")
    doc = yaml.safe_load((base.directory / persona.PERSONA_FILE).read_text())
    abstractor = recorder.Abstractor(base, server="Apache", host="127.0.0.1", port=80)
    path = recorder.write(out, base=doc, responses={}, rules={"": {}}, abstractor=abstractor, source={})
    assert yaml.safe_load(path.read_text())["responses"]["r408"]["body"]["page"] == "pages/408.html"
    assert (out / "pages" / "408.html").read_bytes() == (base.directory / "pages" / "408.html").read_bytes()
    assert not (out / "pages" / "stale.html").exists()
