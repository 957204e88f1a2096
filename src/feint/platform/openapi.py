"""The OpenAPI document says every status a route can answer, and that errors are problem+json.

FastAPI documents a route's success and its request validation (as ``application/json``). The
platform answers more than that on every route: the middleware's limits (400 for a malformed
``Content-Length``, 413 for oversized headers or body, 429 per address or key, 503 on timeout or
a dependency down), authentication (401, 403) on ``/v1``, 404 for ids that name nothing, 405 for a
method the path does not have, and every error as RFC 9457 ``application/problem+json``. This
module adds those to the generated document, once, so that a client generator or a fuzzer
(schemathesis in CI) sees the API as it behaves. It is pure: a document in, a document out.
"""

from __future__ import annotations

import copy
from typing import Any, Final

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_SCHEMA_NAME: Final = "Problem"
PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; `type` ends in a stable slug (`/problems/<slug>`).",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": True,
}
# Answered by the platform on every route (the middleware runs before any route).
EVERY_ROUTE: Final[dict[str, str]] = {
    "400": "Malformed request (an unparsable body or header).",
    "405": "The path exists but not with this method.",
    "413": "Headers or body over the size limit.",
    "503": "Timed out, or a dependency (database, cache) is down.",
}
PROBE_PATHS: Final = frozenset({"/health", "/ready", "/metrics"})
# Answered on every route but the probes.
NOT_PROBES: Final[dict[str, str]] = {
    "422": "Input that parsed but broke a rule; `errors` names each field.",
    "429": "Too many requests; see Retry-After and RateLimit-* headers.",
}
AUTHENTICATED: Final[dict[str, str]] = {
    "401": "Missing, invalid or revoked API key.",
    "403": "The key's scope does not allow this route.",
}
API_ROUTES: Final[dict[str, str]] = {"404": "Something the request names does not exist (for this tenant)."}
MUTATIONS: Final[dict[str, str]] = {"409": "Conflicts with the current state, or an idempotency key reused."}
MUTATING_METHODS: Final = frozenset({"post", "put", "patch", "delete"})
HTTP_METHODS: Final = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{PROBLEM_SCHEMA_NAME}"}}}


def with_problems(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the platform's statuses on every operation and errors as problem+json."""
    result = copy.deepcopy(document)
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[PROBLEM_SCHEMA_NAME] = PROBLEM_SCHEMA
    # FastAPI's own validation error models describe a body we never send.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            extra = dict(EVERY_ROUTE)
            if path not in PROBE_PATHS:
                extra |= NOT_PROBES
            if operation.get("security") or path.startswith("/v1/"):
                extra |= AUTHENTICATED
            if "{" in path or path.startswith("/v1/"):
                extra |= API_ROUTES
            if path.startswith("/v1/") and method in MUTATING_METHODS:
                extra |= MUTATIONS
            for status, description in extra.items():
                responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if status[:1] in ("4", "5"):
                    response["content"] = _problem_content()
    return result
