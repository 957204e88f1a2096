"""The camouflage management app (port 5006): personas, bandit state, sessions, events, labels."""

from __future__ import annotations

from fastapi import FastAPI

from feint.camouflage import labels
from feint.platform.runtime import Platform
from feint.platform.web import create_app

DESCRIPTION = "Management API of the camouflage gateway: decoy personas, bandit state, sessions and events."


def create(platform: Platform) -> FastAPI:
    return create_app("camouflage", platform=platform, description=DESCRIPTION, routers=[labels.router])
