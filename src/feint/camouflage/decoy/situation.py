"""What kind of request this is, as a persona's rules see it: the situation key.

A real server's answer depends on a handful of things about a request: what its parser objected
to, the method, the version, the shape of the target, what the path names on disk, and a few
headers (Accept-Encoding, Range, Expect, the cache validators If-None-Match and If-Modified-Since
compared with the file's ETag and time). The situation key lists them in that order of weight:

    problems=bad-version|method=GET|version=HTTP/2.0|target=origin|resource=dir|extras=gzip

A persona maps keys to answers (persona.yaml ``rules``). Lookup backs off from the full key by
dropping fields from the right, then keeps only the weightiest problem, then the empty key
(the persona's default), so a rule can be as general as ``problems=bad-version`` or as precise
as a whole key. The recorder writes the rules from what the real server answered; a person
writing a persona by hand (IIS, Spring Boot) writes the general ones.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import mktime_tz, parsedate_tz
from urllib.parse import unquote_to_bytes

from feint.camouflage.decoy.contract import Problem, Request

FIELDS = ("problems", "method", "version", "target", "resource", "extras")

# Weightiest first: the problem a real server reacts to before the others (a head over its
# buffer is refused before its request line is even looked at).
PROBLEM_WEIGHT: tuple[Problem, ...] = (
    Problem.REQUEST_LINE_TOO_LONG,
    Problem.HEADERS_TOO_LARGE,
    Problem.HEADER_LINE_TOO_LONG,
    Problem.TOO_MANY_HEADERS,
    Problem.MALFORMED_REQUEST_LINE,
    Problem.BAD_METHOD,
    Problem.LOWERCASE_METHOD,
    Problem.BAD_VERSION,
    Problem.UNSUPPORTED_VERSION,
    Problem.HTTP09,
    Problem.EXTRA_SPACE,
    Problem.NUL_BYTE,
    Problem.BAD_HEADER_LINE,
    Problem.OBS_FOLD,
    Problem.MISSING_HOST,
    Problem.DUPLICATE_HOST,
    Problem.BAD_CONTENT_LENGTH,
    Problem.CONTENT_LENGTH_AND_CHUNKED,
    Problem.UNKNOWN_TRANSFER_ENCODING,
    Problem.BAD_CHUNKED,
    Problem.BODY_TOO_LARGE,
    Problem.BARE_LF,
    Problem.ABSOLUTE_URI,
)
MERGED_FIELD_BYTES_NOTABLE = 8190  # repeated fields joined past this size (Apache's field limit)
_WEIGHT = {p: i for i, p in enumerate(PROBLEM_WEIGHT)}

KNOWN_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"CONNECT", b"PROPFIND", b"TRACK"}
)
_VERSION = re.compile(rb"HTTP/\d\.\d\Z")
_BAD_HOST = re.compile(rb"[/\\\s@?#]")
_TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class HeaderFlag:
    """An extras flag a persona declares: set when header ``name`` contains ``contains`` (any case)."""

    flag: str
    name: bytes  # lowercase
    contains: bytes  # lowercase


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a request's path leads in the persona's site tree."""

    kind: str  # file, dotfile, htfile, dir, dir-noindex, dir-noslash, missing, missing-dir, outside, none
    path: str  # the decoded, normalised path ("/admin/index.html" for a directory with an index)


