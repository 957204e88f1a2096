"""The OpenAPI document lists the platform's statuses on every route, with problem+json bodies."""

from __future__ import annotations

import pytest

from feint.platform.openapi import PROBLEM_MEDIA_TYPE, with_problems

pytestmark = pytest.mark.unit

DOCUMENT = {
    "openapi": "3.1.0",
    "paths": {
        "/health": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/v1/things": {
            "get": {"responses": {"200": {"description": "ok"}}},
            "post": {
                "responses": {
                    "201": {"description": "made"},
                    "422": {"description": "bad", "content": {"application/json": {"schema": {}}}},
                }
            },
        },
        "/v1/things/{id}": {"get": {"responses": {"200": {"description": "ok"}}}, "parameters": []},
    },
    "components": {"schemas": {"HTTPValidationError": {}, "Thing": {}}},
}


def test_every_route_gets_the_platform_statuses_as_problem_json() -> None:
    """Probes get 400/405/413/503; /v1 routes also 401/403/404/422/429; mutations 409; all errors problem+json."""
    doc = with_problems(DOCUMENT)
    health = doc["paths"]["/health"]["get"]["responses"]
    assert set(health) == {"200", "400", "405", "413", "503"}
    listing = doc["paths"]["/v1/things"]["get"]["responses"]
    assert set(listing) == {"200", "400", "401", "403", "404", "405", "413", "422", "429", "503"}
    creating = doc["paths"]["/v1/things"]["post"]["responses"]
    assert "409" in creating
    assert creating["422"]["description"] == "bad"  # the route's own description is kept
    for responses in (health, listing, creating):
        for status, response in responses.items():
            if status >= "400":
                assert list(response["content"]) == [PROBLEM_MEDIA_TYPE]
            else:
                assert "content" not in response or PROBLEM_MEDIA_TYPE not in response["content"]
    assert "Problem" in doc["components"]["schemas"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "Thing" in doc["components"]["schemas"]
    assert "409" not in DOCUMENT["paths"]["/v1/things"]["post"]["responses"]  # the input is not changed
