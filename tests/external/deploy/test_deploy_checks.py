"""deploy/ validated offline with the real tools: kustomize, kubernetes-validate, checkov, hadolint, promtool, amtool.

kubectl comes with this machine kind; promtool and amtool are Debian packages (installed on CI when
missing); checkov and hadolint live in their own virtualenv, built by ``make deploy-tools`` (from
deploy/tools-requirements.txt) when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy.checks import policy, run

from tests.conftest import REPO, require_or_skip
from tests.external.conftest import debian_tool

pytestmark = pytest.mark.external

TOOLS_INSTALL_SECONDS_MAX = 600


@pytest.fixture(scope="module")
def tools() -> run.Tools:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        require_or_skip(
            "kubectl", "kubectl is not installed (it renders the kustomize overlays)", env="FEINT_REQUIRE_EXTERNAL"
        )
    promtool = debian_tool("promtool", "prometheus")
    amtool = debian_tool("amtool", "prometheus-alertmanager")
    if not Path(run.Tools().checkov).exists():
        result = subprocess.run(
            ["make", "deploy-tools"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TOOLS_INSTALL_SECONDS_MAX,
            check=False,
        )
        if result.returncode != 0:
            require_or_skip(
                "checkov", f"make deploy-tools failed: {result.stderr[-500:]}", env="FEINT_REQUIRE_EXTERNAL"
            )
    return run.Tools(kubectl=str(kubectl), promtool=promtool, amtool=amtool)


@pytest.fixture(scope="module")
def rendered(
    tools: run.Tools, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[list[dict[str, Any]], Path]]:
    out = tmp_path_factory.mktemp("rendered")
    found = {}
    for overlay in run.OVERLAYS:
        objects = run.render(overlay, tools=tools)
        run.write_rendered(objects, out / f"{overlay}.yaml")
        found[overlay] = (objects, out / f"{overlay}.yaml")
    return found


@pytest.mark.parametrize("overlay", run.OVERLAYS)
def test_overlay_renders_every_service_in_its_namespace(rendered: dict[str, Any], overlay: str) -> None:
    """Both overlays render the three services with HPA, PDB and policy, all in the overlay's namespace."""
    objects, _ = rendered[overlay]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for service in ("credits", "shadow", "camouflage"):
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
            name = f"feint-{service}" if kind != "NetworkPolicy" else service
            assert (kind, name) in kinds
    assert ("Job", "feint-migrate") in kinds
    assert ("Cluster", "feint-db") in kinds
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert namespaces == {"feint" if overlay == "production" else "feint-staging"}
    images = {
        c["image"] for o in objects if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert all(":" in image and not image.endswith(":latest") for image in images)
    assert not any(o["kind"] == "Secret" for o in objects), "secrets come from ExternalSecrets, never in clear"


@pytest.mark.parametrize("overlay", run.OVERLAYS)
def test_kubernetes_validate_strict_passes(rendered: dict[str, Any], overlay: str) -> None:
    """Every built-in object validates strictly; only the listed custom resources go unvalidated."""
    objects, _ = rendered[overlay]
    assert run.validate(objects) == []
    custom = {(o["apiVersion"], o["kind"]) for o in objects} - {
        (o["apiVersion"], o["kind"])
        for o in objects
        if "." not in o["apiVersion"].split("/")[0] or "k8s.io" in o["apiVersion"]
    }
    assert custom <= run.CUSTOM_KINDS


def test_kubernetes_validate_catches_a_misspelt_field(rendered: dict[str, Any]) -> None:
    """The strict validation is live: an unknown field in a Deployment is reported."""
    objects, _ = rendered["production"]
    broken = [dict(o) for o in objects if o["kind"] == "Deployment"][:1]
    broken[0] = {**broken[0], "spec": {**broken[0]["spec"], "replica": 3}}
    problems = run.validate(broken)
    assert problems and "replica" in problems[0]


@pytest.mark.parametrize("overlay", run.OVERLAYS)
def test_policy_every_deployment_has_pdb_hpa_networkpolicy_and_probes(rendered: dict[str, Any], overlay: str) -> None:
    """Our policy finds nothing in the rendered overlay."""
    objects, _ = rendered[overlay]
    assert policy.problems(objects) == []


def test_checkov_passes_on_the_overlays_and_the_dockerfile(rendered: dict[str, Any], tools: run.Tools) -> None:
    """checkov --skip-download reports no failed check (skips are justified in deploy/checkov.yaml)."""
    output = run.checkov([path for _, path in rendered.values()] + [run.DEPLOY / "Dockerfile"], tools=tools)
    assert "dockerfile scan results" in output
    assert "kubernetes scan results" in output
    assert "Failed checks: 0" in output


def test_hadolint_has_no_findings(tools: run.Tools) -> None:
    """hadolint finds nothing in deploy/Dockerfile."""
    assert run.hadolint(tools=tools) == "no findings"


def test_promtool_checks_and_unit_tests_pass(tools: run.Tools) -> None:
    """promtool check rules and promtool test rules both succeed."""
    output = run.promtool(tools=tools)
    assert "SUCCESS" in output
    assert "FAILED" not in output


def test_alertmanager_routes_critical_to_pagerduty_and_warnings_to_slack(tools: run.Tools) -> None:
    """amtool accepts the configuration, and its routing sends each severity where the guide says."""
    run.amtool(tools=tools)
    config = str(run.DEPLOY / "alertmanager" / "alertmanager.yml")

    def receivers(*labels: str) -> str:
        result = subprocess.run(
            [tools.amtool, "config", "routes", "test", f"--config.file={config}", *labels],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.strip()

    assert receivers("severity=critical") == "pagerduty,slack-warnings"
    assert receivers("severity=warning") == "slack-warnings"
    assert receivers("severity=warning", "team=security") == "slack-security"
