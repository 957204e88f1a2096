"""A persona as a ``Responder``: situation → rule → response template → exact bytes."""

from __future__ import annotations

import hashlib
import html
import re
import struct
import time
import zlib
from email.utils import formatdate
from urllib.parse import quote

from feint.camouflage.decoy.contract import Connection, Limits, Reply, Request, TimeoutPhase
from feint.camouflage.decoy.persona import Persona, Response, Rule, TokenFiller
from feint.camouflage.decoy.situation import Resolved, situation, split_target

_HOST_LINE = re.compile(rb"\r?\nhost:([^\r\n]*)", re.IGNORECASE)
GZIP_MIN_BYTES = 20  # nginx gzip_min_length default; below it nobody compresses


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


def listing_mtime(epoch: float) -> str:
    """A file time as Apache's mod_autoindex lists it (%Y-%m-%d %H:%M; the server's zone, UTC here)."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch))


def imf_date(epoch: float | None = None) -> str:
    """An IMF-fixdate (RFC 9110 5.6.7): ``Tue, 01 Dec 2026 18:39:12 GMT``."""
    return formatdate(epoch, usegmt=True)


def default_filler(kind: str) -> str:
    """A stable, plausible-looking value per token kind when no engine fills them."""
    digest = hashlib.sha256(kind.encode()).hexdigest().upper()
    if kind == "aws_access_key":
        return "AKIA" + digest[:16]
    if kind == "aws_secret_key":
        return hashlib.sha256(b"s" + kind.encode()).hexdigest()[:40]
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


def encode_path(path: bytes) -> str:
    """The path as Express's encodeurl + escape-html print it in 'Cannot GET /…'."""
    text = quote(path.decode("latin-1"), safe="/%!#$&'()*+,:;=?@[]~-._")
    return html.escape(text, quote=True).replace("&#x27;", "&#39;")


class PersonaResponder:
    """Implements ``contract.Responder`` for one persona; stateless between requests."""

    def __init__(self, persona: Persona, *, fill: TokenFiller = default_filler) -> None:
        self.persona = persona
        self._site = persona.rendered_site(fill)
        self._index = persona.site_index()
        self._server = persona.server
        # Apache's autoindex column ("2026-12-01 19:21"): the site's files all carry site_mtime.
        self._listing_mtime = listing_mtime(persona.site_mtime)
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
        rule, resolved, _ = self.rule_for(request)
        response = self.persona.responses[rule.response]
        for flag, rid in response.alternates:
            seen = request.header(flag.name)
            if seen is not None and flag.contains in seen.lower():
                response = self.persona.responses[rid]
                break
        keep = (
            rule.close == "by-request"
            and request.framing_intact
            and wants_keepalive(request)
            and conn.requests_served + 1 < self.persona.limits.keepalive_requests_max
        )
        data = self.render(response, request=request, conn=conn, resolved=resolved, keep=keep)
        return Reply(data=data, close=not keep)

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

    def _values(self, request: Request, conn: Connection, resolved: Resolved) -> dict[str, str]:
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
            "date": imf_date(),
            "host": host,
            "port": port,
            "local_port": str(conn.local_port),
            "hostport": f"{host}:{port}",
            "method": request.method.decode("latin-1"),
            "path": raw_path.decode("latin-1"),
            "path_encoded": encode_path(raw_path),
            "keepalive_max": str(max(self.persona.limits.keepalive_requests_max - conn.requests_served, 0)),
            "site_mtime_listing": self._listing_mtime,
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
            values["etag"] = self.persona.etag_format.format(
                size=size,
                mtime=int(mtime),
                mtime_us=int(mtime * 1_000_000),
                mtime_ms=int(mtime * 1000),
                filetime_le=filetime_le(mtime),
            )
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
        self, response: Response, *, request: Request, conn: Connection, resolved: Resolved, keep: bool
    ) -> bytes:
        """The exact bytes of ``response`` to ``request``."""
        values = self._values(request, conn, resolved)
        body = self._body(response, values, request, resolved)
        if response.body.framing == "chunked":
            wire_body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        else:
            wire_body = body
        values["content_length"] = str(len(body))
        if response.status is None:
            return body
        lines = [response.status]
        if not keep:
            block = self.persona.connection_close
        elif request.version not in (b"HTTP/1.0", None) and request.header(b"connection") is None:
            block = self.persona.connection_implied
        else:
            block = self.persona.connection_keep
        for header in response.headers:
            pairs = block if header is None else (header,)
            for name, value in pairs:
                lines.append(f"{name.render(values)}: {value.render(values)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return response.interim.encode("latin-1") + head + (wire_body if response.body.send else b"")


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
