"""Engagement: how a session's profile turns a persona's reply into what the client receives.

`shape` applies the profile's delay and trickle within the `HoldGate`; `labyrinth` is the
maximum band's content: a fake login that accepts anything, an admin area whose settings and
backups leak honeytokens, and endless generated pages, each linking to more pages. Pages are
derived from the session's seed and the path (same path, same page within a session), and
carry the persona's ``Server`` header.
"""

from __future__ import annotations

import email.utils
import hashlib
import html
import re
from dataclasses import dataclass
from typing import Final

from feint.camouflage.decoy.contract import Reply, Request
from feint.camouflage.engine.bands import EngagementProfile, HoldGate, hold_seconds, schedule

LINKS_PER_PAGE: Final = 8
PAGE_WORDS: Final = 60
PATH_BYTES_MAX: Final = 2_048  # longer targets are not answered by the labyrinth
_WORDS: Final = (
    "account",
    "archive",
    "audit",
    "backup",
    "billing",
    "cache",
    "cluster",
    "config",
    "customer",
    "dashboard",
    "data",
    "deploy",
    "export",
    "finance",
    "gateway",
    "internal",
    "invoice",
    "key",
    "ledger",
    "logs",
    "metrics",
    "migration",
    "node",
    "orders",
    "partner",
    "payroll",
    "report",
    "reseller",
    "secrets",
    "service",
    "staging",
    "storage",
    "sync",
    "tenant",
    "token",
    "upload",
    "user",
    "vault",
    "warehouse",
)
_FLOW = re.compile(
    rb"^/(login|signin|admin|administrator|wp-login\.php|wp-admin|phpmyadmin|manager/html|user/login|"
    rb"\.env|config\.php\.bak|backup|~)(?=[/?.]|$)",
    re.IGNORECASE,
)
ENV_FILE: Final = (
    b"APP_ENV=production\nAPP_DEBUG=false\n"
    b"DATABASE_URL={{honeytoken:database_url}}\n"
    b"AWS_ACCESS_KEY_ID={{honeytoken:aws_access_key_id}}\n"
    b"AWS_SECRET_ACCESS_KEY={{honeytoken:aws_secret_access_key}}\n"
    b"FEINT_API_KEY={{honeytoken:api_key}}\n"
)


@dataclass(frozen=True, slots=True)
class Shaped:
    reply: Reply
    held_seconds: float  # how long the reply keeps the connection
    admitted: bool  # False: the hold gate was full and the reply goes out at once


def shape(reply: Reply, profile: EngagementProfile, *, gate: HoldGate, now: float) -> Shaped:
    """``reply`` re-timed per ``profile``: first byte after the delay, then trickled; at once when
    the profile is fast, the reply streams, or the gate has no room."""
    if reply.stream is not None or (profile.delay_seconds == 0 and profile.trickle_bytes == 0):
        return Shaped(reply, 0.0, True)
    whole = reply.data + b"".join(chunk for _, chunk in reply.trickle)
    plan = schedule(len(whole), profile)
    seconds = hold_seconds(plan)
    if not gate.admit(now=now, seconds=seconds, size=len(whole)):
        return Shaped(Reply(data=whole, close=reply.close), 0.0, False)
    slices = [(delay, whole[start:end]) for delay, start, end in plan]
    if slices[0][0] == 0:
        first, rest = slices[0][1], slices[1:]
    else:
        first, rest = b"", slices
    return Shaped(Reply(data=first, close=reply.close, trickle=tuple(rest)), seconds, True)


def status_and_server(data: bytes) -> tuple[int, bytes | None]:
    """The status code and ``Server`` header of a raw HTTP/1.x response (0 when unparsable)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    server = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"server":
            server = value.strip()
            break
    return status, server


def wants_labyrinth(request: Request, persona_status: int) -> bool:
    """Whether the labyrinth answers: a login/admin/secret path, or one the persona does not have."""
    path = request.target.split(b"?", 1)[0]
    if len(request.target) > PATH_BYTES_MAX or request.version is None:
        return False
    return _FLOW.match(path) is not None or persona_status == 404


def _seeded(seed: bytes, path: bytes) -> bytes:
    return hashlib.blake2b(path, key=seed[:64], digest_size=32).digest()


def _page(seed: bytes, path: bytes) -> tuple[str, str]:
    """Title and HTML body of a generated page: words and links to deeper pages."""
    digest = _seeded(seed, path)
    words = [_WORDS[(digest[i % 32] + i * 7) % len(_WORDS)] for i in range(PAGE_WORDS)]
    title = f"{words[0].title()} {words[1]} - {words[2]}"
    base = path.decode("latin-1").rstrip("/")
    links = "".join(
        f'<li><a href="{html.escape(base)}/{words[3 + i]}-{digest[i]:02x}{digest[i + 8]:02x}/">'
        f"{html.escape(words[3 + i].title())} {digest[i + 16]}</a></li>"
        for i in range(LINKS_PER_PAGE)
    )
    text = " ".join(words[LINKS_PER_PAGE + 3 :])
    body = (
        f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>"
        f'<h1>{html.escape(title)}</h1><p>{text}.</p><ul>{links}</ul><p><a href="/admin/">Admin</a> | '
        '<a href="/backup/.env">Config backup</a></p></body></html>'
    )
    return title, body


def labyrinth(request: Request, *, seed: bytes, server: bytes | None, now: float) -> bytes:
    """The raw response of the labyrinth for ``request`` (placeholders unfilled)."""
    path = request.target.split(b"?", 1)[0]
    lowered = path.lower()
    status, extra, ctype = 200, b"", b"text/html; charset=utf-8"
    if lowered.endswith((b".env", b".bak")):
        body, ctype = ENV_FILE, b"text/plain"
    elif lowered.startswith((b"/login", b"/signin", b"/wp-login.php", b"/user/login")):
        if request.method == b"POST":
            status, body = 302, b""
            sid = _seeded(seed, b"cookie").hex()
            extra = b"Location: /admin/\r\nSet-Cookie: sid=" + sid.encode() + b"; Path=/; HttpOnly\r\n"
        else:
            body = (
                b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Sign in</h1>"
                b'<form method="post"><input name="username"><input name="password" type="password">'
                b"<button>Sign in</button></form></body></html>"
            )
    elif lowered.startswith((b"/admin", b"/administrator", b"/wp-admin", b"/phpmyadmin", b"/manager/html")):
        body = (
            b"<!DOCTYPE html><html><head><title>Administration</title></head><body><h1>Administration</h1>"
            b"<h2>API access</h2><p>Service key: <code>{{honeytoken:api_key}}</code></p>"
            b"<h2>Storage</h2><p>Access key <code>{{honeytoken:aws_access_key_id}}</code></p>"
            b'<p><a href="/backup/.env">Download configuration backup</a> | <a href="/~/reports/">Reports</a></p>'
            b"</body></html>"
        )
    else:
        _, page = _page(seed, path)
        body = page.encode()
    reason = {200: b"OK", 302: b"Found"}[status]
    head = (
        b"HTTP/1.1 "
        + str(status).encode()
        + b" "
        + reason
        + b"\r\n"
        + (b"Server: " + server + b"\r\n" if server else b"")
        + b"Date: "
        + email.utils.formatdate(now, usegmt=True).encode()
        + b"\r\n"
        + b"Content-Type: "
        + ctype
        + b"\r\n"
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"Connection: keep-alive\r\n\r\n"
    )
    return head + (b"" if request.method == b"HEAD" else body)
