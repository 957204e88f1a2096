"""TLS between the services: what a server requires of its clients, what an internal client presents.

Servers (the management APIs under uvicorn) speak TLS 1.2 at least when ``FEINT_TLS_CERT_FILE``
and ``FEINT_TLS_KEY_FILE`` are set; with ``FEINT_TLS_CLIENT_CA_FILE`` they also require a client
certificate that chains to that CA, and a client without one fails the handshake (before any HTTP
is read). The gateway's public listener never asks for client certificates: browsers and bots
connect there.

Internal clients (the gateway's metering calls to credits, `feint status`) present
``FEINT_TLS_CLIENT_CERT_FILE``/``FEINT_TLS_CLIENT_KEY_FILE`` when set and verify the services'
certificates with ``FEINT_TLS_SERVER_CA_FILE`` (default: the system's trust store).
"""

from __future__ import annotations

import ssl
from typing import Any, Final

from feint.settings import Settings

TLS_VERSION_MIN: Final = ssl.TLSVersion.TLSv1_2


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options: none without a certificate; client certificates required with a client CA."""
    if not settings.tls_enabled:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 at least; OpenSSL negotiates 1.3 first when the peer has it."""
    context.minimum_version = TLS_VERSION_MIN
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context of an internal client: verifies the service (system store or
    ``FEINT_TLS_SERVER_CA_FILE``) and presents the client certificate when one is set."""
    cafile = None if settings.tls_server_ca_file is None else str(settings.tls_server_ca_file)
    context = harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile))
    if settings.tls_client_cert_file is not None and settings.tls_client_key_file is not None:
        context.load_cert_chain(str(settings.tls_client_cert_file), str(settings.tls_client_key_file))
    return context


def probe_context(settings: Settings) -> ssl.SSLContext:
    """`feint status`'s context for its own loopback services: verified when
    ``FEINT_TLS_SERVER_CA_FILE`` names the CA, else unverified (a self-signed certificate is
    expected there); presents the client certificate either way, so mTLS services answer it."""
    context = client_context(settings)
    if settings.tls_server_ca_file is None:
        # A probe of our own loopback services, which may use a self-signed certificate; it
        # reads only /health and sends no secret. Nothing else may use an unverified context.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
