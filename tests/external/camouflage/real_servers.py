"""Real servers on loopback, configured as their Debian packages ship plus one named change.

Used by the variant fidelity tests and to (re-)record the shipped variant personas:

    .venv/bin/python -m tests.external.camouflage.real_servers record nginx-debian-tokens-off

Each variant names the persona it is recorded into, the persona whose site tree the server
serves, and the configuration change against the package's defaults. The same table drives
the tests (tests/external/camouflage/test_variants.py), so a shipped recording and its check
cannot drift apart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from feint.camouflage.decoy import persona, recorder
from tests.nginx import free_port

START_SECONDS_MAX = 60.0  # Tomcat's JVM takes a few seconds on a loaded 2-core machine
TOMCAT_HOME = Path("/usr/share/tomcat10")


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {START_SECONDS_MAX} s")


def docroot(name: str, root: Path) -> persona.Persona:
    """The persona's site tree under ``root``, tokens filled, mtimes as the decoy announces them."""
    p = persona.load(name)
    root.mkdir(parents=True, exist_ok=True)
    recorder.render_site(p, root)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (p.site_mtime, p.site_mtime))
    subprocess.run(["chmod", "-R", "a+rX", str(root.parent)], check=True)
    return p


@contextmanager
def workdir() -> Iterator[Path]:
    """A directory the servers' www-data workers can read (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="feint-real-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def nginx(binary: str, site_of: str, *, main_edits: dict[str, str], upstream_conf: bool = False) -> Iterator[int]:
    """Debian's nginx with /etc/nginx (or nginx's upstream default server block), ``main_edits`` applied."""
    with workdir() as work:
        conf = work / "conf"
        shutil.copytree("/etc/nginx", conf, symlinks=False)
        root = work / "html"
        docroot(site_of, root)
        port = free_port()
        if upstream_conf:
            # nginx's own conf/nginx.conf server block (github.com/nginx/nginx conf/nginx.conf):
            # no gzip, `location / { root html; index index.html index.htm; }`, error_page 50x.
            (conf / "sites-enabled" / "default").write_text(
                "server {\n"
                f"    listen 127.0.0.1:{port};\n"
                "    server_name localhost;\n"
                f"    location / {{ root {root}; index index.html index.htm; }}\n"
                "    error_page 500 502 503 504 /50x.html;\n"
                f"    location = /50x.html {{ root {root}; }}\n"
                "}\n"
            )
        else:
            site = (conf / "sites-enabled" / "default").read_text()
            site = site.replace("listen 80 default_server;", f"listen 127.0.0.1:{port} default_server;")
            site = site.replace("listen [::]:80 default_server;", "").replace("/var/www/html", str(root))
            (conf / "sites-enabled" / "default").write_text(site)
        main = (conf / "nginx.conf").read_text()
        main = main.replace("pid /run/nginx.pid;", f"pid {conf}/nginx.pid;").replace("/var/log/nginx/", f"{conf}/")
        main = main.replace("include /etc/nginx/", f"include {conf}/").replace(
            "worker_processes auto;", "worker_processes 1;"
        )
        for old, new in main_edits.items():
            if old not in main:
                raise AssertionError(f"nginx.conf has no {old!r} to change")
            main = main.replace(old, new)
        (conf / "nginx.conf").write_text(main)
        proc = subprocess.Popen([binary, "-c", str(conf / "nginx.conf"), "-p", str(conf), "-g", "daemon off;"])
        try:
            wait_listening(port, proc)
            yield port
        finally:
            _stop(proc)


@contextmanager
def apache(binary: str, site_of: str, *, security: dict[str, str]) -> Iterator[int]:
    """Debian's apache2 with /etc/apache2, the security.conf directives in ``security`` changed."""
    with workdir() as work:
        conf = work / "apache2"
        shutil.copytree("/etc/apache2", conf, symlinks=False)
        docroot(site_of, work / "html")
        port = free_port()
        (conf / "ports.conf").write_text(f"Listen 127.0.0.1:{port}\n")
        for rel in ("apache2.conf", "sites-enabled/000-default.conf"):
            text = (
                (conf / rel)
                .read_text()
                .replace("/var/www", str(work))
                .replace("<VirtualHost *:80>", f"<VirtualHost *:{port}>")
            )
            (conf / rel).write_text(text)
        sec = conf / "conf-enabled" / "security.conf"
        text = sec.read_text()
        for directive, value in security.items():
            lines = [ln for ln in text.splitlines() if ln.startswith(directive + " ")]
            if len(lines) != 1:
                raise AssertionError(f"security.conf has {len(lines)} active {directive} lines")
            text = text.replace(lines[0], f"{directive} {value}")
        sec.write_text(text)
        for d in ("run", "lock", "logs"):
            (conf / d).mkdir()
        env = {
            **os.environ,
            "APACHE_RUN_USER": "www-data",
            "APACHE_RUN_GROUP": "www-data",
            "APACHE_PID_FILE": f"{conf}/run/apache2.pid",
            "APACHE_RUN_DIR": f"{conf}/run",
            "APACHE_LOCK_DIR": f"{conf}/lock",
            "APACHE_LOG_DIR": f"{conf}/logs",
            "LANG": "C",
        }
        proc = subprocess.Popen([binary, "-d", str(conf), "-f", str(conf / "apache2.conf"), "-DFOREGROUND"], env=env)
        try:
            wait_listening(port, proc)
            yield port
        finally:
            _stop(proc)


