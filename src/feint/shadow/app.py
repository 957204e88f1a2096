"""The shadow service app (port 5005): rule versions, offline evaluations, canaries."""

from __future__ import annotations

from fastapi import FastAPI

from feint.platform.runtime import Platform
from feint.platform.web import create_app

DESCRIPTION = "Versioned Sigma rules, evaluated on recorded traffic against production before they go live."


def create(platform: Platform) -> FastAPI:
    return create_app("shadow", platform=platform, description=DESCRIPTION)
