"""A persona as a ``Responder``: situation → rule → response template → exact bytes."""

from __future__ import annotations

import hashlib
import html
import re
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final
from urllib.parse import quote

from feint.camouflage.decoy.contract import Connection, Limits, Reply, Request, TimeoutPhase
from feint.camouflage.decoy.persona import Persona, Response, Rule, Template, TokenFiller
from feint.camouflage.decoy.situation import (
    MERGED_FIELD_BYTES_NOTABLE,
    Resolved,
    SiteIndex,
    situation,
    split_target,
)

_HOST_LINE = re.compile(rb"\r?\nhost:([^\r\n]*)", re.IGNORECASE)
GZIP_MIN_BYTES = 20  # nginx gzip_min_length default; below it nobody compresses
# Answers remembered per responder, keyed by what decides them (see `PersonaResponder.respond`);
# the table is emptied when full, so a scanner's unique paths cost a miss each, never memory.
REPLY_CACHE_ENTRIES_MAX: Final = 4_096
# Bytes the cached answers of one responder hold together (emptied when a new one would pass
# it), and the largest answer worth keeping: a site file (up to 1 MB) asked for under many
# Host values or query strings must not multiply in memory; larger answers render per request.
REPLY_CACHE_BYTES_MAX: Final = 16 * 1024 * 1024
REPLY_CACHE_ANSWER_BYTES_MAX: Final = 64 * 1024
# Placeholders whose value is a function of the cache key (the request's method, target,
# version, Host, Connection and Accept-Encoding, the local address, the persona), so a rendered
# answer using them can be reused. A placeholder in neither set (one added later) makes its
# response render per request, which is always right.
STABLE_NAMES: Final = frozenset(
    {
        "server", "host", "port", "local_port", "hostport", "method", "path", "path_encoded",
        "content_length", "last_modified", "etag", "etag_gzip", "content_type", "listing_mtime",
    }
)  # fmt: skip
# Placeholders that change per request: patched into a cached head (never allowed in a body,
# whose length or compression would change with them).
VOLATILE_NAMES: Final = ("date", "keepalive_max")
_SLOT = "\x00{}\x00"  # a volatile value while a cached head is rendered (NUL is never in a template)
_SLOT_SPLIT = re.compile(rb"\x00(" + "|".join(VOLATILE_NAMES).encode() + rb")\x00")


def java_date(epoch: float) -> str:
    """``java.util.Date.toString()`` in UTC: ``Wed Dec 02 02:15:00 UTC 2026`` (Spring's Whitelabel page)."""
    return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(epoch))


def iso_millis(epoch: float) -> str:
    """Jackson's StdDateFormat in UTC, as Spring Boot serialises ``new Date()``: ``2026-12-02T02:15:00.123+00:00``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}+00:00"


def filetime_le(epoch: float) -> str:
    """IIS's ETag stem: the file's FILETIME (100 ns ticks since 1601), its 8 bytes little-endian, each
    as unpadded hex: a published "557c50d443acd81:0" decodes to 2022-08-09T23:00:33.226 UTC, the
    Last-Modified it came with (the sources are in personas/iis-10/persona.yaml)."""
    return filetime_hex(round((epoch + 11_644_473_600) * 10_000_000))


def filetime_hex(ticks: int) -> str:
    """A FILETIME's 8 bytes, little-endian, each as unpadded hex (IIS's ETag stem)."""
    return "".join(f"{b:x}" for b in ticks.to_bytes(8, "little"))


def etag_value(persona: Persona, size: int) -> str:
    """The ETag the persona's server gives a site file of ``size`` bytes (its time is the site's)."""
    mtime = persona.site_mtime
    return persona.etag_format.format(
        size=size,
        mtime=int(mtime),
        mtime_us=int(mtime * 1_000_000),
        mtime_ms=int(mtime * 1000),
        filetime_le=filetime_le(mtime),
    )


def site_index(persona: Persona, site: Mapping[str, bytes]) -> SiteIndex:
    """The persona's site index, comparing If-None-Match with the ETags of ``site`` (rendered files)."""
    return persona.site_index(etag_of=lambda path: etag_value(persona, len(site[path])))


