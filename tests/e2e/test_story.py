"""The product's story with real processes: bots hit the gateway, decoys answer and engage, the
events become labels, a new rule is evaluated in shadow with them, rolled out by canary and
promoted; the tenant's credits are charged for every protected request; a backup taken at the end
verifies.

Processes: `feint serve credits|shadow|camouflage` (one each), Python's http.server as the shop,
SeaweedFS (from its wheel) as S3, and the `feint` commands an operator runs. Clients are told
apart by ``X-Forwarded-For`` (the test is the gateway's trusted proxy), so that shoppers and bots
each have their own address and client key.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg
import pytest

from feint.backup.seaweed import local_s3
from feint.backup.storage import S3Storage
from tests.conftest import create_key, free_port, running_service, service_env
from tests.e2e.camouflage.test_gateway_scanners import upstream_process

pytestmark = pytest.mark.e2e

STARTER_RULES: Final = Path(__file__).parents[2] / "src" / "feint" / "shadow" / "starter_rules"
BROWSER: Final = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SCRAPER: Final = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0"
SHOP_SERVER: Final = b"SimpleHTTP/"  # http.server's Server header: the shop answered, not a decoy
HEAD_SECONDS_MAX: Final = 30.0  # the slowest engagement profile trickles its body; the head comes first
WAIT_SECONDS_MAX: Final = 180.0  # bound of every wait for a background step (poll, batch, controller)
SCRAPERS: Final = 4
SCRAPES_EACH: Final = 6
SHOPPERS: Final = 8
GRANT: Final = 100_000
NEW_RULE: Final = """\
title: Bulk Catalogue Export
id: 2b0c7f62-3c51-4a55-9f0e-6d9a51c1e7a4
status: experimental
description: Scrapers ask the catalogue for everything at once; the shop's pages never do.
author: Feint (end-to-end test)
date: 2026-12-02
logsource:
    category: webserver
detection:
    selection:
        cs-uri-query|contains: 'export=all'
    condition: selection
