"""spring-boot-tomcat: the Whitelabel page and the JSON error body, byte for byte as Spring Boot 3 makes them.

The expected bytes are rebuilt here from Spring Boot's source, step by step, not copied from the
persona: spring-projects/spring-boot v3.5.9,
  spring-boot-project/spring-boot-autoconfigure/src/main/java/org/springframework/boot/autoconfigure/
      web/servlet/error/ErrorMvcAutoConfiguration.java  (StaticView.render: the Whitelabel HTML)
  spring-boot-project/spring-boot/src/main/java/org/springframework/boot/web/servlet/error/
      DefaultErrorAttributes.java  (the attribute order: timestamp, status, error, path)
with Jackson's default serialisation of that LinkedHashMap (no spaces, Date as ISO-8601 with
milliseconds and +00:00 under Spring Boot's WRITE_DATES_AS_TIMESTAMPS=false).
"""

from __future__ import annotations

import html
import json
import re

import pytest

from feint.camouflage.decoy import persona, recorder
from feint.camouflage.decoy.contract import Connection
from feint.camouflage.decoy.responder import PersonaResponder

pytestmark = pytest.mark.unit

CONN = Connection(peer_host="127.0.0.1", peer_port=50000, local_host="127.0.0.1", local_port=8080, requests_served=0)
JAVA_DATE = re.compile(rb"[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d UTC \d{4}")
ISO_MILLIS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


def _answer(payload: bytes) -> bytes:
    p = persona.load("spring-boot-tomcat")
    request = recorder.requests_of(payload, p)[0]
    return PersonaResponder(p).respond(request, CONN).data


def _whitelabel(timestamp: str, error: str, status: int) -> bytes:
    """StaticView.render's StringBuilder, append by append (message and trace are null by default)."""
    builder = [
        "<html><body><h1>Whitelabel Error Page</h1>",
        "<p>This application has no explicit mapping for /error, so you are seeing this as a fallback.</p>",
        "<div id='created'>",
        timestamp,
        "</div>",
        "<div>There was an unexpected error (type=",
        html.escape(error),
        ", status=",
        html.escape(str(status)),
        ").</div>",
        "</body></html>",
    ]
    return "".join(builder).encode()


def _error_json(timestamp: str, status: int, error: str, path: str) -> bytes:
    """DefaultErrorAttributes' map in insertion order, as Jackson writes it."""
    attributes = {"timestamp": timestamp, "status": status, "error": error, "path": path}
    return json.dumps(attributes, separators=(",", ":")).encode()


def test_whitelabel_page_for_a_browser_is_spring_boots_byte_for_byte() -> None:
    """Accept: text/html gets the Whitelabel page, text/html;charset=UTF-8, Content-Length framing."""
    data = _answer(
        b"GET /missing HTTP/1.1\r\nHost: app\r\nAccept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
        b"Connection: keep-alive\r\n\r\n"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    stamp = JAVA_DATE.search(body)
    assert stamp is not None, body
    assert body == _whitelabel(stamp.group().decode(), "Not Found", 404)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 404 "
    assert lines[1:4] == [
        b"Vary: Origin",
        b"Vary: Access-Control-Request-Method",
        b"Vary: Access-Control-Request-Headers",
    ]
    assert lines[4:7] == [
        b"Content-Type: text/html;charset=UTF-8",
        b"Content-Language: en",
        f"Content-Length: {len(body)}".encode(),
    ]
    assert lines[7].startswith(b"Date: ") and lines[8:] == [b"Keep-Alive: timeout=60", b"Connection: keep-alive"]


def test_json_error_body_for_everyone_else_is_spring_boots_byte_for_byte() -> None:
    """No Accept (curl's */* alike) gets the JSON body, application/json, chunked in one chunk."""
    for accept in (b"", b"Accept: */*\r\n", b"Accept: application/json\r\n"):
        data = _answer(b"GET /api/users HTTP/1.1\r\nHost: app\r\n" + accept + b"\r\n")
        head, _, wire = data.partition(b"\r\n\r\n")
        size, _, rest = wire.partition(b"\r\n")
        body = rest[: int(size, 16)]
        assert rest[int(size, 16) :] == b"\r\n0\r\n\r\n"
        stamp = ISO_MILLIS.search(body)
        assert stamp is not None, body
        assert body == _error_json(stamp.group().decode(), 404, "Not Found", "/api/users")
        # Tomcat names keep-alive only to a client that asked for it (recorded): none here.
        assert head.split(b"\r\n")[4:] == [
            b"Content-Type: application/json",
            b"Transfer-Encoding: chunked",
            b"Date: " + head.split(b"Date: ")[1],
        ]


def test_methods_spring_processes_itself_get_its_404_and_trace_gets_tomcats_405() -> None:
    """PATCH and unknown methods reach the DispatcherServlet (FrameworkServlet.service); TRACE stops at Tomcat."""
    patch = _answer(b"PATCH /x HTTP/1.1\r\nHost: app\r\n\r\n")
    assert b'"status":404,"error":"Not Found","path":"/x"' in patch
    trace = _answer(b"TRACE / HTTP/1.1\r\nHost: app\r\n\r\n")
    assert trace.startswith(b"HTTP/1.1 405 \r\nAllow: ")
    assert b"<h1>HTTP Status 405 \xe2\x80\x93 Method Not Allowed</h1>" in trace


def test_spring_persona_announces_no_version() -> None:
    """Spring Boot's Tomcat sends no Server header: a --version has nothing to change (clear error)."""
    with pytest.raises(persona.PersonaError, match="does not announce a version"):
        persona.load("spring-boot-tomcat", version="3.5.9")
