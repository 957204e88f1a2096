"""The camouflage management app (port 5006): personas, arms, sessions, events, honeytokens,
decision explanations and the allow-list (routes in ``views.py``), and labels (``labels.py``)."""

from __future__ import annotations

from fastapi import FastAPI

from feint.camouflage import labels
from feint.camouflage.views import router
from feint.platform.runtime import Platform
from feint.platform.web import create_app

DESCRIPTION = (
    "Management API of the camouflage gateway: decoy personas, bandit arms and their statistics, "
    "decoy sessions, events, honeytokens, the threat explanation of any logged decision, and the "
    "allow-list of known-good clients."
)


def create(platform: Platform) -> FastAPI:
    # Its pod carries the site's traffic and decoy selection falls back to PostgreSQL without
    # Redis, so a Redis outage must not take the gateway out of service (/ready stays 200).
    return create_app(
        "camouflage",
        platform=platform,
        routers=[router, labels.router],
        description=DESCRIPTION,
        redis_optional=True,
    )