level: critical
"""


class Gateway:
    """Raw requests to the gateway, each from an address named in X-Forwarded-For; counts them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0

    def head(self, path: str, *, ip: str, agent: str) -> bytes:
        """The head of the answer (a decoy may trickle its body for minutes: not waited for)."""
        self.sent += 1
        request = (
            f"GET {path} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: {agent}\r\nAccept: */*\r\n"
            f"X-Forwarded-For: {ip}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=HEAD_SECONDS_MAX) as conn:
            conn.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n\r\n", 1)[0]


def _until(what: str, probe: Callable[[], Any]) -> Any:
    """``probe()`` once it is truthy; fails naming ``what`` after ``WAIT_SECONDS_MAX``."""
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last: {value!r}")
        time.sleep(0.2)


def _feint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "feint", *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(b"<h1>the real shop</h1>\n")
    (site / "catalogue.json").write_bytes(b'{"items": [1, 2, 3]}\n')
    with upstream_process(site) as (url, _log):
        yield url


def test_bots_to_labels_to_rule_to_canary_to_production_charged_and_backed_up(
    clean_db: str, tmp_path: Path, shop: str
) -> None:
    """The whole loop on real processes; each stage's outcome is checked where it happens."""
    home = tmp_path / "home"
    datasets = home / "datasets" / "acme"
    datasets.mkdir(parents=True)
    keys = {s: create_key(clean_db, tenant="acme", scope=s) for s in ("read", "write", "admin")}
    operator = create_key(clean_db, tenant=None, scope="operator")
    base_env = service_env(clean_db, home)
    gateway_port = free_port()

    with (
        running_service("credits", base_env) as credits_url,
        running_service("shadow", base_env) as shadow_url,
        httpx.Client(base_url=credits_url, timeout=30) as credits,
        httpx.Client(base_url=shadow_url, timeout=30) as shadow,
    ):
        account = credits.post("/v1/accounts", json={"code": "gateway-requests"}, headers=bearer(keys["write"]))
        assert account.status_code == 201, account.text
        account_id = account.json()["id"]
        granted = credits.post(
            "/v1/grants",
            json={"account_id": account_id, "amount": GRANT},
            headers=bearer(operator, **{"Feint-Tenant": "acme"}),
        )
        assert granted.status_code == 201, granted.text
        starter = shadow.get("/v1/rulesets/starter", headers=bearer(keys["read"]))  # installs the starter set
        assert starter.status_code == 200 and starter.json()["production"] == 1, starter.text

        gateway_env = {
            **base_env,
            "FEINT_UPSTREAM_URL": shop,
            "FEINT_GATEWAY_PORT": str(gateway_port),
            "FEINT_GATEWAY_TENANT": "acme",
            "FEINT_GATEWAY_DECISION_LOG": str(datasets / "decisions.jsonl"),
            "FEINT_GATEWAY_RULES_POLL_SECONDS": "0.5",
            "FEINT_GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
            "FEINT_METERING_MODE": "open",
            "FEINT_METERING_CREDITS_URL": credits_url,
            "FEINT_METERING_OPERATOR_KEY": operator,
            "FEINT_METERING_ACCOUNT": account_id,
            "FEINT_METERING_WINDOW_SECONDS": "1",
        }
        gw = Gateway(gateway_port)
        with (
            running_service("camouflage", gateway_env) as camouflage_url,
            httpx.Client(base_url=camouflage_url, timeout=30) as camouflage,
        ):
            _until("the gateway", lambda: _reachable(gateway_port))

            # 1. Shoppers reach the shop; scrapers look like shoppers until they probe for secrets,
            #    then a decoy answers them and hands out honeytokens.
            shoppers = [f"10.0.0.{n}" for n in range(1, SHOPPERS + 1)]
            for ip in shoppers:
                for path in ("/index.html", "/catalogue.json"):
                    assert SHOP_SERVER in gw.head(path, ip=ip, agent=BROWSER)
            scrapers = [f"203.0.113.{n}" for n in range(1, SCRAPERS + 1)]
            for ip in scrapers:
                for page in range(SCRAPES_EACH):
                    head = gw.head(f"/catalogue.json?page={page}&export=all", ip=ip, agent=SCRAPER)
                    assert SHOP_SERVER in head, "production's rules let the scraping through"
                for path in ("/.env", "/admin/"):
                    head = gw.head(path, ip=ip, agent=SCRAPER)
                    assert head.startswith(b"HTTP/1.1 ") and SHOP_SERVER not in head, head

            # 2. Known-good clients on the allow-list (the operator's list; by address), then labels.
            with psycopg.connect(clean_db, autocommit=True) as conn:
                for ip in shoppers:
                    conn.execute(
                        "INSERT INTO camouflage_allowlist (tenant_id, client, note) "
                        "SELECT id, %s, 'shop staff' FROM tenants WHERE name = 'acme'",
                        (ip,),
                    )
            bots = SCRAPERS * (SCRAPES_EACH + 2)
            benign = SHOPPERS * 2

            def labels() -> dict[str, Any] | None:
                answer = camouflage.get(
                    "/v1/labels", params={"since": "1h", "format": "json"}, headers=bearer(keys["read"])
                )
                assert answer.status_code == 200, answer.text
                body: dict[str, Any] = answer.json()
                return body if (body["bots"], body["benign"]) == (bots, benign) else None

            _until(f"{bots} bot and {benign} benign labels", labels)
            csv = camouflage.get("/v1/labels", params={"since": "1h"}, headers=bearer(keys["read"]))
            (datasets / "labels.csv").write_text(csv.text)

            # 3. A new rule, evaluated in shadow on that traffic with those labels.
            documents = [{"name": p.name, "yaml": p.read_text()} for p in sorted(STARTER_RULES.glob("*.yml"))]
            documents.append({"name": "bulk_export.yml", "yaml": NEW_RULE})
            version = shadow.post(
                "/v1/rulesets/starter/versions",
                json={"message": "scrapers export the catalogue", "documents": documents},
                headers=bearer(keys["write"]),
            )
            assert version.status_code == 201, version.text
            candidate = int(version.json()["version"])
            evaluation = shadow.post(
                "/v1/evaluations",
                json={
                    "production": {"ruleset": "starter"},
                    "candidate": {"ruleset": "starter", "version": candidate},
                    "traffic": {"path": "decisions.jsonl"},
                    "labels": {"path": "labels.csv"},
                },
                headers=bearer(keys["write"]),
            )
            assert evaluation.status_code in (201, 202), evaluation.text
            evaluation_id = evaluation.json()["id"]

            def finished() -> dict[str, Any] | None:
                body: dict[str, Any] = shadow.get(
                    f"/v1/evaluations/{evaluation_id}", headers=bearer(keys["read"])
                ).json()
                return body if body["status"] in ("succeeded", "failed") else None

            assert _until("the evaluation", finished)["status"] == "succeeded"
            report = shadow.get(f"/v1/evaluations/{evaluation_id}/report", headers=bearer(keys["read"])).json()
            assert (report["dataset"]["attacks"], report["dataset"]["benign"]) == (bots, benign)
            assert report["candidate"]["tp"] > report["production"]["tp"]
            assert report["candidate"]["fp"] == 0
            assert report["decision"] in ("APPROVE_CANARY", "APPROVE_FULL_DEPLOYMENT"), report["decision_reason"]

            # 4. The canary: half the clients judged by the candidate, checked every second, promoted.
            moved = shadow.post(
                f"/v1/rulesets/starter/versions/{candidate}/transition",
                json={"to": "shadow", "reason": "evaluated"},
                headers=bearer(keys["admin"]),
            )
            assert moved.status_code == 200, moved.text
            guard = {"metric": "error_rate", "threshold": 0.01, "critical": True, "min_samples": 5}
            started = shadow.post(
                "/v1/rollouts",
                json={"ruleset": "starter", "candidate": candidate, "reason": "story", "steps": [50, 100],
                      "interval_seconds": 1, "guards": [guard]},
                headers=bearer(keys["admin"]),
            )  # fmt: skip
            assert started.status_code == 201, started.text
            rollout_id = started.json()["id"]
            assert started.json().get("forced") in (None, False)
            visitors = iter(range(1, 100_000))

            def promoted() -> dict[str, Any] | None:
                for _ in range(10):  # live traffic for both slices
                    n = next(visitors)
                    gw.head("/index.html", ip=f"10.1.{n // 250}.{n % 250 + 1}", agent=BROWSER)
                body: dict[str, Any] = shadow.get(f"/v1/rollouts/{rollout_id}", headers=bearer(keys["read"])).json()
                assert body["phase"] in ("running", "promoted"), body
                return body if body["phase"] == "promoted" else None

            _until("the promotion", promoted)
            ruleset = shadow.get("/v1/rulesets/starter", headers=bearer(keys["read"])).json()
            assert ruleset["production"] == candidate
            newcomer = "198.51.100.7"  # a scraper never seen: the new production rule diverts it at once
            _until(
                "the gateway to load the promoted version",
                lambda: SHOP_SERVER not in gw.head("/catalogue.json?export=all", ip=newcomer, agent=SCRAPER),
            )
            with psycopg.connect(clean_db, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT ruleset_version, action FROM camouflage_decisions WHERE c_ip = %s "
                    "ORDER BY decided_at DESC LIMIT 1",
                    (newcomer,),
                ).fetchone()
            assert row == (candidate, "divert")
        # The gateway has stopped: its last window is captured.

        # 5. Metering: each protected request cost one credit, exactly.
        with psycopg.connect(clean_db, autocommit=True) as conn:
            judged = conn.execute(
                "SELECT count(*) FROM camouflage_decisions d JOIN tenants t ON t.id = d.tenant_id "
                "WHERE t.name = 'acme' AND d.action IN ('allow', 'divert')"
            ).fetchone()
        assert judged is not None and judged[0] == gw.sent
        balance = credits.get(f"/v1/accounts/{account_id}", headers=bearer(keys["read"])).json()
        assert balance["posted"] == GRANT - gw.sent, balance

    # 6. A backup of it all, to S3, verified.
    with local_s3(volume_size_limit_mb=64) as s3:
        S3Storage(bucket="feint-story", prefix="prod", endpoint_url=s3.endpoint).ensure_bucket()
        env = service_env(
            clean_db,
            home,
            FEINT_BACKUP_URL="s3://feint-story/prod",
            FEINT_S3_ENDPOINT_URL=s3.endpoint,
            FEINT_BACKUP_KEYSET=str(tmp_path / "backup.keyset"),
        )
        assert _feint(env, "backup", "keygen", "--out", str(tmp_path / "backup.keyset")).returncode == 0
        created = _feint(env, "backup", "create")
        assert created.returncode == 0, created.stderr[-2000:]
        verified = _feint(env, "backup", "verify", "latest")
        assert verified.returncode == 0, verified.stderr[-2000:]
        assert f"verified {created.stdout.strip()}" in " ".join(verified.stderr.split())


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