class SiteIndex:
    """The site tree's paths, to resolve targets without touching the disk per request."""

    def __init__(
        self,
        *,
        files: frozenset[str],
        index_names: tuple[str, ...],
        special: dict[str, str] | None = None,
        dot_last_segment: bool = False,
        flags: tuple[HeaderFlag, ...] = (),
        mtime: float | None = None,
        etag_of: Callable[[str], str] | None = None,
    ) -> None:
        self.files = files
        # The files' modification time and ETag, which conditional requests are compared with.
        self.mtime = mtime
        self.etag_of = etag_of
        # False: a dot anywhere in the path hides it (nginx, Apache rules). True: only a last
        # segment starting with a dot does, as Express's static (send 0.19 without a dotfiles
        # option) serves /.git/config and ignores /.env and /.git.
        self.dot_last_segment = dot_last_segment
        # Headers this persona's server answers differently on (Spring's Accept: text/html).
        self.flags = flags
        # Path prefixes the server maps elsewhere (Apache's /server-status, /icons/): their own kind.
        self.special = tuple(sorted((special or {}).items(), key=lambda kv: -len(kv[0])))
        self.index_names = index_names
        dirs = {"/"}
        for f in files:
            parts = f.strip("/").split("/")[:-1]
            for i in range(len(parts)):
                dirs.add("/" + "/".join(parts[: i + 1]) + "/")
        self.dirs = frozenset(dirs)

    def resolve(self, raw_path: bytes) -> Resolved:
        """The kind of thing ``raw_path`` (as sent, before the query) names."""
        if not raw_path.startswith(b"/"):
            return Resolved("none", "")
        decoded = unquote_to_bytes(raw_path).decode("utf-8", "replace")
        if _escapes_root(decoded):
            return Resolved("outside", "")
        for prefix, kind in self.special:
            if decoded.startswith(prefix):
                if decoded in self.files:
                    # A file the persona ships under the prefix (Apache's /icons/apache_pb.gif,
                    # which WhatWeb's aggressive Apache check fetches); the rest stays missing.
                    return Resolved(kind + "-file", decoded)
                return Resolved(kind + ("-root" if decoded == prefix else ""), decoded)
        path = posixpath.normpath(decoded)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        trailing = decoded.endswith("/") and path != "/"
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last.startswith(".ht"):
            return Resolved("htfile", path)
        as_dir = path.rstrip("/") + "/"
        dot_tail = self.dot_last_segment and not trailing and last.startswith(".") and len(last) > 1
        if dot_tail and as_dir in self.dirs:
            return Resolved("dotfile", path)
        if as_dir in self.dirs:
            if not trailing and path != "/":
                return Resolved("dir-noslash", path)
            for name in self.index_names:
                if as_dir + name in self.files:
                    return Resolved("dir", as_dir + name)
            return Resolved("dir-noindex", as_dir)
        if path in self.files and not trailing:
            hidden = dot_tail if self.dot_last_segment else any(part.startswith(".") for part in path.split("/"))
            # The extension decides the type, and with it compression and Vary (mod_deflate).
            ext = last.rsplit(".", 1)[-1].lower() if "." in last[1:] else ""
            return Resolved(("dotfile" if hidden else "file") + (f".{ext}" if ext else ""), path)
        return Resolved("missing-dir" if trailing else "missing", path)


def _escapes_root(path: str) -> bool:
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def split_target(target: bytes) -> tuple[str, bytes]:
    """The target's form (origin, absolute, asterisk, authority, other) and its path before the query."""
    if target == b"*":
        return "asterisk", b""
    if target.startswith(b"/"):
        return "origin", target.split(b"?", 1)[0]
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.isalpha():
        slash = rest.find(b"/")
        path = rest[slash:] if slash >= 0 else b"/"
        return "absolute", path.split(b"?", 1)[0]
    if re.fullmatch(rb"[A-Za-z0-9.-]+:\d+", target):
        return "authority", b""
    return "other", b""


def target_feature(target: bytes) -> str:
    """The target's form plus what is odd about it (``origin+dotdot+pct00``)."""
    form, path = split_target(target)
    flags = []
    if b"%00" in target:
        flags.append("pct00")
    if _BAD_PERCENT.search(target):
        flags.append("badpct")
    if b"%2f" in target.lower():
        flags.append("pct2f")
    if b"\\" in target:
        flags.append("backslash")
    if b"\x00" in target:
        flags.append("nul")
    if path and (b"/.." in path or b"%2e%2e" in path.lower()):
        flags.append("dotdot")
    if len(target) > 4096:
        flags.append("long")
    return "+".join([form, *flags])


def method_feature(method: bytes) -> str:
    """The method itself when it is a common one, else its shape."""
    if method in KNOWN_METHODS:
        return method.decode()
    if not method:
        return "none"
    if method.isupper():
        return "other-upper"
    if method.islower():
        return "other-lower"
    return "other-mixed"


def version_feature(version: bytes | None) -> str:
    """``HTTP/1.1`` and other well-formed versions as sent; ``none`` (HTTP/0.9) or ``bad``."""
    if version is None:
        return "none"
    if _VERSION.match(version):
        return version.decode("latin-1")
    # The shape of a malformed version: servers differ on HTTP/1.10 (nginx: 1.x) and HTTP/01.1.
    shape = re.sub(rb"\d", b"d", version[:16]).decode("latin-1")
    return "bad:" + re.sub(r"[^A-Za-z/.d]", "_", shape)


def extras_feature(request: Request, declared: tuple[HeaderFlag, ...] = (), validators: tuple[str, ...] = ()) -> str:
    """The headers that change a real server's answer, as sorted flags (then the persona's own)."""
    flags = []
    encoding = request.header(b"accept-encoding")
    if encoding and b"gzip" in encoding.lower():
        flags.append("gzip")
    if request.header(b"range") is not None:
        flags.append("range")
    expect = request.header(b"expect")
    if expect is not None:
        flags.append("expect100" if expect.lower() == b"100-continue" else "expect")
    if request.body:
        flags.append("body")
    host = request.header(b"host")
    if host is not None and (not host or _BAD_HOST.search(host)):
        flags.append("badhost")
    merged: dict[bytes, int] = {}
    for name, value in request.headers:
        key = name.lower()
        merged[key] = merged.get(key, -2) + len(value) + 2
    if any(size > MERGED_FIELD_BYTES_NOTABLE for size in merged.values()):
        # Apache joins repeated fields into one and refuses the result over LimitRequestFieldSize.
        flags.append("merged-8k")
    flags.extend(_header_shapes(request.head))
    if validators:
        flags.extend(validators)
    for spec in declared:
        seen = request.header(spec.name)
        if seen is not None and spec.contains in seen.lower():
            flags.append(spec.flag)
    return "+".join(flags) or "none"


