"""The shadow service app (port 5005): rule versions, offline evaluations, canaries."""

from __future__ import annotations

from fastapi import FastAPI

from feint.platform.runtime import Platform
from feint.platform.web import create_app
from feint.shadow import views
from feint.shadow.canary import views as canary_views
from feint.shadow.canary.controller import Controller
from feint.shadow.canary.live import DecisionLogSource
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


CONTROLLER_KEY = "shadow.canary_controller"


async def _start_canary(platform: Platform) -> None:
    controller = platform.extras.get(CONTROLLER_KEY)
    if controller is None:
        controller = platform.extras[CONTROLLER_KEY] = Controller(
            platform.db, source=DecisionLogSource.for_settings(platform.db, platform.settings)
        )
    await controller.start()


async def _stop_canary(platform: Platform) -> None:
    controller: Controller = platform.extras[CONTROLLER_KEY]
    await controller.stop()


def create(platform: Platform) -> FastAPI:
    return create_app(
        "shadow",
        platform=platform,
        description=DESCRIPTION,
        routers=[views.router, canary_views.router],
        on_startup=[_start_evaluations, _start_canary],
        on_shutdown=[_stop_canary, _stop_evaluations],
    )
