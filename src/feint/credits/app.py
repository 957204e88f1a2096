"""The credits service app (port 5004): the ledger's routes on the shared plumbing."""

from __future__ import annotations

from fastapi import FastAPI

from feint.platform.runtime import Platform
from feint.platform.web import create_app

DESCRIPTION = "Double-entry credits ledger: accounts, grants, transfers, holds, batches, audit chain."


def create(platform: Platform) -> FastAPI:
    return create_app("credits", platform=platform, description=DESCRIPTION)
