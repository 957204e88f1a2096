"""A real nginx on a loopback port with the caller's ``http`` block: one harness for the external
tests and for ``bench/camouflage`` (which imports it with the repository root on ``sys.path``).

    with running_nginx(tmp, http=f"server {{ listen 127.0.0.1:{port}; root {www}; }}", port=port):
        ...

The configuration is a minimal one around the caller's directives: one worker, everything nginx
writes (pid, error log, temporary files, the access log when asked) under ``folder``, in the
foreground, as root only when we are root (nginx's workers otherwise drop to ``nobody``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NGINX_START_SECONDS_MAX = 15.0
NGINX_STOP_SECONDS_MAX = 10.0
WAIT_STEP_SECONDS = 0.05


def nginx_binary() -> str | None:
    """Debian's nginx, if installed (``/usr/sbin`` is not on every PATH)."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, *, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once 127.0.0.1:``port`` accepts; raise if ``proc`` exits first or after the bound."""
    deadline = time.monotonic() + NGINX_START_SECONDS_MAX
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(WAIT_STEP_SECONDS)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {NGINX_START_SECONDS_MAX} s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (nginx's master and its workers), from Linux /proc."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(child) for child in children.read_text().split()] if children.exists() else []
    return [pid, *found]


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time the processes ``pids`` have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (after pid, comm: fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def nginx_conf(folder: Path, *, http: str, worker_connections: int = 1024, access_log: bool = False) -> Path:
    """Write ``folder/nginx.conf`` around the ``http`` directives; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    log = f"{folder}/access.log" if access_log else "off"
    conf.write_text(
        textwrap.dedent(
            f"""\
            daemon off;
            {"user root;" if os.geteuid() == 0 else ""}
            worker_processes 1;
            pid {folder}/nginx.pid;
            error_log {folder}/error.log;
            events {{ worker_connections {worker_connections}; }}
            http {{
                access_log {log};
                client_body_temp_path {folder};
                proxy_temp_path {folder};
                fastcgi_temp_path {folder};
                uwsgi_temp_path {folder};
                scgi_temp_path {folder};
            """
        )
        + textwrap.indent(textwrap.dedent(http).strip(), "    ")
        + "\n}\n"
    )
    return conf


@contextmanager
def running_nginx(
    folder: Path,
    *,
    http: str,
    port: int,
    binary: str | None = None,
    worker_connections: int = 1024,
    access_log: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with ``nginx_conf(folder, http=…)``, listening on ``port`` (which ``http`` names);
    stopped on exit."""
    path = binary or nginx_binary()
    if path is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    conf = nginx_conf(folder, http=http, worker_connections=worker_connections, access_log=access_log)
    proc = subprocess.Popen([path, "-c", str(conf), "-p", str(folder)])
    try:
        wait_listening(port, proc=proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=NGINX_STOP_SECONDS_MAX)
