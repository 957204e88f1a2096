"""The root command imports a domain's commands only when the command line names that domain."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from feint.cli import LAZY_GROUPS, app

pytestmark = pytest.mark.unit


def _modules_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(done.stdout.split())


def test_importing_the_command_line_loads_no_server_or_domain() -> None:
    loaded = _modules_after("import feint.cli")
    heavy = {"feint.platform.serve", "fastapi", "uvicorn", *(module for module, _ in LAZY_GROUPS.values())}
    assert not heavy & loaded


def test_a_domain_command_loads_only_its_own_group() -> None:
    loaded = _modules_after(
        "from typer.testing import CliRunner\n"
        "from feint.cli import app\n"
        "result = CliRunner().invoke(app, ['shadow', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
    )
    assert "feint.shadow.cli" in loaded
    assert "feint.credits.cli" not in loaded
    assert "feint.platform.serve" not in loaded


def test_help_lists_every_group_and_each_group_answers() -> None:
    runner = CliRunner()
    root = runner.invoke(app, ["--help"])
    assert root.exit_code == 0, root.output
    for name in (*LAZY_GROUPS, "keys", "serve", "up", "status", "migrate"):
        assert name in root.output
    for name in LAZY_GROUPS:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert f"{name} [OPTIONS] COMMAND" in result.output


def test_an_unknown_group_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["ledger"])
    assert result.exit_code == 2
    assert "No such command" in result.output
