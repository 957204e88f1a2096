"""mTLS between services (certificates made in the test with the openssl command): with FEINT_TLS_CLIENT_CA_FILE a service refuses, at the TLS layer, a
client without a certificate from that CA and any client below TLS 1.2; the internal clients
(the gateway's metering client) present FEINT_TLS_CLIENT_CERT_FILE and are served."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from feint.camouflage.engine.gateway_config import MeteringSettings
from feint.camouflage.engine.metering import Metering, MeteringFailed
from feint.credits.app import create as create_credits
from feint.credits.config import CreditsSettings
from feint.errors import ConfigError
from feint.platform import tls
from feint.platform.runtime import build
from feint.platform.serve import uvicorn_server
from feint.settings import Settings, check_tls
from tests.conftest import free_port

pytestmark = pytest.mark.integration

HANDSHAKE_SECONDS_MAX = 10.0


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str, subject: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-subj", f"/CN={subject}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, *, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, request, ext = (folder / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(request))  # fmt: skip
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """With the openssl command: a CA, a service certificate for 127.0.0.1, a client certificate
    from the CA, and a client certificate from another CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "ca", "feint test CA")
    rogue_ca = _ca(folder, "rogue-ca", "someone else's CA")
    server = _leaf(
        folder, "credits", ca=ca,
        extensions="basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )  # fmt: skip
    client = _leaf(folder, "gateway", ca=ca, extensions="basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    rogue = _leaf(folder, "rogue", ca=rogue_ca, extensions="basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server[0], server[1], client[0], client[1], rogue[0], rogue[1])


def _server_settings(make_settings: Callable[..., Settings], pki: Pki, **extra: object) -> Settings:
    return make_settings(
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
        rate_limit_per_second=100_000.0,
        rate_limit_burst=100_000,
        **extra,
    )


@contextlib.asynccontextmanager
async def serving(app: FastAPI, settings: Settings) -> AsyncIterator[int]:
    """The app under the real uvicorn server `feint serve` builds, with the settings' TLS."""
    port = free_port()
    server = uvicorn_server(app, settings=settings, port=port, host="127.0.0.1")
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(HANDSHAKE_SECONDS_MAX * 3):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await task


def _client(pki: Pki, *, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _get_health(port: int, context: ssl.SSLContext) -> tuple[str, bytes]:
    """One GET /health over TLS on a raw socket: the protocol version and the answer's first bytes."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_SECONDS_MAX) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = conn.recv(64)
        if not answer:
            raise ConnectionResetError("closed without an answer")
        return str(conn.version()), answer


@pytest.fixture
async def credits_port(
    clean_db: str, make_settings: Callable[..., Settings], pki: Pki
) -> AsyncIterator[tuple[int, Settings]]:
    settings = _server_settings(make_settings, pki, database_url=clean_db)
    platform = build(settings, database_url=clean_db)
    app = create_credits(platform, settings=CreditsSettings(sweeper_interval_seconds=0, cache="off"))
    async with serving(app, settings) as port:
        yield port, settings


async def test_client_certificate_from_the_ca_required(credits_port: tuple[int, Settings], pki: Pki) -> None:
    """No certificate, or one from another CA: the handshake fails and no HTTP is answered; the CA's: 200."""
    port, _ = credits_port
    for context in (_client(pki), _client(pki, cert=pki.rogue_cert, key=pki.rogue_key)):
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            await asyncio.to_thread(_get_health, port, context)
    version, answer = await asyncio.to_thread(_get_health, port, _client(pki, cert=pki.client_cert, key=pki.client_key))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert version == "TLSv1.3"


async def test_tls_1_2_served_tls_1_1_refused(credits_port: tuple[int, Settings], pki: Pki) -> None:
    """A client capped at TLS 1.2 is served; one capped at TLS 1.1 (weak ciphers allowed) is refused."""
    port, _ = credits_port
    twelve = _client(pki, cert=pki.client_cert, key=pki.client_key)
    twelve.maximum_version = ssl.TLSVersion.TLSv1_2
    version, answer = await asyncio.to_thread(_get_health, port, twelve)
    assert (version, answer[:13]) == ("TLSv1.2", b"HTTP/1.1 200 ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated: the point here
        eleven = _client(pki, cert=pki.client_cert, key=pki.client_key)
        eleven.set_ciphers("DEFAULT:@SECLEVEL=0")
        eleven.minimum_version = ssl.TLSVersion.TLSv1
        eleven.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(_get_health, port, eleven)


async def test_metering_client_presents_its_certificate(
    credits_port: tuple[int, Settings], pki: Pki, api_key: Callable[..., str], make_settings: Callable[..., Settings]
) -> None:
    """The gateway's metering client, with FEINT_TLS_CLIENT_CERT_FILE and FEINT_TLS_SERVER_CA_FILE,
    charges 5 requests over mTLS; without the client certificate it cannot reach credits."""
    port, _ = credits_port
    base = f"https://127.0.0.1:{port}"
    gateway = make_settings(
        tls_client_cert_file=pki.client_cert, tls_client_key_file=pki.client_key, tls_server_ca_file=pki.ca
    )
    operator_key = api_key(scope="operator")
    write = {"authorization": f"Bearer {api_key(tenant='acme', scope='write')}"}
    async with httpx.AsyncClient(base_url=base, verify=tls.client_context(gateway)) as client:
        account = await client.post("/v1/accounts", json={"code": "gateway-requests"}, headers=write)
        assert account.status_code == 201, account.text
        account_id = account.json()["id"]
        grant = await client.post(
            "/v1/grants",
            json={"account_id": account_id, "amount": 100},
            headers={"authorization": f"Bearer {operator_key}", "feint-tenant": "acme"},
        )
        assert grant.status_code == 201, grant.text
        metering = MeteringSettings(
            mode="open", credits_url=base, operator_key=operator_key, account=uuid.UUID(account_id), hold_credits=10
        )
        meter = Metering(metering, tenant="acme", tenant_id=None, events=None, tls=tls.client_context(gateway))
        for _ in range(5):
            assert meter.admit()
        await meter.step()
        await meter.close()
        balance = (await client.get(f"/v1/accounts/{account_id}", headers=write)).json()
    assert meter.charged == 5
    assert (balance["posted"], balance["pending"]) == (95, 0)

    anonymous = make_settings(tls_server_ca_file=pki.ca)
    stranger = Metering(metering, tenant="acme", tenant_id=None, events=None, tls=tls.client_context(anonymous))
    stranger.admit()
    with pytest.raises(MeteringFailed):
        await stranger.step()
    await stranger.close()


def test_tls_settings_are_checked(make_settings: Callable[..., Settings], pki: Pki, tmp_path: Path) -> None:
    """A client CA without TLS, a client certificate without its key, a missing file: ConfigError naming it."""
    with pytest.raises(ConfigError, match="FEINT_TLS_CLIENT_CA_FILE"):
        check_tls(make_settings(tls_client_ca_file=pki.ca))
    with pytest.raises(ConfigError, match="FEINT_TLS_CLIENT_CERT_FILE"):
        check_tls(make_settings(tls_client_cert_file=pki.client_cert))
    with pytest.raises(ConfigError, match="FEINT_TLS_SERVER_CA_FILE"):
        check_tls(make_settings(tls_server_ca_file=tmp_path / "absent.pem"))
    check_tls(_server_settings(make_settings, pki))
    assert tls.server_options(_server_settings(make_settings, pki))["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert "ssl_cert_reqs" not in tls.server_options(
        make_settings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    )
