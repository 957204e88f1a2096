"""How Sigma ``webserver`` and ``proxy`` field names map onto Feint's request record.

Both engines read the record through *sources*: the record's columns plus two derived values.
``uri`` is the request target, ``cs_uri_stem`` + ``?`` + ``cs_uri_query`` (the stem alone when
there is no query); ``uri_extension`` is the text after the last ``.`` of the stem's last path
segment (missing when that segment has no ``.``). ``sc_status`` is matched as its decimal text,
and numerically by the ``lt``/``lte``/``gt``/``gte`` modifiers.

=====================================  ===============  =============  ==============================
Sigma field(s)                          values from      null check on  why
=====================================  ===============  =============  ==============================
c-ip, src_ip                            c_ip             c_ip           client address
cs-method                               cs_method        cs_method
cs-uri-stem, c-uri-stem                 cs_uri_stem      cs_uri_stem    path only
cs-uri-query, c-uri-query               cs_uri_query     cs_uri_query   SigmaHQ uses these fields for
                                        or uri                          the query (``startswith:
                                                                        'cmd='``) and for paths
                                                                        (``endswith: '/mgmt/tm/util/
                                                                        bash'``), so a value matches
                                                                        when it matches the query or
                                                                        the whole target; ``null``
                                                                        means "no query string"
cs-uri, c-uri, cs-url                   uri              uri            the request target as sent
                                                                        (absolute-form targets keep
                                                                        their scheme and host)
c-uri-extension                         uri_extension    uri_extension  ``exe`` for ``/a/b.exe``
c-useragent, cs-user-agent,             cs_user_agent    cs_user_agent
cs(user-agent)
cs-referer, cs-referrer, cs(referer)    cs_referer       cs_referer
cs-host, r-dns, cs(host)                cs_host          cs_host        the proxy taxonomy's
                                                                        requested host name
cs-version                              cs_version       cs_version     ``HTTP/1.1``
sc-status                               sc_status        sc_status      response: post-response rule
dst_ip, s-ip, s-port, cs-username,      (never present)  always null    Feint does not record them;
cs-cookie, cs-content-type, cs-bytes,                                   a value test on them is
sc-bytes, time-taken, sc-substatus,                                     false, ``null`` is true
sc-win32-status, s-sitename,
s-computername, c-uri-scheme,
cs-mime-type, dst_port, src_port
=====================================  ===============  =============  ==============================

``null`` and ``''`` test the "null check" column (missing or empty), ``'*'`` its opposite.
Keyword (value-only) searches match when the value occurs in any of the request line, user
agent, referer or host (``KEYWORD_SOURCES``). Field names are matched case-insensitively; any
other field name is an unsupported feature, so a typo is reported instead of silently never
matching. A rule that names a response field (``RESPONSE_FIELDS``) is *post-response*: the gateway
evaluates it once the upstream has answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Source = Literal[
    "c_ip",
    "cs_method",
    "cs_uri_stem",
    "cs_uri_query",
    "uri",
    "uri_extension",
    "cs_user_agent",
    "cs_referer",
    "cs_host",
    "cs_version",
    "sc_status",
    "request_line",
]

# Index of each source in the per-request value arrays of the matcher; SQL uses the same names.
SOURCES: Final[tuple[Source, ...]] = (
    "c_ip",
    "cs_method",
    "cs_uri_stem",
    "cs_uri_query",
    "uri",
    "uri_extension",
    "cs_user_agent",
    "cs_referer",
    "cs_host",
    "cs_version",
    "sc_status",
    "request_line",
)

KEYWORD_SOURCES: Final[tuple[Source, ...]] = (
    "request_line",
    "cs_user_agent",
    "cs_referer",
    "cs_host",
)

# Every source whose text can satisfy a value test, except those contained in another one
# (stem, query and extension are substrings of ``uri``). The prefilters of both engines search
# these, folded and joined by newlines: a literal a rule needs in any source is found here.
HAYSTACK_SOURCES: Final[tuple[Source, ...]] = (
    "cs_method",
    "uri",
    "cs_user_agent",
    "cs_referer",
    "cs_host",
    "cs_version",
    "sc_status",
    "c_ip",
    "request_line",
)


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """Where a Sigma field's values come from (a test passes when it passes on any of them) and
    what its ``null`` checks; empty/``None`` sources mean "never recorded"."""

    values: tuple[Source, ...]
    presence: Source | None


def _one(source: Source) -> FieldMapping:
    return FieldMapping((source,), source)


_UNRECORDED: Final = FieldMapping((), None)

FIELD_MAP: Final[dict[str, FieldMapping]] = {
    "c-ip": _one("c_ip"),
    "src_ip": _one("c_ip"),
    "cs-method": _one("cs_method"),
    "cs-uri-stem": _one("cs_uri_stem"),
    "c-uri-stem": _one("cs_uri_stem"),
    "cs-uri-query": FieldMapping(("cs_uri_query", "uri"), "cs_uri_query"),
    "c-uri-query": FieldMapping(("cs_uri_query", "uri"), "cs_uri_query"),
    "cs-uri": _one("uri"),
    "c-uri": _one("uri"),
    "cs-url": _one("uri"),
    "c-uri-extension": _one("uri_extension"),
    "c-useragent": _one("cs_user_agent"),
    "cs-user-agent": _one("cs_user_agent"),
    "cs(user-agent)": _one("cs_user_agent"),
    "cs-referer": _one("cs_referer"),
    "cs-referrer": _one("cs_referer"),
    "cs(referer)": _one("cs_referer"),
    "cs-host": _one("cs_host"),
    "r-dns": _one("cs_host"),
    "cs(host)": _one("cs_host"),
    "cs-version": _one("cs_version"),
    "sc-status": _one("sc_status"),
    **dict.fromkeys(
        (
            "dst_ip",
            "s-ip",
            "s-port",
            "cs-username",
            "cs-cookie",
            "cs(cookie)",
            "cs-content-type",
            "cs-bytes",
            "sc-bytes",
            "time-taken",
            "sc-substatus",
            "sc-win32-status",
            "s-sitename",
            "s-computername",
            "c-uri-scheme",
            "cs-mime-type",
            "dst_port",
            "src_port",
        ),
        _UNRECORDED,
    ),
}

RESPONSE_FIELDS: Final = frozenset({"sc-status", "sc-bytes", "sc-substatus", "sc-win32-status", "time-taken"})


def mapping_of(field: str) -> FieldMapping | None:
    """The mapping of a Sigma field name, or ``None`` when Feint does not know the field."""
    return FIELD_MAP.get(field.lower())


def is_response_field(field: str) -> bool:
    """Whether the field is only known once the upstream has answered."""
    return field.lower() in RESPONSE_FIELDS
