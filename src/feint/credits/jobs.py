"""What a request asks of the ledger (`Job`) and what a transaction answers (`Outcome`, `Committed`).

Shared by the two ways a job is committed: the general engine (`feint.credits.engine`, the rules in
Python over a locked snapshot) and the database's own posting of transfers
(`feint.credits.posting`, one server-side call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from feint.credits.book import Book
from feint.credits.models import Applied, BatchMode, Operation
from feint.credits.store.ledger import Loaded
from feint.errors import FeintError, InvariantViolated

Results = list[Applied | FeintError]


@dataclass(frozen=True)
class Rendered:
    status: int
    body: bytes


@dataclass(frozen=True)
class Idempotency:
    key: str
    request_hash: bytes


@dataclass(frozen=True)
class Job:
    tenant_id: UUID
    operations: Sequence[Operation]
    mode: BatchMode
    render: Callable[[Results, Book], Rendered]
    idempotency: Idempotency | None = None
    batch: bool = False  # answers a result per operation; a single operation's failure is its answer
    everything: bool = False  # a batch answers every result, not only the failures


@dataclass(frozen=True)
class Outcome:
    """What a job answered: a rendered success, or an error to raise; ``replayed`` from a stored key."""

    rendered: Rendered | None = None
    error: FeintError | None = None
    replayed: bool = False

    def unwrap(self) -> Rendered:
        if self.error is not None:
            raise self.error
        if self.rendered is None:  # pragma: no cover - an outcome always holds one of the two
            raise InvariantViolated("empty outcome")
        return self.rendered


@dataclass
class Committed:
    """A transaction's outcomes and the book it committed (for the cache)."""

    outcomes: list[Outcome]
    book: Book
    loaded: Loaded | None = None
