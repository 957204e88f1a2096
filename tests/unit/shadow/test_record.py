"""The request record's text rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feint.shadow.record import ascii_lower, clean_text, request_line_of, split_target

pytestmark = pytest.mark.unit


@given(st.text())
def test_ascii_lower_folds_only_ascii_letters(text: str) -> None:
    """Only A-Z change, each to its lowercase letter; every other character stays."""
    folded = ascii_lower(text)
    assert len(folded) == len(text)
    for before, after in zip(text, folded, strict=True):
        assert after == (before.lower() if "A" <= before <= "Z" else before)


def test_ascii_lower_leaves_non_ascii_capitals() -> None:
    """U+0130 and the Kelvin sign keep their case, unlike str.lower."""
    assert ascii_lower("\u0130STANBUL \u212a") == "\u0130stanbul \u212a"


def test_clean_text_escapes_invalid_utf8_and_surrogates() -> None:
    """Invalid bytes and lone surrogates become \\xNN escapes; valid text is unchanged."""
    assert clean_text(b"a\xffb") == "a\\xffb"
    assert clean_text("ok é") == "ok é"
    assert clean_text("a\udcffb").encode("utf-8")
    assert "\\x" in clean_text("a\ud800b")


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/a?b=1", ("/a", "b=1")), ("/a", ("/a", None)), ("/a?", ("/a", None)), ("?q", (None, "q")), ("", (None, None))],
)
def test_split_target(target: str, expected: tuple[str | None, str | None]) -> None:
    """Stem and query split at the first '?', empty parts are None."""
    assert split_target(target) == expected


def test_request_line_of() -> None:
    """The request line rebuilt from its parts; None without method and stem."""
    assert request_line_of("GET", "/a", "b", "HTTP/1.1") == "GET /a?b HTTP/1.1"
    assert request_line_of("GET", "/a", None, None) == "GET /a"
    assert request_line_of(None, None, "q", "HTTP/1.1") is None
