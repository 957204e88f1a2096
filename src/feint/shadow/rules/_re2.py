"""A typed face for ``google-re2``, the regular-expression engine of both Feint engines.

DuckDB and ClickHouse run RE2 as well, so a pattern means the same in all three. The package
ships no type information, so this module is the one place that touches it untyped. Calls go to the pybind layer
directly: the pure-Python ``re2.search`` decodes match offsets back to ``str`` positions, which
costs more than the search itself and which a yes/no answer does not need.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import re2  # google-re2 ships no stubs: pyproject's mypy overrides let it in as Any

# RE2 keeps a compiled program and its DFA cache within this budget. A set of a few thousand
# literals needs tens of MiB; past the budget a DFA resets its cache (slower, still correct).
REGEX_MEMORY_BYTES_MAX: Final = 64 << 20
SET_MEMORY_BYTES_MAX: Final = 256 << 20

_UNANCHORED: Final[Any] = re2._Anchor.UNANCHORED


class RegexError(ValueError):
    """A pattern RE2 rejects; the message is RE2's."""


def _options(max_mem: int) -> Any:
    options = re2.Options()
    options.max_mem = max_mem
    options.log_errors = False
    return options


class Regex:
    """One compiled pattern, searched (not anchored) in UTF-8 text."""

    __slots__ = ("_match", "pattern")

    def __init__(self, pattern: str) -> None:
        try:
            compiled = re2._re2.RE2(pattern.encode("utf-8"), _options(REGEX_MEMORY_BYTES_MAX))
        except re2.error as exc:  # pragma: no cover - the pybind constructor does not raise today
            raise RegexError(str(exc)) from exc
        if not compiled.ok():
            message = compiled.error()
            raise RegexError(message.decode() if isinstance(message, bytes) else str(message))
        self.pattern = pattern
        self._match = compiled.Match

    def search_bytes(self, data: bytes) -> bool:
        """Whether the pattern occurs anywhere in UTF-8 ``data``."""
        return bool(self._match(_UNANCHORED, data, 0, len(data))[0][0] >= 0)

    def search(self, text: str) -> bool:
        """Whether the pattern occurs anywhere in ``text``."""
        data = text.encode("utf-8", "surrogatepass")
        return bool(self._match(_UNANCHORED, data, 0, len(data))[0][0] >= 0)


class RegexSet:
    """Many patterns searched in one pass; answers which of them occur."""

    __slots__ = ("_match", "size")

    def __init__(self, patterns: Iterable[str]) -> None:
        compiled = re2._re2.Set(_UNANCHORED, _options(SET_MEMORY_BYTES_MAX))
        self.size = 0
        for pattern in patterns:
            if compiled.Add(pattern.encode("utf-8")) < 0:
                raise RegexError(f"RE2 rejected set member {pattern!r}")
            self.size += 1
        if not compiled.Compile():
            raise RegexError("RE2 could not compile the pattern set")  # pragma: no cover
        self._match = compiled.Match

    def matches(self, data: bytes) -> list[int]:
        """Indexes (in insertion order) of the patterns that occur in UTF-8 ``data``."""
        found: list[int] = self._match(data)
        return found


def escape(literal: str) -> str:
    """``literal`` as an RE2 pattern that matches exactly it.

    Punctuation gets a backslash; control characters and non-ASCII whitespace become ``\\x{..}``
    so the pattern stays printable (it is also embedded in SQL text).
    """
    out: list[str] = []
    for char in literal:
        if char.isalnum() or char in "_ " or (ord(char) > 127 and char.isprintable()):
            out.append(char)
        elif char.isprintable() and ord(char) < 128:
            out.append("\\" + char)
        else:
            out.append(f"\\x{{{ord(char):x}}}")
    return "".join(out)
