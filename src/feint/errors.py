"""Errors a client or operator may see.

Every error that crosses a service boundary is a :class:`FeintError`. The web layer
(`feint.platform.web`) turns each one into an RFC 9457 ``application/problem+json`` body whose
``type`` ends in the class's ``slug``; nothing else in the code builds error responses.

    FeintError (500 internal)
    ├── BadRequest (400 bad-request)
    │   └── ValidationFailed (422 validation-failed)
    ├── Unauthenticated (401 unauthenticated)
    ├── Forbidden (403 forbidden)
    ├── NotFound (404 not-found)
    ├── Conflict (409 conflict)
    │   └── IdempotencyKeyReused (409 idempotency-key-reused)
    ├── PayloadTooLarge (413 payload-too-large)
    ├── RateLimited (429 rate-limited)
    ├── DependencyUnavailable (503 dependency-unavailable)
    └── InvariantViolated (500 invariant-violated)

Domains subclass these (``feint.credits.errors`` and so on) and add the data a client needs
(``InsufficientFunds(available=…)``). Third-party errors are translated at the boundary with
``raise … from exc``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FeintError(Exception):
    """Base of every error a client may see."""

    slug: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        # Extra members of the problem document (RFC 9457 section 3.2), e.g. ``available``.
        self.extensions = extensions


class BadRequest(FeintError):
    slug, status, title = "bad-request", 400, "Bad request"


class ValidationFailed(BadRequest):
    """Input that parsed but broke a rule; ``errors`` names each field and what was wrong."""

    slug, status, title = "validation-failed", 422, "Validation failed"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail, errors=errors or [])
        self.errors = errors or []


class Unauthenticated(FeintError):
    slug, status, title = "unauthenticated", 401, "Unauthenticated"


class Forbidden(FeintError):
    slug, status, title = "forbidden", 403, "Forbidden"


class NotFound(FeintError):
    slug, status, title = "not-found", 404, "Not found"


class MethodNotAllowed(FeintError):
    slug, status, title = "method-not-allowed", 405, "Method not allowed"


class Conflict(FeintError):
    slug, status, title = "conflict", 409, "Conflict"


class IdempotencyKeyReused(Conflict):
    slug, title = "idempotency-key-reused", "Idempotency key reused with a different request"


class PayloadTooLarge(FeintError):
    slug, status, title = "payload-too-large", 413, "Payload too large"


class RateLimited(FeintError):
    slug, status, title = "rate-limited", 429, "Too many requests"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail, retry_after_seconds=retry_after_seconds)
        self.retry_after_seconds = retry_after_seconds


class RequestTimeout(FeintError):
    slug, status, title = "request-timeout", 503, "Request timed out"


class DependencyUnavailable(FeintError):
    slug, status, title = "dependency-unavailable", 503, "Dependency unavailable"

    def __init__(self, detail: str, *, dependency: str) -> None:
        super().__init__(detail, dependency=dependency)
        self.dependency = dependency


class InvariantViolated(FeintError):
    """A rule that must always hold did not; the operation is rolled back."""

    slug, status, title = "invariant-violated", 500, "Invariant violated"


class ConfigError(Exception):
    """A setting is missing or malformed; start-up stops with exit code 2."""

    def __init__(self, variable: str, problem: str, expected: str) -> None:
        super().__init__(f"{variable}: {problem} (expected {expected})")
        self.variable = variable
        self.problem = problem
        self.expected = expected
