"""In-process stand-ins for the engine's stores and a persona (unit tests of pure logic only)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from feint.camouflage.decoy.contract import Connection, Limits, Reply, Request, TimeoutPhase
from feint.camouflage.engine.events import Event
from feint.camouflage.engine.honeytokens import TokenOwner, TokenSet

LIMITS = Limits(
    request_line_bytes_max=8192,
    header_line_bytes_max=8192,
    header_bytes_max=65536,
    header_count_max=100,
    body_bytes_max=1 << 20,
    header_timeout_seconds=10,
    body_timeout_seconds=10,
    keepalive_timeout_seconds=5,
    keepalive_requests_max=100,
)
ENV_PAGE = b"DB={{honeytoken:database_url}}\nKEY={{honeytoken:api_key}}\n"


class Persona:
    """Answers /.env with placeholders, / with a page, anything else 404 (like a real server)."""

    def __init__(self, server: bytes = b"nginx/1.24.0") -> None:
        self.server = server

    @property
    def limits(self) -> Limits:
        return LIMITS

    def respond(self, request: Request, conn: Connection) -> Reply:
        if request.target == b"/.env":
            status, body = b"200 OK", ENV_PAGE
        elif request.target == b"/":
            status, body = b"200 OK", b"<html>welcome</html>"
        else:
            status, body = b"404 Not Found", b"<html>404</html>"
        head = b"HTTP/1.1 " + status + b"\r\nServer: " + self.server + b"\r\nContent-Length: "
        return Reply(data=head + str(len(body)).encode() + b"\r\n\r\n" + body)

    def timeout(self, phase: TimeoutPhase, *, partial: bytes, conn: Connection) -> Reply | None:
        return None


class TokenStore:
    def __init__(self) -> None:
        self.rows: dict[str, TokenOwner] = {}
        self.used: list[str] = []

    async def insert_tokens(self, *, tenant_id: uuid.UUID, tokens: TokenSet) -> None:
        for kind, digest in tokens.digests().items():
            self.rows[digest] = TokenOwner(digest, kind, tenant_id, tokens.session_id)

    async def owners(self, digests: Sequence[str]) -> list[TokenOwner]:
        return [self.rows[d] for d in digests if d in self.rows]

    async def mark_used(self, digests: Sequence[str]) -> None:
        self.used.extend(digests)


class EventStore:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def insert_events(self, events: Sequence[Event]) -> None:
        self.events.extend(events)


def request(
    target: bytes, *, method: bytes = b"GET", headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b""
) -> Request:
    line = method + b" " + target + b" HTTP/1.1"
    return Request(line, method, target, b"HTTP/1.1", ((b"Host", b"shop"), *headers), body, frozenset())


CONN = Connection(peer_host="203.0.113.9", peer_port=40000, local_host="127.0.0.1", local_port=8080, requests_served=0)
