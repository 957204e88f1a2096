"""Every service's OpenAPI document, fuzzed by schemathesis against the real process: no 5xx, nothing undocumented.

Each service runs as `feint serve NAME` on a fresh database; schemathesis generates requests from
the document with a fixed seed and budget (examples per operation, stateful links included) and
runs every check. One check is narrowed, with the reason: ``positive_data_acceptance`` accepts a
422 as well, because some rules cannot be written in JSON Schema (a Sigma text that parses, a log
file with lines in it, a card number's Luhn digit, a pagination cursor this API gave); every other
refusal of schema-valid input fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import running_service, service_env

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = int(os.environ.get("FEINT_FUZZ_EXAMPLES", "25"))
SEED = 20261201
FUZZ_SECONDS_MAX = 600
SERVICES = ("credits", "shadow", "camouflage")

CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
"""


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_fuzzing_finds_nothing(
    service: str, clean_db: str, tmp_path: Path, api_key: Callable[..., str]
) -> None:
    """schemathesis with all checks and stateful links: no server error, every answer as documented."""
    key = api_key(tenant="acme", scope="admin")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with running_service(service, service_env(clean_db, tmp_path / "home")) as base:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "--no-color",
                "run",
                f"{base}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                "all",
                "--max-examples",
                str(EXAMPLES_PER_OPERATION),
                "--seed",
                str(SEED),
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=FUZZ_SECONDS_MAX,
            check=False,
            cwd=tmp_path,
        )
    report = result.stdout[-20_000:] + result.stderr[-5_000:]
    print(report)
    assert result.returncode == 0, f"schemathesis found problems in {service}:\n{report}"
