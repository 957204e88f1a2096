"""The offline checks of deploy/, one function per step; ``python -m deploy.checks`` runs them all.

Steps: render both overlays with ``kubectl kustomize``; validate every object with
kubernetes-validate ``--strict`` (custom resources have no bundled schema: only the kinds in
`CUSTOM_KINDS` may be skipped, anything else unvalidated is a failure); our policy
(`deploy.checks.policy`); checkov (``--skip-download``, skips justified in deploy/checkov.yaml)
on the rendered manifests and the Dockerfile; hadolint on the Dockerfile; ``promtool check
rules`` and ``promtool test rules``; ``amtool check-config``; the generated rules and dashboards
match their generators; every metric name in the rules and dashboards exists.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = ("staging", "production")
TOOLS_VENV = Path(os.environ.get("FEINT_TOOLS_VENV", REPO / ".venv-tools"))
# The oldest Kubernetes the manifests target: preStop `sleep` needs 1.30.
KUBERNETES_VERSION = "1.30"
# Custom resources (their operators' CRDs are not in kubernetes-validate's bundled schemas).
CUSTOM_KINDS = frozenset(
    {
        ("external-secrets.io/v1", "ExternalSecret"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("postgresql.cnpg.io/v1", "Cluster"),
        ("postgresql.cnpg.io/v1", "ScheduledBackup"),
    }
)
TOOL_SECONDS_MAX = 300
OUTPUT_CHARS_MAX = 4_000


class CheckFailed(Exception):
    """A check found problems; the message lists them."""


@dataclass(frozen=True)
class Tools:
    kubectl: str = "kubectl"
    promtool: str = "promtool"
    amtool: str = "amtool"
    checkov: str = str(TOOLS_VENV / "bin" / "checkov")
    hadolint: str = str(TOOLS_VENV / "bin" / "hadolint")


def _run(args: list[str], *, cwd: Path = REPO) -> str:
    """Run a tool; its output on success, CheckFailed with the tail of its output otherwise."""
    try:
        # The tools and their arguments are ours (paths under the repository), never input.
        result = subprocess.run(  # noqa: S603
            args, cwd=cwd, capture_output=True, text=True, timeout=TOOL_SECONDS_MAX, check=False
        )
    except FileNotFoundError as exc:
        raise CheckFailed(f"{args[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{' '.join(args[:3])} took longer than {TOOL_SECONDS_MAX} s") from exc
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise CheckFailed(f"{' '.join(args[:4])} exited {result.returncode}:\n{output[-OUTPUT_CHARS_MAX:]}")
    return output


def render(overlay: str, *, tools: Tools) -> list[dict[str, Any]]:
    text = _run([tools.kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)])
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate(objects: list[dict[str, Any]], *, version: str = KUBERNETES_VERSION) -> list[str]:
    """kubernetes-validate --strict on each object; the custom kinds are the only ones let through."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    problems = []
    for obj in objects:
        kind = (obj.get("apiVersion", ""), obj.get("kind", ""))
        where = f"{kind[1]}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            if kind not in CUSTOM_KINDS:
                problems.append(f"{where}: no schema for {kind[0]} {kind[1]} (not a known custom resource)")
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{where}: {path}: {exc.message}")
    return problems


def write_rendered(objects: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))


def checkov(paths: list[Path], *, tools: Tools) -> str:
    args = [tools.checkov, "--skip-download", "--quiet", "--compact", "--config-file", str(DEPLOY / "checkov.yaml")]
    for path in paths:
        args += ["--file", str(path)]
    return _run(args)


def hadolint(*, tools: Tools) -> str:
    return _run([tools.hadolint, str(DEPLOY / "Dockerfile")]) or "no findings"


