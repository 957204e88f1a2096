"""Fixtures of the shadow service's integration tests: the app on a real database, keys, helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from feint.platform.runtime import Platform
from feint.shadow import versions
from feint.shadow.app import create
from feint.shadow.jobs import EvaluationRunner
from feint.shadow.views import RUNNER_KEY
from tests.conftest import serve_app
from tests.integration.shadow import sigma

# The packaged starter set, before the fixture below replaces it in each test.
real_starter_documents = versions.starter_documents


@pytest.fixture(autouse=True)
def starter(monkeypatch: pytest.MonkeyPatch) -> tuple[versions.Document, ...]:
    """A known, one-rule starter set in place of the packaged one."""
    documents = tuple(versions.Document(name=f"starter-{i}.yml", yaml=text) for i, text in enumerate(sigma.STARTER))
    monkeypatch.setattr(versions, "starter_documents", lambda: documents)
    return documents


@pytest.fixture
async def shadow(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """The shadow app (its evaluation runner started) behind an in-process HTTP client."""
    async with serve_app(create(platform)) as client:
        yield client


@pytest.fixture
def keys(api_key: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """``keys("acme", "admin")`` → Authorization headers of a fresh key."""

    def make(tenant: str = "acme", scope: str = "admin") -> dict[str, str]:
        return {"authorization": f"Bearer {api_key(tenant=tenant, scope=scope)}"}

    return make


def runner_of(platform: Platform, **options: Any) -> EvaluationRunner:
    """Put a runner with ``options`` (an evaluator, bounds) on the platform before the app starts."""
    runner = EvaluationRunner(platform.db, **options)
    platform.extras[RUNNER_KEY] = runner
    return runner


async def new_version(
    client: httpx.AsyncClient, headers: dict[str, str], ruleset: str, *documents: Any, **extra: Any
) -> dict[str, Any]:
    """Create a rule set if needed and add a version; returns the version's JSON."""
    if (await client.get(f"/v1/rulesets/{ruleset}", headers=headers)).status_code == 404:
        created = await client.post("/v1/rulesets", json={"name": ruleset}, headers=headers)
        assert created.status_code == 201, created.text
    response = await client.post(
        f"/v1/rulesets/{ruleset}/versions",
        json={"message": extra.pop("message", "test version"), "documents": list(documents), **extra},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def walk_to(
    client: httpx.AsyncClient, headers: dict[str, str], ruleset: str, number: int, state: str
) -> dict[str, Any]:
    """Move a draft along draft → shadow → canary → production until it reaches ``state``."""
    body: dict[str, Any] = {}
    for step in ("shadow", "canary", "production"):
        response = await client.post(
            f"/v1/rulesets/{ruleset}/versions/{number}/transition",
            json={"to": step, "reason": f"to {step}"},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        if step == state:
            break
    return body
