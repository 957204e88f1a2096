"""The shadow service app (port 5005): rule versions, offline evaluations, canaries."""

from __future__ import annotations

from fastapi import FastAPI

from feint.platform.runtime import Platform
from feint.platform.web import create_app
from feint.shadow import views
from feint.shadow.canary import views as canary_views
from feint.shadow.jobs import EvaluationRunner

DESCRIPTION = "Versioned Sigma rules, evaluated on recorded traffic against production before they go live."


async def _start_evaluations(platform: Platform) -> None:
    runner = platform.extras.get(views.RUNNER_KEY)
    if runner is None:
        runner = platform.extras[views.RUNNER_KEY] = EvaluationRunner(platform.db)
    await runner.start()


async def _stop_evaluations(platform: Platform) -> None:
    runner: EvaluationRunner = platform.extras[views.RUNNER_KEY]
    await runner.stop()


def create(platform: Platform) -> FastAPI:
    return create_app(
        "shadow",
        platform=platform,
        description=DESCRIPTION,
        routers=[views.router, canary_views.router],
        on_startup=[_start_evaluations],
        on_shutdown=[_stop_evaluations],
    )
