"""Each /v1 operation's required scope, read from its `scope()` dependency, is enforced one scope below."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI

from feint.camouflage.app import create as create_camouflage
from feint.credits.app import create as create_credits
from feint.credits.config import CreditsSettings
from feint.platform.runtime import Platform
from feint.shadow.app import create as create_shadow
from tests.conftest import serve_app

pytestmark = pytest.mark.integration

# The scope just below each one (read is the lowest: any valid key of the tenant passes).
BELOW = {"read": None, "write": "read", "admin": "write", "operator": "admin"}


def required_scope(method: str, path: str, operation: dict[str, Any]) -> str:
    """The scope an operation's OpenAPI ``security`` names (from its `scope()` dependency); none fails the test."""
    roles = {role for requirement in operation.get("security", []) for role in requirement.get("HTTPBearer", [])}
    if len(roles) != 1 or not roles <= set(BELOW):
        pytest.fail(f"{method.upper()} {path} publishes scopes {sorted(roles)}: a /v1 route needs exactly one scope()")
    return roles.pop()


async def check_scopes(app: FastAPI, api_key: Callable[..., str]) -> int:
    """Call every documented /v1 operation with a key one scope below its own: 403 each time."""
    keys = {s: {"authorization": f"Bearer {api_key(tenant='acme', scope=s)}"} for s in ("read", "write", "admin")}
    checked = 0
    async with serve_app(app) as client:
        document: dict[str, Any] = (await client.get("/openapi.json")).json()
        for path, item in document["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for method, operation in item.items():
                needed = required_scope(method, path, operation)
                below = BELOW[needed]
                if below is None:
                    continue
                url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
                r = await client.request(method.upper(), url, headers=keys[below], json={})
                assert r.status_code == 403, (
                    f"{method.upper()} {path} needs {needed}; {below}: {r.status_code} {r.text}"
                )
                checked += 1
    return checked


async def test_credits_scopes_are_enforced(platform: Platform, api_key: Callable[..., str]) -> None:
    """Credits: every write/admin/operator operation refuses a key one scope below (hot routes included)."""
    app = create_credits(platform, settings=CreditsSettings(sweeper_interval_seconds=0, cache="off"))
    assert await check_scopes(app, api_key) >= 8


async def test_shadow_scopes_are_enforced(platform: Platform, api_key: Callable[..., str]) -> None:
    """Shadow: every write/admin operation refuses a key one scope below."""
    assert await check_scopes(create_shadow(platform), api_key) >= 8


async def test_camouflage_scopes_are_enforced(platform: Platform, api_key: Callable[..., str]) -> None:
    """Camouflage: changing the allow-list refuses a read key (every other route needs only read)."""
    assert await check_scopes(create_camouflage(platform), api_key) >= 2
