"""Audit the pinned dependencies (requirements.lock) against PyPI's vulnerability data.

This is what pip-audit's default service does (it reads the ``vulnerabilities`` field of PyPI's
JSON API, which PyPI fills from the OSV database), written so that it also runs where PyPI's
per-release endpoint (``/pypi/<name>/<version>/json``) is not reachable but the per-project one
is: this machine's package mirror answers 404 to the first and serves the second. The
per-project document lists the vulnerabilities of the project's *latest* release only, so:

- a pin at the latest release is audited exactly (its vulnerabilities are that list);
- a pin behind the latest release is audited exactly when the per-release endpoint answers,
  and otherwise reported as "not audited here" (it does not fail the run; the count is printed);
- any vulnerability found fails the run unless ``[tool.feint-audit] ignore`` in pyproject.toml
  lists its id with a reason.

Usage: ``python tests/audit_deps.py [requirements.lock]`` (``make audit``). Exit 0 clean, 1 on a
vulnerability not ignored, 2 when PyPI cannot be reached at all.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/pypi"
TIMEOUT_S = 30


@dataclass(frozen=True)
class Pin:
    name: str
    version: str


@dataclass
class Finding:
    pin: Pin
    status: str  # "audited" | "not-audited" | "error"
    vulnerabilities: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""


def read_pins(lock: Path) -> list[Pin]:
    """``name==version`` lines of a pip lock file; anything else that is not a comment is an error."""
    pins = []
    for number, raw in enumerate(lock.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = line.split(";", 1)[0].strip()
        if "==" not in requirement:
            raise ValueError(f"{lock}:{number}: not an exact pin (name==version): {raw!r}")
        name, version = (part.strip() for part in requirement.split("==", 1))
        pins.append(Pin(name.split("[", 1)[0].strip(), version))
    return pins


def judge(pin: Pin, project: dict[str, Any] | None, release: dict[str, Any] | None) -> Finding:
    """Decide from PyPI's documents (pure): the per-release one wins; the per-project one covers the latest only."""
    if release is not None:
        return Finding(pin, "audited", list(release.get("vulnerabilities") or []))
    if project is None:
        return Finding(pin, "error", detail="PyPI has no document for this project")
    latest = str(project.get("info", {}).get("version", ""))
    if latest == pin.version:
        return Finding(pin, "audited", list(project.get("vulnerabilities") or []))
    return Finding(pin, "not-audited", detail=f"latest is {latest}; PyPI's per-release data was not reachable")


def failing(findings: list[Finding], ignored: dict[str, str]) -> list[tuple[Finding, dict[str, Any]]]:
    """The vulnerabilities none of whose ids or aliases is in ``ignored``."""
    out = []
    for finding in findings:
        for vuln in finding.vulnerabilities:
            ids = {str(vuln.get("id", "")), *(str(alias) for alias in vuln.get("aliases") or [])}
            if not ids & ignored.keys():
                out.append((finding, vuln))
    return out


def read_ignores(pyproject: Path) -> dict[str, str]:
    table = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("feint-audit", {})
    ignores: dict[str, str] = {}
    for number, entry in enumerate(table.get("ignore", []), 1):
        if not isinstance(entry, dict) or not entry.get("id") or not str(entry.get("reason", "")).strip():
            raise ValueError(f"{pyproject}: [tool.feint-audit] ignore entry {number} needs an id and a reason")
        ignores[str(entry["id"])] = str(entry["reason"])
    return ignores


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (fixed https URL)
            data: dict[str, Any] = json.load(response)
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def fetch(pin: Pin, attempts: int = 3) -> Finding:
    """PyPI's documents for one pin, retried on a network error (a transient failure must not fail CI)."""
    for attempt in range(1, attempts + 1):
        try:
            release = _get(f"{PYPI}/{pin.name}/{pin.version}/json")
            project = None if release is not None else _get(f"{PYPI}/{pin.name}/json")
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            if attempt == attempts:
                return Finding(pin, "error", detail=f"{type(exc).__name__}: {exc} (after {attempts} attempts)")
            time.sleep(attempt)
            continue
        return judge(pin, project, release)
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    lock = Path(argv[1]) if len(argv) > 1 else REPO / "requirements.lock"
    pins = read_pins(lock)
    ignored = read_ignores(REPO / "pyproject.toml")
    with ThreadPoolExecutor(max_workers=16) as pool:
        findings = list(pool.map(fetch, pins))
    errors = [f for f in findings if f.status == "error"]
    if len(errors) == len(findings):
        print(f"error: PyPI could not be reached for any of {len(pins)} pins: {errors[0].detail}", file=sys.stderr)
        return 2
    for finding in errors:
        print(f"error: {finding.pin.name}=={finding.pin.version}: {finding.detail}", file=sys.stderr)
    not_audited = [f for f in findings if f.status == "not-audited"]
    for finding in not_audited:
        print(f"not audited here: {finding.pin.name}=={finding.pin.version} ({finding.detail})")
    for finding in findings:
        for vuln in finding.vulnerabilities:
            vid = str(vuln.get("id", ""))
            ids = {vid, *(str(a) for a in vuln.get("aliases") or [])}
            reason = next((ignored[i] for i in sorted(ids) if i in ignored), None)
            tag = f"ignored: {reason}" if reason else "VULNERABLE"
            fixed = ", ".join(vuln.get("fixed_in") or []) or "no fixed release"
            print(f"{finding.pin.name}=={finding.pin.version} {vid} ({fixed}) [{tag}]")
    bad = failing(findings, ignored)
    audited = sum(f.status == "audited" for f in findings)
    print(
        f"{len(pins)} pins: {audited} audited, {len(not_audited)} not audited here, {len(errors)} errors; "
        f"{len(bad)} vulnerabilities not ignored"
    )
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
