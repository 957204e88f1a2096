"""The credits OpenAPI document is the recorded one: the hand-dispatched hot routes change nothing in it
(re-recorded when the batch answer's schema was documented: field descriptions and an example)."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from feint.credits.app import create
from feint.platform.runtime import build
from feint.settings import Settings

pytestmark = pytest.mark.unit

RECORDED = Path(__file__).parent / "data" / "openapi.json"


def test_openapi_unchanged() -> None:
    """Every route, model, example and response of /openapi.json equals the recorded document."""
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none", master_key=base64.b64encode(b"B" * 32).decode(), env="test"
    )
    app = create(build(settings, database_url="postgresql://nobody@127.0.0.1:1/none"))
    assert app.openapi() == orjson.loads(RECORDED.read_bytes())
