"""The documented field mapping, field by field, in all three engines."""

from __future__ import annotations

import pytest

from feint.shadow.rules.fields import FIELD_MAP, mapping_of

from .helpers import matches, record

pytestmark = pytest.mark.unit

BASE = {"cs_method": "GET", "cs_version": "HTTP/1.1"}


@pytest.mark.parametrize(
    ("field", "where"),
    [
        ("c-ip", "c_ip"),
        ("src_ip", "c_ip"),
        ("cs-method", "cs_method"),
        ("cs-uri-stem", "cs_uri_stem"),
        ("c-uri-stem", "cs_uri_stem"),
        ("c-useragent", "cs_user_agent"),
        ("cs-user-agent", "cs_user_agent"),
        ("cs(User-Agent)", "cs_user_agent"),
        ("cs-referer", "cs_referer"),
        ("cs-referrer", "cs_referer"),
        ("cs-host", "cs_host"),
        ("r-dns", "cs_host"),
        ("cs-version", "cs_version"),
    ],
)
def test_plain_fields_read_their_column(field: str, where: str) -> None:
    """A value in the mapped column matches; the same value in another column does not."""
    other = "cs_referer" if where != "cs_referer" else "cs_host"
    hit = record(**{**BASE, where: "xx-needle-xx"})
    miss = record(**{**BASE, other: "xx-needle-xx"})
    assert matches(f"sel:\n  {field}|contains: needle\ncondition: sel", hit, miss) == [True, False]


def test_query_fields_match_query_or_target() -> None:
    """cs-uri-query/c-uri-query: startswith on the query alone, endswith/contains on the target."""
    with_query = record(cs_method="GET", cs_uri_stem="/mgmt/tm/util/bash", cs_uri_query="cmd=id")
    no_query = record(cs_method="GET", cs_uri_stem="/mgmt/tm/util/bash")
    for field in ("cs-uri-query", "c-uri-query"):
        assert matches(f"sel:\n  {field}|startswith: cmd=\ncondition: sel", with_query, no_query) == [True, False]
        assert matches(f"sel:\n  {field}|endswith: /util/bash\ncondition: sel", with_query, no_query) == [False, True]
        assert matches(f"sel:\n  {field}|contains: 'bash?cmd'\ncondition: sel", with_query, no_query) == [
            True,
            False,
        ]
        assert matches(f"sel:\n  {field}: null\ncondition: sel", with_query, no_query) == [False, True]
        assert matches(f"sel:\n  {field}: '/mgmt/tm/util/bash'\ncondition: sel", with_query, no_query) == [
            False,
            True,
        ]


def test_uri_fields_are_the_whole_target() -> None:
    """cs-uri/c-uri/cs-url: stem and query joined by '?'; absent without a stem."""
    target = record(cs_uri_stem="/a.php", cs_uri_query="x=1")
    stem_only = record(cs_uri_stem="/a.php")
    query_only = record(cs_uri_query="x=1")
    for field in ("cs-uri", "c-uri", "cs-url"):
        assert matches(f"sel:\n  {field}: '/a.php?x=1'\ncondition: sel", target, stem_only, query_only) == [
            True,
            False,
            False,
        ]
        assert matches(f"sel:\n  {field}: null\ncondition: sel", target, stem_only, query_only) == [False, False, True]


@pytest.mark.parametrize(
    ("stem", "extension"),
    [
        ("/d/setup.exe", "exe"),
        ("/d/SETUP.EXE", "exe"),
        ("/a.b/file", None),
        ("/file.", None),
        ("/a/b.tar.gz", "gz"),
        ("/", None),
        ("/x.php/", None),
    ],
)
def test_extension_is_the_last_segments_suffix(stem: str, extension: str | None) -> None:
    """c-uri-extension: text after the last '.' of the last path segment; missing otherwise."""
    request = record(cs_uri_stem=stem, cs_uri_query="q=1.exe")
    assert matches("sel:\n  c-uri-extension: null\ncondition: sel", request) == [extension is None]
    if extension is not None:
        assert matches(f"sel:\n  c-uri-extension: {extension}\ncondition: sel", request) == [True]


def test_status_as_text_and_number() -> None:
    """sc-status matches its decimal text and compares numerically; missing fails both."""
    ok, error, unknown = record(sc_status=200), record(sc_status=503), record()
    assert matches("sel:\n  sc-status: 200\ncondition: sel", ok, error, unknown) == [True, False, False]
    assert matches("sel:\n  sc-status|startswith: '5'\ncondition: sel", ok, error, unknown) == [False, True, False]
    assert matches("sel:\n  sc-status|gte: 500\ncondition: sel", ok, error, unknown) == [False, True, False]
    assert matches("sel:\n  sc-status|lt: 500\ncondition: sel", ok, error, unknown) == [True, False, False]
    assert matches("sel:\n  sc-status|lte: 200\ncondition: sel", ok, error, unknown) == [True, False, False]
    assert matches("sel:\n  sc-status|gt: 200\ncondition: sel", ok, error, unknown) == [False, True, False]


@pytest.mark.parametrize("where", ["request_line", "cs_user_agent", "cs_referer", "cs_host"])
def test_keywords_search_line_agent_referer_host(where: str) -> None:
    """A keyword matches in each keyword source, and not in the client address or version."""
    hit = record(**{where: "zz EVIL zz"})
    miss = record(c_ip="evil", cs_version="evil", request_line="GET / HTTP/1.1")
    assert matches("keywords:\n  - evil\ncondition: keywords", hit, miss) == [True, False]


def test_unrecorded_fields_never_hold_values() -> None:
    """Fields Feint does not record fail value tests and pass null tests on every request."""
    request = record(cs_method="GET", cs_uri_stem="/", c_ip="10.0.0.1")
    assert matches("sel:\n  cs-username: '*'\ncondition: sel", request) == [False]
    assert matches("sel:\n  cs-cookie: null\ncondition: sel", request) == [True]
    assert matches(
        "sel:\n  cs-method: GET\nfilter:\n  dst_ip|cidr: 10.0.0.0/8\ncondition: sel and not filter", request
    ) == [True]


def test_mapping_lookup_is_case_insensitive() -> None:
    """Field names are matched case-insensitively; unknown names have no mapping."""
    assert mapping_of("CS-URI-QUERY") == FIELD_MAP["cs-uri-query"]
    assert mapping_of("CommandLine") is None
