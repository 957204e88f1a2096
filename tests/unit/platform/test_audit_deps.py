"""The dependency audit (tests/audit_deps.py, `make audit`): its decisions, and the ignore it carries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import audit_deps as audit

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


VULN = {"id": "GHSA-xxxx", "aliases": ["CVE-2099-1"], "fixed_in": ["2.0"]}


def test_pins_are_read_and_a_loose_requirement_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pinned\nuvicorn[standard]==0.30.1 ; python_version >= '3.11'\nrich==13.7.1\n")
    assert audit.read_pins(lock) == [audit.Pin("uvicorn", "0.30.1"), audit.Pin("rich", "13.7.1")]
    lock.write_text("rich==13.7.1\nhttpx>=0.27\n")
    with pytest.raises(ValueError, match=r"requirements.lock:2: not an exact pin"):
        audit.read_pins(lock)


def test_the_release_document_wins_and_the_project_one_covers_only_the_latest() -> None:
    pin = audit.Pin("lib", "1.0")
    assert audit.judge(pin, None, {"vulnerabilities": [VULN]}).vulnerabilities == [VULN]
    at_latest = audit.judge(pin, {"info": {"version": "1.0"}, "vulnerabilities": [VULN]}, None)
    assert (at_latest.status, at_latest.vulnerabilities) == ("audited", [VULN])
    behind = audit.judge(pin, {"info": {"version": "1.1"}, "vulnerabilities": []}, None)
    assert behind.status == "not-audited" and "latest is 1.1" in behind.detail
    assert audit.judge(pin, None, None).status == "error"


def test_an_ignore_matches_an_id_or_an_alias() -> None:
    finding = audit.Finding(audit.Pin("lib", "1.0"), "audited", [VULN])
    assert audit.failing([finding], {}) == [(finding, VULN)]
    assert audit.failing([finding], {"CVE-2099-1": "why"}) == []
    assert audit.failing([finding], {"GHSA-xxxx": "why"}) == []


def test_an_ignore_without_a_reason_is_refused(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.feint-audit]\nignore = [{ id = "CVE-1", reason = " " }]\n')
    with pytest.raises(ValueError, match="ignore entry 1 needs an id and a reason"):
        audit.read_ignores(pyproject)
    assert "CVE-2025-69872" in audit.read_ignores(REPO / "pyproject.toml")


def test_feint_never_imports_the_diskcache_the_ignore_is_about() -> None:
    """CVE-2025-69872 (diskcache unpickles its cache) is ignored because pySigma opens a diskcache only
    in sigma.data.mitre_*; this loads every service and compiles the starter rules to prove Feint
    reaches neither."""
    code = (
        "import sys\n"
        "import feint.cli, feint.credits.app, feint.shadow.app, feint.camouflage.app\n"
        "from feint.shadow.rules import starter_rules\n"
        "rules = starter_rules()\n"
        "assert rules, 'no starter rules'\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('diskcache', 'sigma.data')))\n"
        "print(len(rules), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
