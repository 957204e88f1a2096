"""The realistic mix `make load` drives: gateway traffic with a bot share, credits metering and
balance reads, rule polling and evaluation. Each user paces itself to one task per second
(``constant_throughput``), so the number of users is the offered request rate.

Shares of the mix (by user weight): gateway 60% (of it, one user in ten a bot: scanner agents,
probes of `.env` and `wp-admin`, SQL injection; a bot is held by its decoy, so bots send fewer
requests than their share of users), credits 30% (metering transfers and
balance reads, two to one), shadow 10% (the gateway's rule poll with its ETag, and the list of
evaluations). The run's settings come from the environment the harness (`load.py`) sets:
``LOAD_GATEWAY``, ``LOAD_CREDITS``, ``LOAD_SHADOW`` (base URLs), ``LOAD_KEY`` (a write key of the
tenant), ``LOAD_ACCOUNTS`` (comma-separated account ids with credits).
"""

from __future__ import annotations

import os
import random
import uuid

from locust import HttpUser, constant_throughput, task

GATEWAY = os.environ.get("LOAD_GATEWAY", "http://127.0.0.1:8080")
CREDITS = os.environ.get("LOAD_CREDITS", "http://127.0.0.1:5004")
SHADOW = os.environ.get("LOAD_SHADOW", "http://127.0.0.1:5005")
KEY = os.environ.get("LOAD_KEY", "")
ACCOUNTS = [a for a in os.environ.get("LOAD_ACCOUNTS", "").split(",") if a]
BOT_NAME = "gateway bot"  # load.py leaves it out of the rate and latency targets (decoys are slow on purpose)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
BOT_REQUESTS = (
    ("/.env", "sqlmap/1.8#stable (https://sqlmap.org)"),
    ("/wp-admin/setup-config.php", "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000003)"),
    ("/search?q=1%27%20union%20select%20password%20from%20users--", "python-requests/2.32"),
    ("/.git/config", "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)"),
)
BENIGN_PATHS = ("/", "/api/products", "/login")


def _address(first: int, second_base: int = 0, second_span: int = 256) -> str:
    return f"{first}.{second_base + random.randrange(second_span)}.{random.randrange(256)}.{random.randrange(1, 255)}"


class GatewayVisitor(HttpUser):
    """A visitor of the protected application.

    The gateway sees every locust user at its own address, as it would behind a load balancer
    (``X-Forwarded-For``; the harness trusts loopback as that proxy): from one address, the bots'
    diverted sessions would count against every visitor there (``threat.ADDRESS_DIVERTED_MIN``)
    and the visitors would be diverted too."""

    host = GATEWAY
    weight = 54
    wait_time = constant_throughput(1)

    def on_start(self) -> None:
        self.headers = {"user-agent": BROWSER, "x-forwarded-for": _address(10)}

    @task
    def visit(self) -> None:
        self.client.get(random.choice(BENIGN_PATHS), headers=self.headers, name="gateway benign")


class GatewayBot(HttpUser):
    """A bot (one gateway request in ten). Its own user: a decoy holds a bot on purpose (slow
    answers, trickled bodies), which must not slow the visitors' pacing nor count as their latency."""

    host = GATEWAY
    weight = 6
    wait_time = constant_throughput(1)

    def on_start(self) -> None:
        self.address = _address(100, 64, 64)  # shared address space (RFC 6598): never a visitor's

    @task
    def probe(self) -> None:
        path, agent = random.choice(BOT_REQUESTS)
        headers = {"user-agent": agent, "x-forwarded-for": self.address}
        # A decoy answers bots with 404s and the like: any answer is a success, a failure is none.
        with self.client.get(path, headers=headers, name=BOT_NAME, catch_response=True) as r:
            if r.status_code == 0 or r.status_code >= 500:
                r.failure(f"status {r.status_code}")
            else:
                r.success()


class Meter(HttpUser):
    """The gateway's metering and a dashboard's balance reads against credits."""

    host = CREDITS
    weight = 30
    wait_time = constant_throughput(1)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    @task(1)
    def meter(self) -> None:
        debit, credit = random.sample(ACCOUNTS, 2)
        body = {"debit_account_id": debit, "credit_account_id": credit, "amount": 1}
        headers = {**self.headers, "idempotency-key": str(uuid.uuid4())}
        self.client.post("/v1/transfers", json=body, headers=headers, name="credits transfer")

    @task(2)
    def balance(self) -> None:
        account = random.choice(ACCOUNTS)
        self.client.get(f"/v1/accounts/{account}", headers=self.headers, name="credits balance")


class RuleWatcher(HttpUser):
    """A gateway replica polling its production rules, and an analyst listing evaluations."""

    host = SHADOW
    weight = 10
    wait_time = constant_throughput(1)

    def on_start(self) -> None:
        self.headers = {"authorization": f"Bearer {KEY}"}
        self.etag = ""

    @task(4)
    def poll(self) -> None:
        headers = {**self.headers, "if-none-match": self.etag} if self.etag else self.headers
        with self.client.get(
            "/v1/rulesets/starter/production", headers=headers, name="shadow production poll", catch_response=True
        ) as r:
            if r.status_code in (200, 304):
                self.etag = r.headers.get("etag", self.etag)
                r.success()
            else:
                r.failure(f"status {r.status_code}")

    @task(1)
    def evaluations(self) -> None:
        self.client.get("/v1/evaluations?limit=10", headers=self.headers, name="shadow evaluations")
