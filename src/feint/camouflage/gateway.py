"""The gateway on port 8080: passes traffic to the upstream application.

This is the pass-through half of the camouflage gateway; the threat scoring and decoy personas
come with the camouflage engine and plug in before `forward`. Every read and the upstream call
are bounded (body size, time), hop-by-hop headers are dropped (RFC 9110 section 7.6.1), and the
client address is appended to ``X-Forwarded-For``.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from starlette.types import Receive, Scope, Send

GATEWAY_BODY_BYTES_MAX = 10 * 1024 * 1024
UPSTREAM_TIMEOUT_SECONDS = 30.0
UPSTREAM_CONNECTIONS_MAX = 256
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


def _forward_headers(headers: Iterable[tuple[bytes, bytes]], client: str) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != b"x-forwarded-for"]
    prior = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
    chain = b", ".join([*prior, client.encode()])
    kept.append((b"x-forwarded-for", chain))
    return kept


class Gateway:
    """ASGI app that forwards each request to ``upstream`` and streams the answer back."""

    def __init__(self, upstream: str, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.upstream,
            timeout=UPSTREAM_TIMEOUT_SECONDS,
            limits=httpx.Limits(max_connections=UPSTREAM_CONNECTIONS_MAX),
            transport=transport,
            follow_redirects=False,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > GATEWAY_BODY_BYTES_MAX:
                await _plain(send, 413, b"Request Entity Too Large")
                return
        client = (scope.get("client") or ("unknown", 0))[0]
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        try:
            request = self.client.build_request(
                scope["method"],
                target.decode("latin-1"),
                headers=_forward_headers(scope.get("headers", []), client),
                content=body,
            )
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            await _plain(send, 502, b"Bad Gateway")
            return
        try:
            headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _plain(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": text})
