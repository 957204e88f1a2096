"""The CRS regression requests (go-ftw YAML) as the bytes a client puts on the wire.

go-ftw builds each stage's request from ``method``, ``uri``, ``version``, ``headers`` and ``data``
(or sends ``encoded_request``, base64 of the raw bytes, as is) and, unless
``autocomplete_headers: false``, adds ``Content-Length`` for a body and ``Connection: close``.
The shadow service reads the same files as request records (``feint.shadow.crs``); this reads
them as bytes, since the gateway sees bodies and every header.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

CRS_FILE_BYTES_MAX: Final = 4 << 20
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One CRS stage as raw request bytes; ``attack`` when CRS expects a rule to fire."""

    raw: bytes
    attack: bool
    test: str


def _bytes(value: object) -> bytes:
    return str(value).encode("utf-8", "surrogateescape")


def wire(stage: dict[str, Any]) -> bytes | None:
    """The bytes of one stage's request, or None when it has none we can send."""
    encoded = stage.get("encoded_request")
    if isinstance(encoded, str):
        try:
            return base64.b64decode("".join(encoded.split()), validate=False)
        except (binascii.Error, ValueError):
            return None
    method = _bytes(stage.get("method") or "GET")
    uri = _bytes(stage.get("uri") or "/")
    version = _bytes(stage.get("version") or "HTTP/1.1")
    headers = stage.get("headers") if isinstance(stage.get("headers"), dict) else {}
    data = stage.get("data")
    body = b"" if data is None else _bytes(data) if not isinstance(data, list) else b"\r\n".join(map(_bytes, data))
    lines = [method + b" " + uri + b" " + version]
    names = set()
    for name, value in (headers or {}).items():
        names.add(str(name).lower())
        lines.append(_bytes(name) + b": " + (b"" if value is None else _bytes(value)))
    if stage.get("autocomplete_headers", True):
        if body and "content-length" not in names:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        if "connection" not in names:
            lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def load(folder: Path) -> Iterator[WireRequest]:
    """Every stage of every test under ``folder`` with a request, in path order."""
    for path in sorted(folder.rglob("*.yaml")):
        if path.stat().st_size > CRS_FILE_BYTES_MAX:
            continue
        document = yaml.load(path.read_text(encoding="utf-8", errors="replace"), Loader=_LOADER)  # noqa: S506
        if not isinstance(document, dict):
            continue
        for test in document.get("tests") or []:
            if not isinstance(test, dict):
                continue
            for index, stage in enumerate(test.get("stages") or []):
                stage_input = stage.get("input") if isinstance(stage, dict) else None
                if not isinstance(stage_input, dict):
                    continue
                raw = wire(stage_input)
                if raw is None:
                    continue
                output = stage.get("output") or {}
                log = output.get("log") if isinstance(output, dict) else None
                attack = bool(isinstance(log, dict) and log.get("expect_ids"))
                yield WireRequest(raw, attack, f"{path.stem}-{test.get('test_id', '?')}-{index}")
