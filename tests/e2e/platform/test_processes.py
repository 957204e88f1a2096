"""Whole processes: the CLI, `feint serve` across processes on Redis, TLS, traces, `feint up`."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port, running_service, service_env

pytestmark = pytest.mark.e2e


def feint(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feint", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_bad_setting_exits_2_naming_variable(tmp_path: Path) -> None:
    """A malformed FEINT_* variable stops start-up with exit 2 and one line naming it, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    env.update(FEINT_HOME=str(tmp_path), FEINT_SHADOW_PORT="not-a-port")
    result = feint("serve", "shadow", env=env)
    assert result.returncode == 2
    assert "FEINT_SHADOW_PORT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_keys_cli(clean_db: str, tmp_path: Path) -> None:
    """`feint keys create` prints the key alone on stdout; list shows it without the secret; revoke works once."""
    env = service_env(clean_db, tmp_path, FEINT_LOG_LEVEL="info")
    created = feint("keys", "create", "--tenant", "acme", "--scope", "write", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n" and key.startswith("feint_")
    operator = feint("keys", "create", "--operator", env=env)
    assert operator.returncode == 0
    listed = feint("keys", "list", "--tenant", "acme", env=env)
    assert "acme" in listed.stdout and key not in listed.stdout
    key_id = created.stderr.split("created key ")[1].split()[0]
    assert feint("keys", "revoke", key_id, env=env).returncode == 0
    again = feint("keys", "revoke", key_id, env=env)
    assert again.returncode == 1 and "already revoked" in again.stderr
    assert feint("keys", "revoke", "nope", env=env).returncode == 2
    assert feint("keys", "create", "--scope", "write", env=env).returncode == 2
    assert feint("keys", "create", "--tenant", "acme", "--scope", "root", env=env).returncode == 2
    bad_name = feint("keys", "create", "--tenant", "Not Valid", env=env)
    assert bad_name.returncode == 1 and "tenant name" in bad_name.stderr


def test_migrate_cli(clean_db: str, tmp_path: Path) -> None:
    """`feint migrate` reports an up-to-date database and refuses an impossible target."""
    env = service_env(clean_db, tmp_path)
    result = feint("migrate", env=env)
    assert result.returncode == 0 and "up to date" in result.stdout
    bad = feint("migrate", "--target", "999", env=env)
    assert bad.returncode == 1 and "outside" in bad.stderr
    assert feint("version", env=env).stdout.strip()


def test_rate_limit_shared_across_processes_on_redis(
    clean_db: str, redis_url: str, redis_prefix: str, tmp_path: Path, api_key: object
) -> None:
    """Two service processes on one Redis share a key's bucket: the burst is spent across both."""
    key = api_key(tenant="acme", scope="read")  # type: ignore[operator]
    env = service_env(
        clean_db,
        tmp_path,
        FEINT_REDIS_URL=redis_url,
        FEINT_REDIS_KEY_PREFIX=redis_prefix + "rl2:",
        FEINT_RATE_LIMIT_BURST="4",
        FEINT_RATE_LIMIT_PER_SECOND="0.01",
    )
    with running_service("shadow", env) as a, running_service("shadow", env) as b:
        codes = []
        for i in range(6):
            base = a if i % 2 == 0 else b
            response = httpx.get(base + "/v1/whoami", headers={"authorization": f"Bearer {key}"})
            codes.append(response.status_code)
        assert codes.count(429) == 2, codes
        assert codes[:4] == [200] * 4
        limited = httpx.get(b + "/v1/whoami", headers={"authorization": f"Bearer {key}"})
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_12_or_newer(clean_db: str, tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    """With a certificate the service speaks HTTPS, TLS 1.3 first, and refuses TLS 1.1."""
    cert, key = tls_files
    port = free_port()
    env = service_env(clean_db, tmp_path, FEINT_TLS_CERT_FILE=str(cert), FEINT_TLS_KEY_FILE=str(key))
    proc = subprocess.Popen([sys.executable, "-m", "feint", "serve", "credits", "--port", str(port)], env=env)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/health", verify=context)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert response.status_code == 200
        with httpx.Client(verify=context) as client, client.stream("GET", f"https://127.0.0.1:{port}/health") as r:
            assert r.extensions["network_stream"].get_extra_info("ssl_object").version() == "TLSv1.3"
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deliberately a legacy client
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", verify=old)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Collector.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def otlp_collector() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Collector.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_traces_exported_over_otlp(clean_db: str, tmp_path: Path, otlp_collector: str) -> None:
    """With FEINT_OTLP_ENDPOINT set, request and database spans reach the collector."""
    env = service_env(clean_db, tmp_path, FEINT_OTLP_ENDPOINT=otlp_collector)
    with running_service("camouflage", env) as base:
        assert httpx.get(base + "/ready").status_code == 200
    paths = [path for path, _ in _Collector.received]
    assert "/v1/traces" in paths
    payload = b"".join(body for _, body in _Collector.received)
    assert b"GET /ready" in payload and b"db.connection" in payload


def test_feint_up_runs_everything_and_stops_clean() -> None:
    """`feint up` on a bare home brings all services up on the embedded database; SIGTERM leaves no process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEINT_")}
    ports = {name: free_port() for name in ("credits", "shadow", "camouflage", "gateway")}
    env.update({f"FEINT_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    # Not under pytest's tmp_path: pytest resets its root to mode 0700 whenever a session starts,
    # which the embedded server's own user could then no longer traverse.
    tmp_path = Path(tempfile.mkdtemp(prefix="feint-up-"))
    env["FEINT_HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "feint", "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        pending = {
            name: f"http://127.0.0.1:{port}/{'health' if name != 'gateway' else ''}" for name, port in ports.items()
        }
        while pending and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            for name, url in list(pending.items()):
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        assert not pending
        assert "Demo shop" in httpx.get(f"http://127.0.0.1:{ports['gateway']}/").text
        status = feint("status", env=env)
        assert status.returncode == 0, status.stdout
        children = psutil.Process(proc.pid).children(recursive=True)
        postgres = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
        assert postgres
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "is up" in err and "healthy" in err
    time.sleep(0.5)
    assert not [p for p in [*children, *postgres] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    down = feint("status", env=env)
    assert down.returncode == 1 and "down" in down.stdout
    shutil.rmtree(tmp_path, ignore_errors=True)