def promtool(*, tools: Tools) -> str:
    rules = sorted(str(p) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    tests = sorted(str(p) for p in (DEPLOY / "prometheus" / "tests").glob("*.yml"))
    return _run([tools.promtool, "check", "rules", *rules]) + "\n" + _run([tools.promtool, "test", "rules", *tests])


def amtool(*, tools: Tools) -> str:
    return _run([tools.amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")])


def generated_up_to_date() -> list[str]:
    """The committed rules and dashboards are what their generators write."""
    from deploy.grafana import build_dashboards
    from deploy.prometheus import build_rules

    stale = []
    if build_rules.RULES_FILE.read_text() != build_rules.render():
        stale.append(f"{build_rules.RULES_FILE.relative_to(REPO)}: run python -m deploy.prometheus.build_rules")
    for board in build_dashboards.DASHBOARDS:
        path = build_dashboards.DASHBOARDS_DIR / f"feint-{board.service}.json"
        if not path.exists() or path.read_text() != build_dashboards.render(board):
            stale.append(f"{path.relative_to(REPO)}: run python -m deploy.grafana.build_dashboards")
    return stale


def exposition() -> str:
    """What /metrics answers once every service's modules are loaded (one registry per process)."""
    import importlib

    from prometheus_client import generate_latest

    from feint.platform.serve import SERVICES

    for name in SERVICES:
        importlib.import_module(f"feint.{name}.app")
    # Modules whose collectors are registered on first import by the code paths of a service.
    for module in ("feint.credits.engine", "feint.credits.cache", "feint.credits.sweeper"):
        importlib.import_module(module)
    return generate_latest().decode()


def metric_names(exposition_text: str) -> list[str]:
    from deploy.checks import metrics

    known = metrics.exported(exposition_text) | metrics.recorded() | metrics.load_contract().names()
    return metrics.unknown([*metrics.rule_uses(), *metrics.dashboard_uses()], known)


def steps(tools: Tools, out_dir: Path) -> Iterator[tuple[str, Callable[[], str]]]:
    rendered: dict[str, list[dict[str, Any]]] = {}

    def do_render(overlay: str) -> str:
        rendered[overlay] = render(overlay, tools=tools)
        write_rendered(rendered[overlay], out_dir / f"{overlay}.yaml")
        return f"{len(rendered[overlay])} objects → {out_dir / (overlay + '.yaml')}"

    def listing(found: list[str]) -> str:
        if found:
            raise CheckFailed("\n".join(found))
        return "ok"

    def validated(overlay: str) -> str:
        return listing(validate(rendered[overlay]))

    def policed(overlay: str) -> str:
        return listing(_policy(rendered[overlay]))

    for overlay in OVERLAYS:
        yield f"kustomize {overlay}", functools.partial(do_render, overlay)
        yield (
            f"kubernetes-validate --strict {overlay} (k8s {KUBERNETES_VERSION})",
            functools.partial(validated, overlay),
        )
        yield f"policy {overlay}", functools.partial(policed, overlay)
    yield "checkov", lambda: checkov([out_dir / f"{o}.yaml" for o in OVERLAYS] + [DEPLOY / "Dockerfile"], tools=tools)
    yield "hadolint", lambda: hadolint(tools=tools)
    yield "promtool check + test rules", lambda: promtool(tools=tools)
    yield "amtool check-config", lambda: amtool(tools=tools)
    yield "generated files up to date", lambda: listing(generated_up_to_date())
    yield "metric names exist", lambda: listing(metric_names(exposition()))


def _policy(objects: list[dict[str, Any]]) -> list[str]:
    from deploy.checks import policy

    return policy.problems(objects)


def main(argv: list[str] | None = None) -> int:
    import time

    out_dir = REPO / "build" / "deploy"
    tools = Tools()
    failed = 0
    begun = time.perf_counter()
    for title, step in steps(tools, out_dir):
        started = time.perf_counter()
        try:
            detail = step()
            status = "ok"
        except CheckFailed as exc:
            detail, status = str(exc), "FAILED"
            failed += 1
        last = detail.strip().splitlines()[-1] if detail.strip() else ""
        sys.stdout.write(f"{status:6} {title} ({time.perf_counter() - started:.1f} s): {last}\n")
        if status != "ok":
            sys.stdout.write(detail + "\n")
    sys.stdout.write(f"deploy checks: {failed} failed, {time.perf_counter() - begun:.1f} s\n")
    return 1 if failed else 0
