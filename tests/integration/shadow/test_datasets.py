"""Uploaded traffic datasets, and evaluations with the real engine on them, over HTTP."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from feint.platform.runtime import Platform
from feint.shadow.app import create
from tests.conftest import serve_app
from tests.integration.shadow import sigma

pytestmark = pytest.mark.integration

Keys = Callable[..., dict[str, str]]
WAIT_SECONDS_MAX = 60.0


def access_log() -> tuple[str, str]:
    """A combined log of benign and attacking requests with one garbage line, and its labels."""
    lines, labels = [], ["id,label"]
    for n in range(1, 201):
        attack = n % 4 == 0
        target = "/search?q=1+union+select+password" if attack else f"/products/{n}?page=2"
        agent = "sqlmap/1.7" if n % 20 == 0 else "Mozilla/5.0"
        lines.append(f'10.0.0.{n % 250} - - [10/Oct/2024:13:55:36 +0000] "GET {target} HTTP/1.1" 200 512 "-" "{agent}"')
        labels.append(f"{n},{int(attack)}")
    lines.insert(100, "this line is not a request")
    # The garbage line takes number 101, so requests after it are numbered one higher.
    shifted = [f"{int(n) + (int(n) > 100)},{label}" for n, label in (row.split(",") for row in labels[1:])]
    labels = ["id,label", *shifted]
    return "\n".join(lines) + "\n", "\n".join(labels) + "\n"


async def test_upload_lists_and_isolates_datasets(shadow: httpx.AsyncClient, keys: Keys, platform: Platform) -> None:
    """A log upload becomes a Parquet dataset; malformed lines are counted with examples; tenants are isolated."""
    writer = keys("acme", "write")
    log, _ = access_log()
    response = await shadow.post("/v1/datasets?name=october.log", content=log.encode(), headers=writer)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["rows"] == 200 and dataset["malformed"] == 1 and dataset["name"] == "october.log"
    assert dataset["examples"][0]["line"] == 101 and dataset["examples"][0]["path"] == "october.log"
    assert dataset["formats"] == ["combined"] and len(dataset["sha256"]) == 64
    stored = platform.settings.home_dir / "datasets" / "acme" / "uploads" / f"{dataset['id']}.parquet"
    assert stored.read_bytes()[:4] == b"PAR1"
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]
    zipped = await shadow.post("/v1/datasets?name=z.log.gz", content=gzip.compress(log.encode()), headers=writer)
    assert zipped.status_code == 201 and zipped.json()["rows"] == 200
    listed = (await shadow.get("/v1/datasets", headers=writer)).json()["items"]
    assert [d["name"] for d in listed] == ["z.log.gz", "october.log"]
    one = await shadow.get(f"/v1/datasets/{dataset['id']}", headers=writer)
    assert one.json()["rows"] == 200
    globex = keys("globex", "read")
    assert (await shadow.get(f"/v1/datasets/{dataset['id']}", headers=globex)).status_code == 404
    assert (await shadow.get("/v1/datasets", headers=globex)).json()["items"] == []
    reader = keys("acme", "read")
    assert (await shadow.post("/v1/datasets?name=x", content=b"x", headers=reader)).status_code == 403


async def test_upload_that_is_not_a_log_stores_nothing(
    shadow: httpx.AsyncClient, keys: Keys, platform: Platform
) -> None:
    """Bytes that are no log Feint reads: 422 from the first lines; no row, no file."""
    writer = keys("acme", "write")
    garbage = b"\x00\x01\x02 not a log at all\n" * 50
    response = await shadow.post("/v1/datasets?name=junk.bin", content=garbage, headers=writer)
    assert response.status_code == 422 and response.json()["type"] == "/problems/traffic-format-invalid"
    assert (await shadow.get("/v1/datasets", headers=writer)).json()["items"] == []
    uploads = platform.settings.home_dir / "datasets" / "acme" / "uploads"
    assert list(uploads.iterdir()) == []
    missing_name = await shadow.post("/v1/datasets", content=b"x", headers=writer)
    assert missing_name.status_code == 422


async def test_real_evaluation_on_an_uploaded_dataset(platform: Platform, keys: Keys) -> None:
    """The engine evaluates production against a candidate on uploaded traffic and labels; the report is stored."""
    admin = keys("acme", "admin")
    log, labels = access_log()
    folder = platform.settings.home_dir / "datasets" / "acme"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_text(labels)
    (folder / "access.log").write_text(log)
    async with serve_app(create(platform)) as client:
        uploaded = (await client.post("/v1/datasets?name=october", content=log.encode(), headers=admin)).json()
        request: dict[str, Any] = {
            "production": {"ruleset": "starter"},
            "candidate": {"documents": [sigma.rule("SQLi, plus-encoded", value="union+select"), sigma.SCANNER]},
            "traffic": {"dataset_id": uploaded["id"]},
            "labels": {"path": "labels.csv"},
            "options": {"resamples": 200, "latency_rows": 50},
        }
        accepted = await client.post("/v1/evaluations", json=request, headers=admin)
        assert accepted.status_code == 202, accepted.text
        state = await _finished(client, admin, accepted.json()["id"])
        assert state["status"] == "succeeded", state
        assert state["inputs"]["traffic"] == f"dataset:{uploaded['id']}"
        assert state["inputs"]["traffic_sha256"] == uploaded["sha256"]
        report = (await client.get(f"/v1/evaluations/{state['id']}/report", headers=admin)).json()
        candidate = report["candidate"]
        assert (candidate["tp"], candidate["fp"], candidate["fn"]) == (50, 0, 0)
        assert report["production"]["tp"] == 0 and report["decision"] in ("APPROVE_FULL_DEPLOYMENT", "APPROVE_CANARY")
        page = await client.get(f"/v1/evaluations/{state['id']}/report.html", headers=admin)
        assert page.status_code == 200 and "<html" in page.text.lower()
        unlabeled = await client.post(
            "/v1/evaluations", json={**request, "labels": None, "traffic": {"path": "access.log"}}, headers=admin
        )
        done = await _finished(client, admin, unlabeled.json()["id"])
        assert done["status"] == "succeeded" and done["inputs"]["labels_sha256"] is None


async def test_unknown_options_are_refused_up_front(platform: Platform, keys: Keys) -> None:
    """Evaluation options are checked when the job is submitted, not when it runs."""
    writer = keys("acme", "write")
    folder = platform.settings.home_dir / "datasets" / "acme"
    folder.mkdir(parents=True)
    (folder / "access.log").write_text(access_log()[0])
    async with serve_app(create(platform)) as client:
        response = await client.post(
            "/v1/evaluations",
            json={
                "production": {"ruleset": "starter"},
                "candidate": {"documents": [sigma.SQLI]},
                "traffic": {"path": "access.log"},
                "options": {"confidence": 2},
            },
            headers=writer,
        )
        assert response.status_code == 422 and "confidence" in response.text
        assert (await client.get("/v1/evaluations", headers=writer)).json()["items"] == []


async def _finished(client: httpx.AsyncClient, headers: dict[str, str], evaluation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS_MAX
    while time.monotonic() < deadline:
        state: dict[str, Any] = (await client.get(f"/v1/evaluations/{evaluation_id}", headers=headers)).json()
        if state["status"] in ("succeeded", "failed"):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"evaluation {evaluation_id} did not finish")