# Spring Boot 3.5's embedded Tomcat as TomcatWebServerFactoryCustomizer leaves it: the
# ErrorReportValve with showReport=false and showServerInfo=false (customizeErrorReportValve),
# the connector's own connectionTimeout default (60 s: "Keep-Alive: timeout=60"), no Server header.
TOMCAT_SERVER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="{port}" address="127.0.0.1" protocol="HTTP/1.1" maxParameterCount="1000"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false">
        <Valve className="org.apache.catalina.valves.ErrorReportValve" showReport="false" showServerInfo="false"/>
      </Host>
    </Engine>
  </Service>
</Server>
"""


@contextmanager
def tomcat(site_of: str) -> Iterator[int]:
    """Debian's tomcat10 (10.1) run from /usr/share/tomcat10 as this user, the persona's site as ROOT."""
    if not (TOMCAT_HOME / "bin" / "catalina.sh").is_file():
        raise FileNotFoundError(f"{TOMCAT_HOME}/bin/catalina.sh (apt-get install tomcat10)")
    with workdir() as work:
        base = work / "base"
        shutil.copytree("/etc/tomcat10", base / "conf", symlinks=False)
        port = free_port()
        (base / "conf" / "server.xml").write_text(TOMCAT_SERVER_XML.format(port=port))
        for d in ("logs", "temp", "work"):
            (base / d).mkdir()
        docroot(site_of, base / "webapps" / "ROOT")
        env = {**os.environ, "CATALINA_HOME": str(TOMCAT_HOME), "CATALINA_BASE": str(base), "LANG": "C"}
        proc = subprocess.Popen(
            [str(TOMCAT_HOME / "bin" / "catalina.sh"), "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port, proc)
            _wait_answering(port)
            yield port
        finally:
            _stop(proc)


def _wait_answering(port: int) -> None:
    """Tomcat binds its port before the webapp is deployed: wait until a request gets an answer."""
    deadline = time.monotonic() + START_SECONDS_MAX
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=START_SECONDS_MAX) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if sock.recv(16).startswith(b"HTTP/1.1 "):
                return
        time.sleep(0.5)
    raise AssertionError(f"127.0.0.1:{port} accepts but does not answer after {START_SECONDS_MAX} s")


def nmap_line(nmap: str, port: int) -> str:
    """The service line `nmap -sV` prints for 127.0.0.1:``port``."""
    result = subprocess.run(
        [nmap, "-sV", "-Pn", "-n", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return next(line for line in result.stdout.splitlines() if line.startswith(f"{port}/tcp"))


@dataclass(frozen=True)
class Variant:
    """A persona recorded from a real server with one configuration change."""

    persona: str  # the directory it is recorded into
    parent: str  # the persona it extends (its site tree is served)
    kind: str  # nginx, apache, tomcat
    change: str  # the configuration, as written into source.configuration
    start: Callable[[str], Iterator[int]]  # binary -> context manager yielding the port


NGINX_DEBIAN = "Debian 12 nginx 1.22.1 package configuration (/etc/nginx copied, listen 127.0.0.1 on a high port)"
APACHE_DEBIAN = "Debian 12 apache2 2.4 package configuration (/etc/apache2 copied, listen 127.0.0.1 on a high port)"

VARIANTS: dict[str, Variant] = {
    v.persona: v
    for v in (
        Variant(
            "nginx-debian-tokens-off",
            "nginx-debian",
            "nginx",
            f"{NGINX_DEBIAN}, server_tokens off",
            lambda b: nginx(b, "nginx-debian", main_edits={"# server_tokens off;": "server_tokens off;"}),
        ),
        Variant(
            "nginx-upstream",
            "nginx-upstream",
            "nginx",
            "Debian 12 nginx 1.22.1 binary with nginx's upstream default server (conf/nginx.conf: no gzip, "
            "index index.html index.htm) serving upstream html/index.html",
            lambda b: nginx(b, "nginx-upstream", main_edits={"gzip on;": "gzip off;"}, upstream_conf=True),
        ),
        Variant(
            "apache-debian-prod",
            "apache-debian",
            "apache",
            f"{APACHE_DEBIAN}, ServerTokens Prod, ServerSignature Off",
            lambda b: apache(b, "apache-debian", security={"ServerTokens": "Prod", "ServerSignature": "Off"}),
        ),
        Variant(
            "apache-debian-tokens-min",
            "apache-debian",
            "apache",
            f"{APACHE_DEBIAN}, ServerTokens Min",
            lambda b: apache(b, "apache-debian", security={"ServerTokens": "Min"}),
        ),
        Variant(
            "apache-debian-tokens-major",
            "apache-debian",
            "apache",
            f"{APACHE_DEBIAN}, ServerTokens Major",
            lambda b: apache(b, "apache-debian", security={"ServerTokens": "Major"}),
        ),
        Variant(
            "apache-debian-trace-on",
            "apache-debian",
            "apache",
            f"{APACHE_DEBIAN}, TraceEnable On",
            lambda b: apache(b, "apache-debian", security={"TraceEnable": "On"}),
        ),
        Variant(
            "spring-boot-tomcat",
            "spring-boot-tomcat",
            "tomcat",
            "Debian 12 tomcat10 10.1 (Spring Boot 3's embedded Tomcat generation) run from /usr/share/tomcat10 "
            "with Spring Boot's ErrorReportValve (showReport=false, showServerInfo=false) and connector "
            "defaults (connectionTimeout 60 s); the Spring MVC answers are hand-written from Spring Boot's source",
            lambda _b: tomcat("spring-boot-tomcat"),
        ),
    )
}
BINARIES = {"nginx": ("nginx", "nginx"), "apache": ("apache2", "apache2"), "tomcat": ("java", "default-jre-headless")}


LAYER_FILE = "spring-layer.yaml"


def apply_layer(directory: Path) -> None:
    """Lay the hand-written application layer (``spring-layer.yaml``) over a fresh recording."""
    import yaml

    path = directory / persona.PERSONA_FILE
    doc = yaml.safe_load(path.read_text("utf-8"))
    layer = yaml.safe_load((directory / LAYER_FILE).read_text("utf-8"))
    responses = doc["responses"]
    for rid, spec in layer["replace"].items():
        if rid not in responses or responses[rid]["status"] != spec["status"]:
            raise AssertionError(f"recorded response {rid} is not the {spec['status']!r} the layer replaces")
        replacement = dict(layer["responses"][spec["by"]])
        if spec.get("keep_interim") and responses[rid].get("interim"):
            replacement["interim"] = responses[rid]["interim"]
        responses[rid] = replacement
    responses.update(layer["responses"])
    doc["rules"].update(layer["rules"])
    header = (
        "# Recorded from the real Tomcat by tests/external/camouflage/real_servers.py, then the Spring MVC layer\n"
        f"# of {LAYER_FILE} laid over it (its header cites the source of every Spring byte); see docs/decoys.md.\n"
    )
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=False, width=200), "utf-8")


def _record(name: str) -> None:
    """Record variant ``name`` into the shipped personas (then review `git diff`)."""
    variant = VARIANTS[name]
    binary, _ = BINARIES[variant.kind]
    found = shutil.which(binary) or f"/usr/sbin/{binary}"
    out = persona.builtin_root() / name
    with variant.start(found) as port:
        result = recorder.record(
            host="127.0.0.1",
            port=port,
            out_dir=out,
            start_from=out if (out / persona.PERSONA_FILE).is_file() else persona.builtin_root() / variant.parent,
            version=None,
            configuration=variant.change,
        )
    if (out / LAYER_FILE).is_file():
        apply_layer(out)
    print(f"{result.path}: {result.server or '(no Server)'}; {result.responses} responses, {result.rules} rules")
    for key in result.conflicts:
        print(f"conflict: {key}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "record" or sys.argv[2] not in VARIANTS:
        sys.exit(f"usage: python -m tests.external.camouflage.real_servers record {{{','.join(VARIANTS)}}}")
    _record(sys.argv[2])
