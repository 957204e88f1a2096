"""Synthetic requests for tests, benchmarks and demonstrations.

Three kinds: benign browsing of a small shop (``benign``), hostile noise (``hostile``: random
bytes, odd Unicode, control characters, oversized values), and, for any rule, a request built to
fire it (``witness``) plus a copy with one satisfied test broken (``near_miss``). Everything is
driven by a ``random.Random`` the caller seeds, so a run can be repeated.
"""

from __future__ import annotations

import importlib
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final

from feint.shadow.record import RequestRecord, clean_text, request_line_of
from feint.shadow.rules.fields import Source
from feint.shadow.rules.ir import And, Const, Expr, Not, Or, Test, sources

# Longest value hostile() produces, in characters: beyond typical limits, within test budgets.
HOSTILE_TEXT_CHARS_MAX: Final = 4_096
# Regular-expression repeats are capped here when sampling (``.+`` would otherwise be endless).
SAMPLE_REPEAT_MAX: Final = 6

_sre: Any = importlib.import_module("re._parser")  # the stdlib regex parser; no public API

USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
)
_PAGES: Final = (
    "/", "/products", "/products/{n}", "/products/{n}/reviews", "/cart", "/checkout",
    "/account/orders", "/search", "/blog/{slug}", "/static/js/app.{hex}.js",
    "/static/css/site.{hex}.css", "/images/p/{n}.webp", "/api/v1/cart/items", "/api/v1/products/{n}",
    "/favicon.ico", "/robots.txt", "/about", "/contact",
)  # fmt: skip
_WORDS: Final = ("shoes", "red", "winter", "jacket", "gift", "sale", "kids", "running", "size")
_HOSTS: Final = ("shop.example.com", "www.example.com", "api.example.com")


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return f"2001:db8::{rng.randrange(1, 0xFFFF):x}"
    return ".".join(str(rng.randrange(1, 255)) for _ in range(4))


def benign(rng: random.Random, request_id: str) -> RequestRecord:
    """A request a shopper's browser might send."""
    page = rng.choice(_PAGES).format(
        n=rng.randrange(1, 50_000), slug="-".join(rng.sample(_WORDS, 3)), hex=f"{rng.getrandbits(32):08x}"
    )
    query = None
    if page == "/search":
        query = "q=" + "+".join(rng.sample(_WORDS, rng.randrange(1, 4)))
    elif rng.random() < 0.2:
        query = f"page={rng.randrange(1, 20)}&sort={rng.choice(('price', 'new', 'rating'))}"
    method = rng.choices(("GET", "POST", "HEAD", "PUT"), (85, 10, 3, 2))[0]
    host = rng.choice(_HOSTS)
    version = rng.choice(("HTTP/1.1", "HTTP/2.0"))
    return RequestRecord(
        id=request_id,
        c_ip=_ip(rng),
        cs_method=method,
        cs_uri_stem=page,
        cs_uri_query=query,
        cs_user_agent=rng.choice(USER_AGENTS),
        cs_referer=None if rng.random() < 0.3 else f"https://{host}{rng.choice(_PAGES[:8])}",
        sc_status=rng.choices((200, 304, 301, 404, 500), (80, 8, 4, 7, 1))[0],
        cs_host=host,
        cs_version=version,
        request_line=request_line_of(method, page, query, version),
    )


_ODD: Final = "İıßſKÅé\u00a0\u2028\u200b\ufeff😀\x00\x01\t\r\n\\'\"%?*"


def _hostile_text(rng: random.Random) -> str | None:
    kind = rng.randrange(7)
    if kind == 0:
        return None
    if kind == 1:
        return ""
    if kind == 2:
        return clean_text(rng.randbytes(rng.randrange(1, 64)))
    if kind == 3:
        return "".join(rng.choice(_ODD + string.printable) for _ in range(rng.randrange(1, 40)))
    if kind == 4:
        return rng.choice(string.ascii_letters) * rng.randrange(100, HOSTILE_TEXT_CHARS_MAX)
    if kind == 5:
        return "".join(rng.choice(string.ascii_letters + "/.?=&%") for _ in range(20)).upper()
    return rng.choice(("-", "?", "/", ".", "..", "?&", "/a?", "\\x00", "GET / HTTP/1.1"))


