"""Fixtures of the backup tests: a real S3 server (SeaweedFS from the wheel), a folder, a keyset, a ledger."""

from __future__ import annotations

import base64
import http.server
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from feint.backup import keys as backup_keys
from feint.backup.drill import LedgerWriter
from feint.backup.seaweed import LocalS3, local_s3
from feint.backup.storage import LocalStorage, S3Storage, Storage
from feint.platform.crypto import LocalMasterKey
from feint.settings import Settings
from tests.conftest import TEST_MASTER_KEY


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    """SeaweedFS on loopback ports, for the whole run."""
    with local_s3(volume_size_limit_mb=256) as server:
        yield server


@pytest.fixture(params=["s3", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backup test runs against S3 (a fresh prefix) and against a local folder."""
    if request.param == "file":
        return LocalStorage(tmp_path / "backups")
    server: LocalS3 = request.getfixturevalue("s3_server")
    s3 = S3Storage(bucket="feint-tests", prefix=f"run-{secrets.token_hex(4)}", endpoint_url=server.endpoint)
    s3.ensure_bucket()
    return s3


@pytest.fixture
def s3_storage(s3_server: LocalS3) -> S3Storage:
    s3 = S3Storage(bucket="feint-tests", prefix=f"run-{secrets.token_hex(4)}", endpoint_url=s3_server.endpoint)
    s3.ensure_bucket()
    return s3


@pytest.fixture
def provider() -> LocalMasterKey:
    return LocalMasterKey(base64.b64decode(TEST_MASTER_KEY))


@pytest.fixture
def keyset_path(tmp_path: Path, provider: LocalMasterKey) -> Path:
    path = tmp_path / "backup.keyset"
    backup_keys.generate(path, provider)
    return path


@pytest.fixture
def keyset(keyset_path: Path, provider: LocalMasterKey) -> backup_keys.BackupKeys:
    return backup_keys.load(keyset_path, provider)


@pytest.fixture
def filled_ledger(clean_db: str, make_settings: Callable[..., Settings]) -> LedgerWriter:
    """The test database with two tenants' accounts, grants and 40 transfers, written through the API."""
    writer = LedgerWriter(make_settings(database_url=clean_db), clean_db)
    writer.open_accounts()
    writer.transfer(40)
    return writer


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A loopback HTTP server that records each request (method, path, body) and answers 200."""
    seen: list[tuple[str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append(("POST", self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
