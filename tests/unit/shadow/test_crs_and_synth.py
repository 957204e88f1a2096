"""CRS regression files to records, and the synthetic traffic generators."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from feint.shadow import synth
from feint.shadow.crs import load_crs
from feint.shadow.rules import _re2, ir
from feint.shadow.rules.matcher import compile_matcher
from feint.shadow.rules.model import rule_set

from .helpers import rule

pytestmark = pytest.mark.unit

CRS = """
---
meta: {author: test}
rule_id: 942100
tests:
  - test_id: 1
    stages:
      - input:
          method: POST
          uri: "/post?id=1%27%20or%201=1"
          headers: {Host: localhost, User-Agent: "OWASP CRS test agent", Referer: "http://x/"}
          version: HTTP/1.1
        output:
          log: {expect_ids: [942100]}
  - test_id: 2
    stages:
      - input:
          encoded_request: "ENCODED"
        output:
          log: {no_expect_ids: [942100]}
      - input: "not a mapping"
  - "not a test"
"""


def test_crs_requests(tmp_path: Path) -> None:
    """Headers, targets and encoded requests become records; only expect_ids marks an attack."""
    raw = b"GET /encoded?a=b HTTP/1.0\r\nHost: h\r\nUser-Agent: ua\r\n\r\nbody"
    (tmp_path / "942100.yaml").write_text(CRS.replace("ENCODED", base64.b64encode(raw).decode()))
    (tmp_path / "broken.yaml").write_text("- just a list\n")
    requests = list(load_crs(tmp_path))
    assert [(r.attack, r.rule_id, r.test_id) for r in requests] == [(True, "942100", "1"), (False, "942100", "2")]
    first, second = (r.record for r in requests)
    assert (first.cs_method, first.cs_uri_stem, first.cs_uri_query) == ("POST", "/post", "id=1%27%20or%201=1")
    assert (first.cs_host, first.cs_user_agent, first.cs_referer) == ("localhost", "OWASP CRS test agent", "http://x/")
    assert (second.cs_method, second.cs_uri_stem, second.cs_version, second.cs_host) == (
        "GET",
        "/encoded",
        "HTTP/1.0",
        "h",
    )
    assert second.request_line == "GET /encoded?a=b HTTP/1.0"


def test_generators_are_seeded_and_well_formed() -> None:
    """The same seed gives the same requests; benign ones have every field a browser sends."""
    first = [synth.benign(random.Random(4), str(i)) for i in range(5)]
    assert first == [synth.benign(random.Random(4), str(i)) for i in range(5)]
    rng = random.Random(4)
    for index in range(200):
        request = synth.benign(rng, str(index))
        assert request.cs_method and request.cs_uri_stem and request.request_line and request.sc_status
        synth.hostile(rng, str(index))


def test_regex_sampling() -> None:
    """Samples match their pattern; unsupported constructs give None."""
    rng = random.Random(2)
    for pattern in (r"(?-s)\?d=[0-9]{1,3}\.[a-z]+", r"(?i-s)(a|bc)\s\w\d+x*", r"(?s)^x.y$", r"(?-s)[a-c]{2}"):
        sample = synth.sample_regex(rng, pattern)
        assert sample is not None and _re2.Regex(pattern).search(sample), pattern
    assert synth.sample_regex(rng, r"(?-s)[^a]") is None
    assert synth.sample_regex(rng, r"(?-s)(?<=a)b") is None
    assert synth.sample_regex(rng, r"(?-s)\bword") is not None
    assert synth.sample_regex(rng, "((") is None


def test_witnesses_cover_every_kind_of_test() -> None:
    """Witnesses satisfy eq, prefix, suffix, glob, regex, null, exists and numeric tests."""
    detection = """
    sel:
      cs-method: PROPFIND
      cs-uri-stem|startswith: /dav
      cs-uri-query|endswith: .bak
      c-useragent: 'x?y*'
      cs-host|re: '^h[0-9]+$'
      cs-referer: null
      sc-status|lt: 300
      c-uri-extension: php
    filter:
      cs-version: HTTP/2.0
    condition: sel and not filter
    """
    compiled = rule(detection)
    matcher = compile_matcher(rule_set([compiled]))
    rng = random.Random(8)
    built = [synth.witness(compiled.expr, rng, str(i)) for i in range(30)]
    assert sum(matcher.hits(b.record)[0] for b in built) >= 25
    misses = [synth.near_miss(b, random.Random(i)) for i, b in enumerate(built)]
    assert sum(matcher.hits(m)[0] for m in misses) <= 5
    nothing = synth.witness(ir.TRUE, rng, "t")
    assert synth.near_miss(nothing, rng).id == "t~"