def listing_mtime(epoch: float) -> str:
    """A file time as Apache's mod_autoindex lists it (%Y-%m-%d %H:%M; the server's zone, UTC here)."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch))


def imf_date(epoch: float | None = None) -> str:
    """An IMF-fixdate (RFC 9110 5.6.7): ``Tue, 01 Dec 2026 18:39:12 GMT``."""
    return formatdate(epoch, usegmt=True)


_now_second = -1
_now_date = b""


def imf_date_now() -> bytes:
    """The current IMF-fixdate, formatted once per second (servers print whole seconds)."""
    global _now_second, _now_date  # a one-entry cache shared by every responder
    second = int(time.time())
    if second != _now_second:
        _now_date = formatdate(second, usegmt=True).encode("latin-1")
        _now_second = second
    return _now_date


def default_filler(kind: str) -> str:
    """A stable, plausible-looking value per token kind when no engine fills them."""
    digest = hashlib.sha256(kind.encode()).hexdigest().upper()
    if kind == "aws_access_key":
        return "AKIA" + digest[:16]
    if kind == "aws_secret_key":
        return hashlib.sha256(b"s" + kind.encode()).hexdigest()[:40]
    if kind in ("db_password", "git_password"):
        # As long as the engine's database password (engine.honeytokens.swap_site_tokens puts
        # the session's own in its place, the length, so Content-Length and ETag stay true).
        return digest[:18].lower()
    return digest[:24].lower()


def wants_keepalive(request: Request) -> bool:
    """Whether the client asked to keep the connection (HTTP/1.1 default, HTTP/1.0 opt-in)."""
    value = (request.header(b"connection") or b"").lower()
    if request.version == b"HTTP/1.0":
        return b"keep-alive" in value
    if request.version is None:
        return False
    return b"close" not in value


def gzip_bytes(data: bytes, *, level: int, window_bits: int, mem_level: int, xfl: int, shrink: bool) -> bytes:
    """``data`` compressed the way the server does it, with the gzip header it writes."""
    if shrink:
        # nginx (ngx_http_gzip_filter_module): for a known length, lower the window and memLevel
        # while the data fits in half the window (measured equal to nginx's output byte for byte).
        while window_bits > 9 and len(data) < (1 << (window_bits - 1)) - 262:
            window_bits -= 1
            mem_level -= 1
        mem_level = max(mem_level, 1)
    comp = zlib.compressobj(level, zlib.DEFLATED, -window_bits, mem_level)
    deflated = comp.compress(data) + comp.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([xfl, 3])
    return header + deflated + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


# encodeurl 2.0 (finalhandler 1.3's, Express 4.22): these bytes stay, and "%" before two hex digits.
_URL_KEEP = frozenset(b"!#$&'()*+,-./0123456789:;=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_abcdefghijklmnopqrstuvwxyz|~")
_HEX = frozenset(b"0123456789ABCDEFabcdef")


def encode_path(path: bytes) -> str:
    """The path as Express's finalhandler prints it in 'Cannot GET /…': encodeurl, then escape-html.

    encodeurl percent-encodes (as UTF-8, the way encodeURI does; Node hands it the bytes as
    Latin-1 characters) every character outside its kept set, and a "%" not followed by two hex
    digits (measured: ``/%zz`` prints as ``/%25zz``).
    """
    out: list[str] = []
    for i, byte in enumerate(path):
        if byte in _URL_KEEP or (byte == 37 and len(path) > i + 2 and path[i + 1] in _HEX and path[i + 2] in _HEX):
            out.append(chr(byte))
        else:
            out.append(quote(chr(byte), safe=""))
    return html.escape("".join(out), quote=True).replace("&#x27;", "&#39;")


@dataclass(frozen=True, slots=True)
class _Answer:
    """A rendered answer kept for requests with the same cache key."""

    rule: Rule
    resolved: Resolved
    close: bool
    literals: tuple[bytes, ...]  # the bytes around each slot (one more than slots)
    slots: tuple[str, ...]  # VOLATILE_NAMES filled per request, in order
    reply: Reply | None  # the whole reply when there is no slot
    render: bool  # True: the answer uses a value that is not cacheable; only the rule is kept


class PersonaResponder:
    """Implements ``contract.Responder`` for one persona; stateless between requests (its cache
    of rendered answers aside, which holds nothing a request could change)."""

    def __init__(self, persona: Persona, *, fill: TokenFiller = default_filler) -> None:
        self.persona = persona
        self._site = persona.rendered_site(fill)
        self._index = site_index(persona, self._site)
        self._server = persona.server
        self._listing_mtime = listing_mtime(persona.site_mtime)
        self._keepalive_max = persona.limits.keepalive_requests_max
        self._cache: dict[tuple[object, ...], _Answer] = {}
        self._cache_bytes = 0
        self._cacheable_names = STABLE_NAMES | frozenset(persona.vars)
        self._response_cacheable: dict[tuple[str, int], bool] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        # Placeholders computed only for personas that use them (request_head, timestamp_*).
        self._per_request = any(
            name == "request_head" or name.startswith("timestamp_")
            for r in persona.responses.values()
            for t in [*(x for h in r.headers if h for x in h), *([r.body.page] if r.body.page else [])]
            for name in t.names
        )

    @property
    def limits(self) -> Limits:
        return self.persona.limits

    def rule_for(self, request: Request) -> tuple[Rule, Resolved, str]:
        """The rule the persona applies to ``request``, where its path leads, and the key that matched."""
        sit = situation(request, self._index)
        for key in sit.lookup_keys():
            rule = self.persona.rules.get(key)
            if rule is not None:
                return rule, sit.resolved, key
        raise AssertionError("unreachable: persona rules always have a default")  # pragma: no cover

    def respond(self, request: Request, conn: Connection) -> Reply:
        key = self._cache_key(request, conn)
        if key is None:
            return self._respond(request, conn)
        answer = self._cache.get(key)
        if answer is None:
            self.cache_misses += 1
            answer = self._remember(key, request, conn)
        else:
            self.cache_hits += 1
        if answer.reply is not None:
            return answer.reply
        if answer.render:
            response = self._response(answer.rule, request)
            keep = not answer.close
            data = self.render(response, request=request, conn=conn, resolved=answer.resolved, keep=keep)
            return Reply(data=data, close=answer.close)
        pieces: list[bytes] = []
        literals = answer.literals
        for i, slot in enumerate(answer.slots):
            pieces.append(literals[i])
            if slot == "date":
                pieces.append(imf_date_now())
            else:
                pieces.append(str(max(self._keepalive_max - conn.requests_served, 0)).encode())
        pieces.append(literals[-1])
        return Reply(data=b"".join(pieces), close=answer.close)

    def _respond(self, request: Request, conn: Connection) -> Reply:
        """The answer rendered from scratch (every request the cache does not cover)."""
        rule, resolved, _ = self.rule_for(request)
        keep = self._keep(rule, request, conn)
        data = self.render(self._response(rule, request), request=request, conn=conn, resolved=resolved, keep=keep)
        return Reply(data=data, close=not keep)

    def _response(self, rule: Rule, request: Request) -> Response:
        """The rule's response, or its alternate for a declared request flag (Spring's Accept: text/html)."""
        response = self.persona.responses[rule.response]
        for flag, rid in response.alternates:
            seen = request.header(flag.name)
            if seen is not None and flag.contains in seen.lower():
                return self.persona.responses[rid]
        return response

    def _keep(self, rule: Rule, request: Request, conn: Connection) -> bool:
        return (
            rule.close == "by-request"
            and request.framing_intact
            and wants_keepalive(request)
            and conn.requests_served + 1 < self._keepalive_max
        )

    # -- the cache of rendered answers -------------------------------------------------------

    def _cache_key(self, request: Request, conn: Connection) -> tuple[object, ...] | None:
        """What decides the answer to ``request``, or None when the request is not the common
        kind (the parser saw a problem, a body, a Range, Expect or validator header, fields long enough
        to matter merged): everything `situation()` and `render()` read from it is in the key."""
        if request.problems or request.body or not request.framing_intact:
            return None
        host = connection = encoding = None
        merged = 0
        for name, value in request.headers:
            size = len(name)
            merged += len(value) + 2
            if size == 4:
                if host is None and name.lower() == b"host":
                    host = value
            elif size == 10:
                if connection is None and name.lower() == b"connection":
                    connection = value
            elif size == 15:
                if encoding is None and name.lower() == b"accept-encoding":
                    encoding = value
            elif (size == 5 and name.lower() == b"range") or (size == 6 and name.lower() == b"expect"):
                return None
            elif (size == 13 and name.lower() == b"if-none-match") or (
                size == 17 and name.lower() == b"if-modified-since"
            ):
                # A validator's answer depends on the file's ETag and time and on the clock
                # (a future If-Modified-Since becomes a past one): rendered per request.
                return None
        if merged > MERGED_FIELD_BYTES_NOTABLE:
            return None
        last = conn.requests_served + 1 >= self._keepalive_max
        # The persona's declared flags decide the rule and the alternate answer: part of the key.
        flags = tuple(
            (seen := request.header(flag.name)) is not None and flag.contains in seen.lower()
            for flag in self.persona.flags
        )
        return (
            flags,
            request.method,
            request.target,
            request.version,
            host,
            connection,
            encoding,
            conn.local_host,
            conn.local_port,
            last,
        )

    def _remember(self, key: tuple[object, ...], request: Request, conn: Connection) -> _Answer:
        """Render the answer once with its volatile values as slots, and keep it under ``key``."""
        rule, resolved, _ = self.rule_for(request)
        keep = self._keep(rule, request, conn)
        response = self._response(rule, request)
        answer: _Answer
        # A NUL in a request value could pass for a slot (the parser flags one, so this is for
        # requests built elsewhere): such a request is rendered every time.
        nul = any(isinstance(part, bytes) and b"\x00" in part for part in key)
        if nul or not self._cacheable(response, keep=keep, request=request):
            answer = _Answer(rule, resolved, not keep, (), (), None, render=True)
        else:
            head, body = self._head_and_body(
                response, request=request, conn=conn, resolved=resolved, keep=keep, slots=True
            )
            split = _SLOT_SPLIT.split(head)
            split[-1] += body
            literals = tuple(split[0::2])
            slots = tuple(name.decode() for name in split[1::2])
            size = sum(len(literal) for literal in literals)
            if size > REPLY_CACHE_ANSWER_BYTES_MAX:
                answer = _Answer(rule, resolved, not keep, (), (), None, render=True)
            elif slots:
                answer = _Answer(rule, resolved, not keep, literals, slots, None, render=False)
            else:
                reply = Reply(data=literals[0], close=not keep)
                answer = _Answer(rule, resolved, not keep, literals, (), reply, render=False)
        size = sum(len(literal) for literal in answer.literals)
        if len(self._cache) >= REPLY_CACHE_ENTRIES_MAX or self._cache_bytes + size > REPLY_CACHE_BYTES_MAX:
            self._cache.clear()
            self._cache_bytes = 0
        self._cache[key] = answer
        self._cache_bytes += size
        return answer

    def _cacheable(self, response: Response, *, keep: bool, request: Request) -> bool:
        """Whether ``response`` uses only placeholders the cache key decides (volatile ones in
        the head only), with its connection block for ``keep``."""
        block = self._block(request, keep=keep)
        memo = (response.id, id(block))
        known = self._response_cacheable.get(memo)
        if known is not None:
            return known
        head: set[str] = set()
        for header in response.headers:
            for name, value in block if header is None else (header,):
                head.update(name.names, value.names)
        body = set(response.body.page.names) if response.body.page is not None else set()
        allowed = self._cacheable_names
        ok = head <= allowed | set(VOLATILE_NAMES) and body <= allowed
        self._response_cacheable[memo] = ok
        return ok

    def _block(self, request: Request, *, keep: bool) -> tuple[tuple[Template, Template], ...]:
        """The persona's connection headers for this answer."""
        if not keep:
            return self.persona.connection_close
        if request.version not in (b"HTTP/1.0", None) and request.header(b"connection") is None:
            return self.persona.connection_implied
        return self.persona.connection_keep

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        rid = self.persona.timeouts.get(phase)
        if phase == "head" and b"\n" not in partial and "head-line" in self.persona.timeouts:
            # Apache: nothing or half a request line by the timeout is a silent close, a 408 after it.
            rid = self.persona.timeouts["head-line"]
        if rid is None:
            return None
        # Once the head is in (a body timeout), the answer knows the Host (Apache's "Server at HOST").
        host = _HOST_LINE.search(partial) if phase == "body" else None
        empty = Request(
            request_line=b"",
            method=b"",
            target=b"",
            version=b"HTTP/1.1",
            headers=((b"Host", host.group(1).strip()),) if host else (),
            body=b"",
            problems=frozenset(),
        )
        data = self.render(
            self.persona.responses[rid], request=empty, conn=conn, resolved=Resolved("none", ""), keep=False
        )
        return Reply(data=data, close=True)

    # -- rendering -------------------------------------------------------------------------

    def _values(self, request: Request, conn: Connection, resolved: Resolved, *, slots: bool) -> dict[str, str]:
        host_header = request.header(b"host")
        host, port = conn.local_host, str(conn.local_port)
        if host_header:
            name, sep, hport = host_header.decode("latin-1").rpartition(":")
            if sep and hport.isdigit() and not name.endswith("]") | (name.count(":") > 0):
                host, port = name, hport
            elif host_header:
                host = host_header.decode("latin-1")
        _, raw_path = split_target(request.target)
        values = {
            "server": self._server,
            "date": _SLOT.format("date") if slots else imf_date(),
            "host": host,
            "port": port,
            "local_port": str(conn.local_port),
            "hostport": f"{host}:{port}",
            "method": request.method.decode("latin-1"),
            "path": raw_path.decode("latin-1"),
            "path_encoded": encode_path(raw_path),
            "keepalive_max": (
                _SLOT.format("keepalive_max") if slots else str(max(self._keepalive_max - conn.requests_served, 0))
            ),
            "listing_mtime": self._listing_mtime,
            **self.persona.vars,
        }
        if self._per_request:
            now = time.time()
            values["request_head"] = request.head.decode("latin-1")  # TRACE echoes the request
            values["timestamp_iso"] = iso_millis(now)
            values["timestamp_java"] = java_date(now)
        if resolved.path in self._site:
            size = len(self._site[resolved.path])
            mtime = self.persona.site_mtime
            values["last_modified"] = imf_date(mtime)
            values["etag"] = etag_value(self.persona, size)
            ext = resolved.path.rsplit(".", 1)[-1].lower() if "." in resolved.path.rsplit("/", 1)[-1] else ""
            values["etag_gzip"] = values["etag"][:-1] + '-gzip"'
            values["content_type"] = self.persona.mime.get(ext, self.persona.mime_default)
        return values

    def _body(self, response: Response, values: dict[str, str], request: Request, resolved: Resolved) -> bytes:
        body = response.body
        if body.kind == "file":
            data = self._site.get(resolved.path, b"")
            rng = request.header(b"range")
            if rng and response.status and " 206 " in response.status:
                data = _slice(data, rng, values)
        elif body.page is not None:
            data = body.page.render(values).encode("latin-1")
        else:
            data = b""
        gz = self.persona.gzip
        if body.encoding == "gzip" and gz is not None:
            data = gzip_bytes(
                data,
                level=gz.level,
                window_bits=gz.window_bits,
                mem_level=gz.mem_level,
                xfl=gz.xfl,
                shrink=gz.shrink_window,
            )
        return data

    def render(
        self,
        response: Response,
        *,
        request: Request,
        conn: Connection,
        resolved: Resolved,
        keep: bool,
        slots: bool = False,
    ) -> bytes:
        """The exact bytes of ``response`` to ``request`` (``slots``: volatile values as slots)."""
        head, body = self._head_and_body(
            response, request=request, conn=conn, resolved=resolved, keep=keep, slots=slots
        )
        return head + body

    def _head_and_body(
        self, response: Response, *, request: Request, conn: Connection, resolved: Resolved, keep: bool, slots: bool
    ) -> tuple[bytes, bytes]:
        """What ``render`` writes, as the interim answer and head, and the body as sent."""
        values = self._values(request, conn, resolved, slots=slots)
        body = self._body(response, values, request, resolved)
        if response.body.framing == "chunked":
            wire_body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        else:
            wire_body = body
        values["content_length"] = str(len(body))
        if response.status is None:
            return b"", body
        lines = [response.status]
        block = self._block(request, keep=keep)
        for header in response.headers:
            pairs = block if header is None else (header,)
            for name, value in pairs:
                lines.append(f"{name.render(values)}: {value.render(values)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return response.interim.encode("latin-1") + head, (wire_body if response.body.send else b"")


def _slice(data: bytes, rng: bytes, values: dict[str, str]) -> bytes:
    """A single ``bytes=a-b`` range of ``data``; sets ``content_range``."""
    spec = rng.decode("latin-1").removeprefix("bytes=")
    first, _, last = spec.partition("-")
    try:
        start = int(first) if first else max(len(data) - int(last), 0)
        end = min(int(last), len(data) - 1) if first and last else len(data) - 1
    except ValueError:
        return data
    values["content_range"] = f"bytes {start}-{end}/{len(data)}"
    return data[start : end + 1]