def hostile(rng: random.Random, request_id: str) -> RequestRecord:
    """A request with random, malformed or oversized values in every field."""
    status = rng.choice((None, 0, 200, 404, 999, -1, 2**31 - 1))
    return RequestRecord(
        id=request_id,
        c_ip=_hostile_text(rng),
        cs_method=_hostile_text(rng),
        cs_uri_stem=_hostile_text(rng),
        cs_uri_query=_hostile_text(rng),
        cs_user_agent=_hostile_text(rng),
        cs_referer=_hostile_text(rng),
        sc_status=status,
        cs_host=_hostile_text(rng),
        cs_version=_hostile_text(rng),
        request_line=_hostile_text(rng),
    )


def _filler(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + "0123456789") for _ in range(rng.randrange(3)))


def _shuffle_case(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def sample_regex(rng: random.Random, pattern: str) -> str | None:
    """A string the pattern matches (RE2 patterns in Python syntax), or None if unsupported."""
    stripped = pattern
    for prefix in ("(?-s)", "(?i-s)", "(?s)", "(?is)", "(?m-s)", "(?im-s)", "(?ms)", "(?ims)"):
        if pattern.startswith(prefix):
            stripped = pattern[len(prefix) :]
            break
    try:
        parsed = _sre.parse(stripped)
    except Exception:  # noqa: BLE001 - any parser failure means "cannot sample"
        return None
    try:
        return "".join(_sample_items(rng, list(parsed)))
    except _Unsampleable:
        return None


class _Unsampleable(Exception):
    pass


def _sample_items(rng: random.Random, items: list[tuple[Any, Any]]) -> Iterator[str]:
    for opcode, argument in items:
        name = str(opcode)
        if name == "LITERAL":
            yield chr(argument)
        elif name == "ANY":
            yield rng.choice(string.ascii_lowercase)
        elif name == "IN":
            yield _sample_class(rng, argument)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, body = argument
            count = rng.randint(low, max(low, min(high, SAMPLE_REPEAT_MAX)))
            for _ in range(count):
                yield from _sample_items(rng, list(body))
        elif name == "SUBPATTERN":
            yield from _sample_items(rng, list(argument[-1]))
        elif name == "BRANCH":
            yield from _sample_items(rng, list(rng.choice(argument[1])))
        elif name == "AT":
            continue
        else:
            raise _Unsampleable(name)


def _sample_class(rng: random.Random, members: list[tuple[Any, Any]]) -> str:
    opcode, argument = rng.choice(members)
    name = str(opcode)
    if name == "LITERAL":
        return chr(argument)
    if name == "RANGE":
        return chr(rng.randint(argument[0], argument[1]))
    category = str(argument) if name == "CATEGORY" else ""
    choices = {"CATEGORY_SPACE": " ", "CATEGORY_DIGIT": string.digits, "CATEGORY_WORD": string.ascii_letters}
    if category in choices:
        return rng.choice(choices[category])
    raise _Unsampleable(name)


def _sample_glob(rng: random.Random, pattern: str) -> str:
    body = pattern[len("(?s)^") : -1]
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if body.startswith(".*", index):
            out.append(_filler(rng))
            index += 2
        elif char == ".":
            out.append(rng.choice(string.ascii_lowercase))
            index += 1
        elif body.startswith("\\x{", index):
            end = body.index("}", index)
            out.append(chr(int(body[index + 3 : end], 16)))
            index = end + 1
        elif char == "\\":
            out.append(body[index + 1])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


@dataclass
class _Draft:
    """Values being assembled for a witness: per source, the fragments it must hold."""

    exact: dict[Source, str] = field(default_factory=dict)
    prefix: dict[Source, str] = field(default_factory=dict)
    suffix: dict[Source, str] = field(default_factory=dict)
    parts: dict[Source, list[str]] = field(default_factory=dict)
    missing: set[Source] = field(default_factory=set)
    status: int | None = None
    used: list[Test] = field(default_factory=list)


def _add(draft: _Draft, rng: random.Random, test: Test) -> None:
    draft.used.append(test)
    literal = test.op in ("eq", "contains", "prefix", "suffix")
    value = _shuffle_case(rng, test.value) if literal and not test.cased else test.value
    source = test.source
    if test.op == "null":
        draft.missing.add(source)
    elif test.op == "num":
        number = int(float(test.value))
        draft.status = {"lt": number - 1, "lte": number, "gt": number + 1}.get(test.compare or "gte", number)
    elif test.op == "eq":
        draft.exact[source] = value
    elif test.op == "prefix":
        draft.prefix[source] = value
    elif test.op == "suffix":
        draft.suffix[source] = value
    elif test.op == "glob":
        glob = _sample_glob(rng, value)
        glob = glob if test.cased else _shuffle_case(rng, glob)
        if value.startswith("(?s)^.*") and value.endswith(".*$"):
            draft.parts.setdefault(source, []).append(glob)  # leaves room for other tests
        else:
            draft.exact[source] = glob
    elif test.op == "regex":
        sample = sample_regex(rng, value)
        body = value.split(")", 1)[1] if value.startswith("(?") else value
        if sample is not None and (body.startswith("^") or body.endswith("$")):
            draft.exact[source] = sample  # anchored: the sample must be the whole value
        elif sample is not None:
            draft.parts.setdefault(source, []).append(sample)
    else:
        draft.parts.setdefault(source, []).append(value)


def _collect(expr: Expr, draft: _Draft, rng: random.Random) -> None:
    if isinstance(expr, Test):
        _add(draft, rng, expr)
    elif isinstance(expr, And):
        for item in expr.items:
            _collect(item, draft, rng)
    elif isinstance(expr, Or):
        _collect(rng.choice(expr.items), draft, rng)
    elif isinstance(expr, Not):
        # A filter: give the sources it reads a random token (not the benign defaults, which a
        # filter such as "host ends with .com" would match) unless something else set them.
        for source in sources(expr.item):
            if not _constrained(draft, source):
                draft.parts.setdefault(source, []).append("zq" + _filler(rng) + "9")
    elif not isinstance(expr, Const):  # pragma: no cover - the parse tree has no others
        raise TypeError(type(expr).__name__)


def _constrained(draft: _Draft, source: Source) -> bool:
    return (
        any(source in part for part in (draft.exact, draft.prefix, draft.suffix, draft.parts))
        or source in draft.missing
    )


def _value(draft: _Draft, source: Source, rng: random.Random) -> str | None:
    if source in draft.missing:
        return None
    if source in draft.exact:
        return draft.exact[source]
    middle = _filler(rng).join(draft.parts.get(source, []))
    head, tail = draft.prefix.get(source, ""), draft.suffix.get(source, "")
    if not (head or middle or tail):
        return None
    return head + _filler(rng) + middle + _filler(rng) + tail


_PLAIN: Final[tuple[Source, ...]] = (
    "c_ip",
    "cs_method",
    "cs_user_agent",
    "cs_referer",
    "cs_host",
    "cs_version",
)


@dataclass(frozen=True)
class Witness:
    """A request built to fire a rule, and the tests it was built to satisfy."""

    record: RequestRecord
    tests: tuple[Test, ...]


def witness(expr: Expr, rng: random.Random, request_id: str) -> Witness:
    """A request built to satisfy ``expr``: one alternative of each OR, every AND item."""
    draft = _Draft()
    _collect(expr, draft, rng)
    base = benign(rng, request_id)

    def value(source: Source) -> str | None:
        return _value(draft, source, rng)

    uri = value("uri")
    stem, query = base.cs_uri_stem, base.cs_uri_query
    if uri is not None:
        stem, _, rest = uri.partition("?")
        query = rest or None
    if (given := value("cs_uri_stem")) is not None:
        stem = given
        if uri is not None:  # both: the stem is fixed, the target's fragments go to the query
            query = uri
    if (given := value("cs_uri_query")) is not None:
        query = given
    if (extension := value("uri_extension")) is not None:
        stem = (stem or "/") + f"/file.{extension}"
    if "cs_uri_query" in draft.missing or "uri" in draft.missing:
        query = None
    fields: dict[str, Any] = {}
    for name in _PLAIN:
        given = value(name)
        fields[name] = getattr(base, name) if given is None and name not in draft.missing else given
    method, version = fields["cs_method"], fields["cs_version"]
    line = value("request_line") or request_line_of(method, stem, query, version)
    status = draft.status
    if status is None and (text := value("sc_status")) is not None and text.strip("-").isdigit():
        status = int(text)
    record = RequestRecord(
        id=request_id,
        cs_uri_stem=None if "uri" in draft.missing else stem,
        cs_uri_query=query,
        sc_status=None if "sc_status" in draft.missing else (status or base.sc_status),
        request_line=line,
        **fields,
    )
    return Witness(record, tuple(draft.used))


_BREAKABLE: Final = ("eq", "contains", "prefix", "suffix", "glob", "null", "num")


def near_miss(built: Witness, rng: random.Random) -> RequestRecord:
    """The witness with one satisfied test broken: a literal's last character changed, a
    missing value given, a status moved."""
    record = replace(built.record, id=built.record.id + "~")
    tests = [test for test in built.tests if test.op in _BREAKABLE]
    if not tests:
        return record
    test = rng.choice(tests)
    if test.op == "null":
        name = _FIELD_OF.get(test.source, test.source)
        if name == "sc_status":
            return replace(record, sc_status=1)
        missing: dict[str, Any] = {name: "x"}
        return replace(record, **missing)
    if test.op == "num" or test.source == "sc_status":
        status = record.sc_status
        return replace(record, sc_status=None if status is None else status + 50)
    literal = test.needle if test.op == "glob" else test.value
    if not literal:
        return record
    broken = literal[:-1] + ("#" if literal[-1:] != "#" else "%")
    changed: dict[str, Any] = {}
    stem, query = record.cs_uri_stem or "", record.cs_uri_query
    uri = stem if query is None else f"{stem}?{query}"
    if literal.lower() in uri.lower():
        stem, _, rest = _replace_folded(uri, literal, broken).partition("?")
        changed["cs_uri_stem"], changed["cs_uri_query"] = stem or None, rest or None
    for name in ("cs_user_agent", "cs_referer", "cs_host", "cs_method", "cs_version", "c_ip",
                 "request_line"):  # fmt: skip
        current = getattr(record, name)
        if isinstance(current, str) and literal.lower() in current.lower():
            changed[name] = _replace_folded(current, literal, broken)
    return replace(record, **changed)


_FIELD_OF: Final[dict[str, str]] = {
    "uri": "cs_uri_stem",
    "uri_extension": "cs_uri_stem",
    "cs_uri_query": "cs_uri_query",
}


def _replace_folded(text: str, literal: str, broken: str) -> str:
    """Every case-insensitive occurrence of ``literal`` in ``text`` replaced by ``broken``."""
    out: list[str] = []
    lowered, needle = text.lower(), literal.lower()
    start = 0
    while (found := lowered.find(needle, start)) >= 0:
        out.append(text[start:found] + broken)
        start = found + len(needle)
    out.append(text[start:])
    return "".join(out)
