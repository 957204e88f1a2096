"""The realistic mix `make load` drives: gateway traffic with a bot share, credits metering and
balance reads, rule polling and evaluation. Each user paces itself to one task per second
(``constant_throughput``), so the number of users is the offered request rate.

Shares of the mix (by user weight): gateway 60% (of it, one user in ten a bot: scanner agents,
probes of `.env` and `wp-admin`, SQL injection; a bot is held by its decoy, so bots send fewer
requests than their share of users), credits 30% (metering transfers and
balance reads, two to one), shadow 10% (the gateway's rule poll with its ETag, and the list of
evaluations). The run's settings come from the environment the harness (`load.py`) sets:
``LOAD_GATEWAY``, ``LOAD_CREDITS``, ``LOAD_SHADOW`` (base URLs), ``LOAD_KEY`` (a write key of the
tenant), ``LOAD_ACCOUNTS`` (comma-separated account ids with credits), ``LOAD_BASELINE`` (the
static endpoint of the harness's baseline, `baseline.py`).

Pacing: each user runs one task per second from a random phase (``paced``). locust's
``constant_throughput`` anchors every user's schedule at its spawn, and locust spawns users in
batches once a second, so every user fired within the same few milliseconds of each second: a
burst of the whole rate at once, whose queueing was most of the latency the first runs measured.
Against a static endpoint (`baseline.py`) on the shared 2 cores, 200 users: p50 67 ms with
``HttpUser`` in bursts, 11 ms with ``FastHttpUser`` in bursts, 2.9 ms with ``HttpUser`` paced,
0.7 ms with ``FastHttpUser`` paced; 1,000 users: ``HttpUser`` paced reached 695/s with a p50 of
264 ms, ``FastHttpUser`` paced 999.8/s with a p50 of 0.5 ms. A user behind schedule starts its
next task at once and does not catch up, so a slow service shows as a shortfall of the achieved
rate, never as a burst.

Measurement: every process of locust records, for each endpoint, the requests that complete in
a window of ``LOAD_WINDOW_SECONDS`` that opens ``LOAD_SETTLE_SECONDS`` after every user runs,
with their response times, into ``LOAD_WINDOW_FILE``.<pid>.json (`load.py` reads them: the
achieved rate is the requests counted in the window divided by the window's own length).
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any

import gevent
from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.runners import MasterRunner

GATEWAY = os.environ.get("LOAD_GATEWAY", "http://127.0.0.1:8080")
CREDITS = os.environ.get("LOAD_CREDITS", "http://127.0.0.1:5004")
SHADOW = os.environ.get("LOAD_SHADOW", "http://127.0.0.1:5005")
KEY = os.environ.get("LOAD_KEY", "")
ACCOUNTS = [a for a in os.environ.get("LOAD_ACCOUNTS", "").split(",") if a]
BASELINE = os.environ.get("LOAD_BASELINE", "http://127.0.0.1:5999")
PERIOD = 1.0  # seconds between two tasks of a user: the number of users is the offered rate
WINDOW_FILE = os.environ.get("LOAD_WINDOW_FILE", "")
WINDOW_SECONDS = float(os.environ.get("LOAD_WINDOW_SECONDS", "0"))
SETTLE_SECONDS = float(os.environ.get("LOAD_SETTLE_SECONDS", "2"))
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


def paced(user: Paced) -> float:
    """Seconds until the user's next slot: one task per PERIOD on its own phase, no catching up."""
    now = time.monotonic()
    user.due = max(user.due + PERIOD, now)
    return user.due - now


class Paced(FastHttpUser):
    """A user that runs one task per PERIOD from a random phase (see the module's docstring)."""

    abstract = True
    wait_time = paced

    def on_start(self) -> None:
        gevent.sleep(random.random() * PERIOD)
        self.due = time.monotonic()


class Window:
    """The requests of this process that complete inside the measured window."""

    def __init__(self) -> None:
        self.opens = self.closes = float("inf")
        self.stopped = 0.0
        self.users: dict[str, int] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}

    def open(self, environment: Environment) -> None:
        self.opens = time.time() + SETTLE_SECONDS
        self.closes = self.opens + WINDOW_SECONDS
        if environment.runner is not None:
            self.users = dict(environment.runner.user_classes_count)

    def record(self, name: str, response_time: float, failed: bool) -> None:
        if self.opens <= time.time() < self.closes:
            seen = self.endpoints.setdefault(name, {"requests": 0, "failures": 0, "ms": []})
            seen["requests"] += 1
            seen["failures"] += failed
            seen["ms"].append(round(response_time, 2))

    def save(self) -> None:
        document = {
            "opens": self.opens, "closes": self.closes, "stopped": self.stopped, "users": self.users,
            "endpoints": self.endpoints,
        }  # fmt: skip
        with open(f"{WINDOW_FILE}.{os.getpid()}.json", "w") as out:
            json.dump(document, out)


WINDOW = Window()


def _counts(environment: Environment) -> bool:
    """Requests are made (and counted) in a locust process of its own, not in a master's."""
    return bool(WINDOW_FILE) and not isinstance(environment.runner, MasterRunner)


@events.init.add_listener
def _listen(environment: Environment, **_: Any) -> None:
    if not _counts(environment):
        return

    def on_spawned(**_: Any) -> None:
        WINDOW.open(environment)

    def on_request(name: str, response_time: float, exception: BaseException | None = None, **_: Any) -> None:
        WINDOW.record(name, response_time, exception is not None)

    def on_stop(**_: Any) -> None:
        WINDOW.stopped = WINDOW.stopped or time.time()

    def on_quit(**_: Any) -> None:
        on_stop()
        WINDOW.save()

    environment.events.spawning_complete.add_listener(on_spawned)
    environment.events.request.add_listener(on_request)
    environment.events.test_stop.add_listener(on_stop)
    environment.events.quitting.add_listener(on_quit)


class Baseline(Paced):
    """The harness alone: a static endpoint that costs next to nothing (`load.py` runs it first)."""

    host = BASELINE

    @task
    def fetch(self) -> None:
        self.client.get("/", name="baseline static")


class GatewayVisitor(Paced):
    """A visitor of the protected application.

    The gateway sees every locust user at its own address, as it would behind a load balancer
    (``X-Forwarded-For``; the harness trusts loopback as that proxy): from one address, the bots'
    diverted sessions would count against every visitor there (``threat.ADDRESS_DIVERTED_MIN``)
    and the visitors would be diverted too."""

    host = GATEWAY
    weight = 54

    def on_start(self) -> None:
        super().on_start()
        self.headers = {"user-agent": BROWSER, "x-forwarded-for": _address(10)}

    @task
    def visit(self) -> None:
        self.client.get(random.choice(BENIGN_PATHS), headers=self.headers, name="gateway benign")


class GatewayBot(Paced):
    """A bot (one gateway request in ten). Its own user: a decoy holds a bot on purpose (slow
    answers, trickled bodies), which must not slow the visitors' pacing nor count as their latency."""

    host = GATEWAY
    weight = 6

    def on_start(self) -> None:
        super().on_start()
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


class Meter(Paced):
    """The gateway's metering and a dashboard's balance reads against credits."""

    host = CREDITS
    weight = 30

    def on_start(self) -> None:
        super().on_start()
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


class RuleWatcher(Paced):
    """A gateway replica polling its production rules, and an analyst listing evaluations."""

    host = SHADOW
    weight = 10

    def on_start(self) -> None:
        super().on_start()
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