def _header_shapes(head: bytes) -> list[str]:
    """What is malformed about the header lines as sent (servers differ on each: nginx ignores a
    line without a colon or with a bad name, Apache refuses both; both refuse a space before it)."""
    shapes: set[str] = set()
    for line in head.split(b"\n")[1:]:
        line = line.rstrip(b"\r")
        if not line or line[:1] in (b" ", b"\t"):
            continue
        colon = line.find(b":")
        if colon < 0:
            shapes.add("nocolon")
        elif colon == 0:
            shapes.add("emptyname")
        elif line[colon - 1 : colon] in (b" ", b"\t"):
            shapes.add("spacecolon")
        elif line[:colon].translate(None, _TCHARS):
            shapes.add("badname")
        if b"\r" in line:
            shapes.add("cr")
    return sorted(shapes)


def validator_flags(request: Request, site: SiteIndex, resolved: Resolved) -> tuple[str, ...]:
    """How the request's cache validators compare with the file it names (none: no flag at all).

    ``If-None-Match``: ``inm-star`` for ``*``, ``inm-match`` when a listed tag equals the file's
    ETag (weak comparison, RFC 9110 13.1.2), ``inm`` otherwise. ``If-Modified-Since``, in whole
    seconds as Last-Modified carries them: ``ims-equal``, ``ims-older`` (before the file's time),
    ``ims-newer`` (after it, not after now), ``ims-future``, ``ims-bad`` (not a date), or ``ims``
    when the path names no file. Servers differ on each: nginx's ``if_modified_since exact``
    answers 304 only to ``ims-equal``, Apache to a date from the file's time to now, Express's
    ``fresh`` to any date from the file's time on.
    """
    inm = request.header(b"if-none-match")
    ims = request.header(b"if-modified-since")
    if inm is None and ims is None:
        return ()
    out: list[str] = []
    is_file = resolved.path in site.files
    if inm is not None:
        if inm.strip() == b"*":
            out.append("inm-star")
        elif is_file and site.etag_of is not None:
            etag = _weak(site.etag_of(resolved.path).encode("latin-1"))
            out.append("inm-match" if any(_weak(tag) == etag for tag in inm.split(b",")) else "inm")
        else:
            out.append("inm")
    if ims is not None:
        out.append(_ims_flag(ims, site.mtime if is_file else None))
    return tuple(out)


def _weak(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag


def _ims_flag(value: bytes, mtime: float | None) -> str:
    parts = parsedate_tz(value.decode("latin-1"))
    if parts is None:
        return "ims-bad"
    if mtime is None:
        return "ims"
    when = mktime_tz(parts)
    modified = int(mtime)
    if when == modified:
        return "ims-equal"
    if when < modified:
        return "ims-older"
    return "ims-newer" if when <= time.time() else "ims-future"


def problems_feature(problems: frozenset[Problem]) -> str:
    """The problems, weightiest first, joined by +; ``none`` when the parser saw nothing odd."""
    if not problems:
        return "none"
    return "+".join(p.value for p in sorted(problems, key=lambda p: _WEIGHT.get(p, len(_WEIGHT))))


@dataclass(frozen=True, slots=True)
class Situation:
    """A request's situation key fields, and where its path leads."""

    fields: tuple[str, str, str, str, str, str]
    resolved: Resolved
    conditional: bool = False  # the request carries a cache validator (validator_flags)

    def lookup_keys(self) -> list[str]:
        """The lookup keys, most precise first (see the module docstring)."""
        out = [
            "|".join(f"{name}={value}" for name, value in zip(FIELDS[:n], self.fields[:n], strict=True))
            for n in range(len(FIELDS), 0, -1)
        ]
        weightiest = self.fields[0].split("+", 1)[0]
        if weightiest != self.fields[0]:
            out.append(f"problems={weightiest}")
        out.append("")
        return out

    def learning_keys(self) -> list[str]:
        """The keys whose rule this request's answer may teach the recorder: all lookup keys, but
        only the whole key for a conditional request, so that a 304 never becomes the rule of
        the requests without validators that share its coarser keys."""
        keys = self.lookup_keys()
        return keys[:1] if self.conditional else keys


def situation(request: Request, site: SiteIndex) -> Situation:
    """The situation key of ``request`` against ``site``."""
    form, path = split_target(request.target)
    resolved = site.resolve(path) if form in ("origin", "absolute") else Resolved("none", "")
    validators = validator_flags(request, site, resolved)
    fields = (
        problems_feature(request.problems),
        method_feature(request.method),
        version_feature(request.version),
        target_feature(request.target),
        resolved.kind,
        extras_feature(request, site.flags, validators),
    )
    return Situation(fields=fields, resolved=resolved, conditional=bool(validators))
