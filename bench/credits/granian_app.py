"""The credits app as an ASGI factory, for serving it with granian in `servers.py` (measurement only)."""

from __future__ import annotations

from typing import Any

from feint.platform.runtime import build
from feint.platform.serve import service_app
from feint.platform.telemetry import configure_logging
from feint.settings import get_settings


def create() -> Any:
    settings = get_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, stderr=False)
    if settings.database_url is None:
        raise SystemExit("FEINT_DATABASE_URL is required (the benchmark migrates it first)")
    return service_app("credits", build(settings, database_url=settings.database_url))
