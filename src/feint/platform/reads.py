"""Shared helpers of read routes: opaque page cursors, RFC 3339 instants, conditional GETs.

* A cursor is the position after the last row of a page, base64url-encoded so that clients treat
  it as opaque; one a client made up is 422 naming ``query.cursor``. `encode_keyset` and
  `decode_keyset` carry a ``(time, id)`` keyset, for listings ordered newest first.
* `Instant` is a query parameter in RFC 3339 with an offset; a bare number (which pydantic would
  read as epoch seconds) is refused, since the OpenAPI document says ``date-time``.
* `conditional` answers a GET with a strong ETag over the exact body bytes, and 304 when the
  client's ``If-None-Match`` names it (RFC 9110 13.1.2: a weak comparison, so ``W/`` is ignored).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BeforeValidator

from feint.errors import ValidationFailed

JSON: Final = "application/json"
ETAG_HEX_CHARS: Final = 32
CURSOR_CHARS_MAX: Final = 512
_CURSOR_SEPARATOR: Final = "|"


def _bad_cursor() -> ValidationFailed:
    return ValidationFailed("cursor is not one this API gave", errors=[{"field": "query.cursor", "problem": "invalid"}])


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    if len(cursor) > CURSOR_CHARS_MAX:
        raise _bad_cursor()
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad_cursor() from None


def encode_keyset(at: datetime, key: str) -> str:
    """The cursor after a row ordered by ``(at, key)``."""
    return encode_cursor(at.isoformat() + _CURSOR_SEPARATOR + key)


def decode_keyset(cursor: str | None) -> tuple[datetime, str] | None:
    """``(at, key)`` of a cursor from `encode_keyset`; None for no cursor; 422 for anything else."""
    if cursor is None:
        return None
    at, separator, key = decode_cursor(cursor).partition(_CURSOR_SEPARATOR)
    if not separator or not key:
        raise _bad_cursor()
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise _bad_cursor() from None
    if when.tzinfo is None:
        raise _bad_cursor()
    return when, key


def rfc3339_only(value: object) -> object:
    """The document says date-time: a bare number (which pydantic would read as epoch seconds) is refused."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("an RFC 3339 date-time with an offset, e.g. 2026-12-01T12:00:00Z, not a number")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(rfc3339_only)]


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match: header`` names ``etag`` (or is ``*``)."""
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def etag_of(body: bytes) -> str:
    """A strong ETag over exactly these bytes."""
    return '"' + hashlib.sha256(body).hexdigest()[:ETAG_HEX_CHARS] + '"'


NOT_MODIFIED_RESPONSE: Final[dict[int | str, dict[str, Any]]] = {
    304: {"description": "Unchanged since the ETag sent in If-None-Match."}
}


def conditional(request: Request, body: bytes, *, media_type: str = JSON) -> Response:
    """``body`` with its ETag, or an empty 304 when the client already has it."""
    etag = etag_of(body)
    headers = {"etag": etag, "cache-control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type=media_type, headers=headers)
