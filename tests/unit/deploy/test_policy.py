"""deploy.checks.policy: every Deployment has a PDB, an HPA, a NetworkPolicy, three probes, a locked-down pod."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from deploy.checks.policy import problems

pytestmark = pytest.mark.unit

LABELS = {"app.kubernetes.io/name": "credits", "app.kubernetes.io/part-of": "feint"}
PROBE = {"httpGet": {"path": "/health", "port": "http"}}


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "feint-credits", "namespace": "feint"},
        "spec": {
            "selector": {"matchLabels": LABELS},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "credits",
                            "startupProbe": PROBE,
                            "livenessProbe": PROBE,
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "512Mi"},
                                "limits": {"cpu": "2", "memory": "2Gi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def _companions() -> list[dict[str, Any]]:
    meta = {"namespace": "feint"}
    return [
        {
            "kind": "PodDisruptionBudget",
            "metadata": {**meta, "name": "c"},
            "spec": {"selector": {"matchLabels": LABELS}},
        },
        {
            "kind": "HorizontalPodAutoscaler",
            "metadata": {**meta, "name": "c"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "feint-credits"}},
        },
        {
            "kind": "NetworkPolicy",
            "metadata": {**meta, "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "kind": "NetworkPolicy",
            "metadata": {**meta, "name": "credits"},
            "spec": {
                "podSelector": {
                    "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["credits"]}]
                },
                "policyTypes": ["Ingress"],
                "ingress": [{}],
            },
        },
    ]


def test_a_complete_deployment_passes() -> None:
    """A Deployment with its PDB, HPA, policies, probes and security context has no problem."""
    assert problems([_deployment(), *_companions()]) == []


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("PodDisruptionBudget", "no PodDisruptionBudget selects its pods"),
        ("HorizontalPodAutoscaler", "no HorizontalPodAutoscaler targets it"),
        ("credits", "no NetworkPolicy of its own"),
        ("deny", "no default-deny NetworkPolicy"),
    ],
)
def test_each_missing_companion_is_named(drop: str, expected: str) -> None:
    """Removing the PDB, the HPA, the own policy or the default deny is reported by name."""
    others = [o for o in _companions() if drop not in (o["kind"], o["metadata"]["name"])]
    found = problems([_deployment(), *others])
    assert len(found) == 1
    assert expected in found[0]
    assert found[0].startswith("Deployment/feint/feint-credits")


def test_a_pdb_in_another_namespace_or_for_other_pods_does_not_count() -> None:
    """The PDB must be in the Deployment's namespace and select its pods."""
    companions = _companions()
    companions[0]["metadata"]["namespace"] = "other"
    assert any("PodDisruptionBudget" in p for p in problems([_deployment(), *companions]))
    companions = _companions()
    companions[0]["spec"]["selector"]["matchLabels"] = {"app.kubernetes.io/name": "shadow"}
    assert any("PodDisruptionBudget" in p for p in problems([_deployment(), *companions]))


def test_hpa_exemption_needs_a_reason() -> None:
    """An empty exemption annotation is not a reason; a written one is."""
    others = [o for o in _companions() if o["kind"] != "HorizontalPodAutoscaler"]
    deployment = _deployment()
    deployment["metadata"]["annotations"] = {"feint.io/policy-exempt-hpa": "  "}
    assert any("HorizontalPodAutoscaler" in p for p in problems([deployment, *others]))
    deployment["metadata"]["annotations"] = {"feint.io/policy-exempt-hpa": "single cache instance"}
    assert problems([deployment, *others]) == []


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_each_missing_probe_is_named(probe: str) -> None:
    """A container without any one of the three probes is reported with the probe's name."""
    deployment = _deployment()
    del deployment["spec"]["template"]["spec"]["containers"][0][probe]
    assert problems([deployment, *_companions()]) == [f"Deployment/feint/feint-credits container credits: no {probe}"]


def test_an_autoscaled_rollout_must_keep_every_pod() -> None:
    """maxUnavailable other than 0 on an autoscaled Deployment is reported."""
    deployment = _deployment()
    deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = 1
    assert any("maxUnavailable 0" in p for p in problems([deployment, *_companions()]))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("automountServiceAccountToken",), True, "automountServiceAccountToken is not false"),
        (("securityContext", "seccompProfile", "type"), "Unconfined", "seccompProfile is not RuntimeDefault"),
        (("containers", 0, "securityContext", "readOnlyRootFilesystem"), False, "readOnlyRootFilesystem"),
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation"),
        (("containers", 0, "securityContext", "capabilities", "drop"), ["NET_RAW"], "do not drop ALL"),
        (("containers", 0, "resources", "limits"), {"cpu": "1"}, "no memory limit"),
        (("hostNetwork",), True, "uses a host namespace"),
    ],
)
def test_security_context_violations_are_named(path: tuple[Any, ...], value: Any, expected: str) -> None:
    """Each weakened security setting is reported."""
    deployment = copy.deepcopy(_deployment())
    target: Any = deployment["spec"]["template"]["spec"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    found = problems([deployment, *_companions()])
    assert any(expected in p for p in found), found


def test_jobs_and_cronjobs_get_the_security_checks_but_not_the_deployment_ones() -> None:
    """A CronJob's pod is checked for its security context; it needs no PDB, HPA or probes."""
    pod = copy.deepcopy(_deployment()["spec"]["template"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        del pod["spec"]["containers"][0][probe]
    cronjob = {
        "kind": "CronJob",
        "metadata": {"name": "feint-backup", "namespace": "feint"},
        "spec": {"jobTemplate": {"spec": {"template": pod}}},
    }
    deny = [o for o in _companions() if o["metadata"]["name"] == "deny"]
    assert problems([cronjob, *deny]) == []
    pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    assert problems([cronjob, *deny]) == [
        "CronJob/feint/feint-backup container credits: readOnlyRootFilesystem is not true"
    ]
