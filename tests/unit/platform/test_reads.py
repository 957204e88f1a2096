"""Page cursors round-trip and refuse what the API did not give; ETags name exact bytes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from feint.errors import ValidationFailed
from feint.platform.reads import decode_keyset, encode_cursor, encode_keyset, etag_matches, etag_of, rfc3339_only

pytestmark = pytest.mark.unit


def test_keyset_round_trip() -> None:
    """A keyset cursor gives back its instant to the microsecond and its key."""
    at = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)
    assert decode_keyset(encode_keyset(at, "b2f1/api_key")) == (at, "b2f1/api_key")
    assert decode_keyset(None) is None


@pytest.mark.parametrize(
    "cursor",
    ["!!!", encode_cursor("no separator"), encode_cursor("2026-12-02T00:00:00|"), encode_cursor("yesterday|x"),
     encode_cursor("2026-12-02T00:00:00|x"), "A" * 600],
)  # fmt: skip
def test_made_up_cursors_are_422_naming_the_cursor(cursor: str) -> None:
    """Garbage, a cursor without a key, a bad or naive instant, or an overlong one: 422 on query.cursor."""
    with pytest.raises(ValidationFailed) as caught:
        decode_keyset(cursor)
    assert caught.value.errors == [{"field": "query.cursor", "problem": "invalid"}]


def test_etags() -> None:
    """Strong tags over exact bytes; If-None-Match matches a listed, weak or * tag and nothing else."""
    tag = etag_of(b"{}")
    assert tag != etag_of(b"{} ") and tag.startswith('"') and tag.endswith('"')
    assert etag_matches(tag, tag) and etag_matches(f'"x", W/{tag}', tag) and etag_matches("*", tag)
    assert not etag_matches(None, tag) and not etag_matches('"other"', tag)


def test_a_bare_number_is_not_an_instant() -> None:
    """RFC 3339 text passes through to pydantic; epoch seconds are refused."""
    assert rfc3339_only("2026-12-02T00:00:00Z") == "2026-12-02T00:00:00Z"
    with pytest.raises(ValueError, match="RFC 3339"):
        rfc3339_only("1700000000")
