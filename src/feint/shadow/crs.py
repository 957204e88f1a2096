"""Requests of the OWASP CRS regression tests (go-ftw YAML) as request records.

The CRS tests are real attack traffic, used as attacks in tests, benchmarks and threat-scoring
checks. A stage is an attack when its output expects CRS rules to fire (``expect_ids``); a stage
that only says some rule must stay silent (``no_expect_ids``) is not evidence of an attack.
Bodies (``data``) are ignored: no Sigma webserver field sees them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from feint.shadow.record import RequestRecord, clean_text, request_line_of, split_target

CRS_FILE_BYTES_MAX: Final = 4 << 20
CRS_FILES_MAX: Final = 10_000
# The C loader when PyYAML was built with libyaml: ten times faster on the 322 CRS files.
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class CrsRequest:
    """One stage of a CRS test: the request, and whether CRS expects an attack."""

    record: RequestRecord
    attack: bool
    rule_id: str
    test_id: str


def _text(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return clean_text(str(value)) or None


def _headers(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(name).lower(): text for name, raw in value.items() if (text := _text(raw)) is not None}


def _encoded(payload: str) -> tuple[str | None, dict[str, str]]:
    """Request line and headers of a base64 ``encoded_request``."""
    try:
        raw = base64.b64decode("".join(payload.split()), validate=False)
    except (binascii.Error, ValueError):
        return None, {}
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[clean_text(name).strip().lower()] = clean_text(value).strip()
    return (clean_text(head[0]) or None) if head else None, headers


def _record(stage_input: dict[str, Any], request_id: str) -> RequestRecord:
    headers = _headers(stage_input.get("headers"))
    line: str | None = None
    method, target, version = (
        _text(stage_input.get("method")),
        _text(stage_input.get("uri")),
        _text(stage_input.get("version")),
    )
    encoded = stage_input.get("encoded_request")
    if isinstance(encoded, str):
        line, more = _encoded(encoded)
        headers.update(more)
        parts = (line or "").split(" ")
        if len(parts) == 3:
            method, target, version = parts
    method, version = method or "GET", version or "HTTP/1.1"
    stem, query = split_target(target or "/")
    return RequestRecord(
        id=request_id,
        c_ip="127.0.0.1",
        cs_method=method,
        cs_uri_stem=stem,
        cs_uri_query=query,
        cs_user_agent=headers.get("user-agent"),
        cs_referer=headers.get("referer"),
        cs_host=headers.get("host"),
        cs_version=version,
        request_line=line or request_line_of(method, stem, query, version),
    )


def load_crs(folder: Path) -> Iterator[CrsRequest]:
    """Every stage of every CRS regression test under ``folder``, in path order."""
    files = sorted(folder.rglob("*.yaml"))[:CRS_FILES_MAX]
    for path in files:
        if path.stat().st_size > CRS_FILE_BYTES_MAX:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        # _LOADER is a SafeLoader subclass, which bandit cannot see.
        document = yaml.load(text, Loader=_LOADER)  # noqa: S506  # nosec B506
        if not isinstance(document, dict):
            continue
        rule_id = str(document.get("rule_id", path.stem))
        for test in document.get("tests") or []:
            if not isinstance(test, dict):
                continue
            test_id = str(test.get("test_id", "?"))
            for index, stage in enumerate(test.get("stages") or []):
                stage_input = stage.get("input") if isinstance(stage, dict) else None
                if not isinstance(stage_input, dict):
                    continue
                output = stage.get("output") or {}
                log = output.get("log") if isinstance(output, dict) else None
                attack = bool(isinstance(log, dict) and log.get("expect_ids"))
                request_id = f"crs-{rule_id}-{test_id}-{index}"
                yield CrsRequest(_record(stage_input, request_id), attack, rule_id, test_id)
