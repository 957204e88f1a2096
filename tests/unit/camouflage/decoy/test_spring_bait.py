"""spring-boot-tomcat's bait: static resources and an actuator with honeytokens (spring-layer.yaml cites
the Spring sources of each header)."""

from __future__ import annotations

import json

import pytest

from feint.camouflage.decoy import persona, recorder
from feint.camouflage.decoy.contract import Connection
from feint.camouflage.decoy.responder import PersonaResponder

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=8080, requests_served=0)
ACTUATOR = b"Content-Type: application/vnd.spring-boot.actuator.v3+json\r\n"


def _get(path: str, fill: dict[str, str] | None = None) -> bytes:
    p = persona.load("spring-boot-tomcat")
    responder = PersonaResponder(p, fill=(lambda kind: (fill or {}).get(kind, "x")))
    request = recorder.requests_of(f"GET {path} HTTP/1.1\r\nHost: shop.example:8080\r\n\r\n".encode(), p)[0]
    return responder.respond(request, CONN).data


def _dechunk(data: bytes) -> bytes:
    body, _ = recorder._dechunk(data.split(b"\r\n\r\n", 1)[1])
    return body


def test_actuator_env_shows_the_sessions_tokens_as_spring_boot_3_json() -> None:
    data = _get("/actuator/env", {"db_password": "S3cr3t-db", "aws_access_key": "AKIAEXAMPLE"})
    assert data.startswith(b"HTTP/1.1 200 \r\n") and ACTUATOR in data and b"Transfer-Encoding: chunked\r\n" in data
    doc = json.loads(_dechunk(data))
    assert list(doc) == ["activeProfiles", "defaultProfiles", "propertySources"]
    values = {k: v["value"] for source in doc["propertySources"] for k, v in source["properties"].items()}
    assert values["SPRING_DATASOURCE_PASSWORD"] == "S3cr3t-db" and values["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"


def test_actuator_links_name_the_requested_host() -> None:
    data = _get("/actuator")
    links = json.loads(_dechunk(data))["_links"]
    assert ACTUATOR in data
    assert links["self"] == {"href": "http://shop.example:8080/actuator", "templated": False}
    assert links["env-toMatch"]["templated"] is True


@pytest.mark.parametrize("path", ["/.env", "/.git/config", "/admin/login.html", "/backup/orders-db.sql"])
def test_static_bait_is_served_as_resource_handler_does(path: str) -> None:
    data = _get(path, {"db_password": "S3cr3t-db", "git_password": "g1t-pass", "csrf": "c5rf", "password_hash": "$2a$"})
    head, body = data.split(b"\r\n\r\n", 1)
    names = [line.split(b":", 1)[0] for line in head.split(b"\r\n")[1:]]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert names == [
        b"Vary",
        b"Vary",
        b"Vary",
        b"Last-Modified",
        b"Accept-Ranges",
        b"Content-Type",
        b"Content-Length",
        b"Date",
    ]
    assert any(token in body for token in (b"S3cr3t-db", b"g1t-pass", b"c5rf", b"$2a$"))


@pytest.mark.parametrize("path", ["/actuator/beans", "/", "/admin/"])
def test_everything_else_stays_springs_404(path: str) -> None:
    assert _get(path).startswith(b"HTTP/1.1 404 \r\n")
