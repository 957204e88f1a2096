"""Our own rules for rendered manifests, beyond what kubernetes-validate and checkov check.

Every Deployment must have: a PodDisruptionBudget whose selector matches its pods; a
HorizontalPodAutoscaler aimed at it (unless annotated ``feint.io/policy-exempt-hpa: <reason>``);
a NetworkPolicy with a non-empty pod selector that matches its pods, on top of a default-deny
policy in its namespace; startup, liveness and readiness probes on every container; and the
security context of docs/operations.md ("Security practices"). A Deployment with an HPA rolls
with ``maxUnavailable: 0``. Every Job and CronJob pod meets the same security context.

`problems` is pure: it takes the parsed objects and returns one line per violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

EXEMPT_HPA = "feint.io/policy-exempt-hpa"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
WORKLOAD_KINDS = ("Deployment", "Job", "CronJob")
Obj = Mapping[str, Any]


def _name(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}".replace("//", "/")


def _namespace(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("namespace", ""))


def _matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Label-selector semantics (matchLabels and matchExpressions); None or {} selects everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _pod_spec(obj: Obj) -> tuple[Mapping[str, Any], Mapping[str, str]]:
    """The pod spec and pod labels of a Deployment, Job or CronJob."""
    spec = obj.get("spec", {})
    if obj.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template = spec.get("template", {})
    return template.get("spec", {}), template.get("metadata", {}).get("labels", {})


def _security(where: str, pod: Mapping[str, Any]) -> list[str]:
    out = []
    pod_ctx = pod.get("securityContext", {})
    if pod.get("automountServiceAccountToken") is not False:
        out.append(f"{where}: automountServiceAccountToken is not false")
    if pod_ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        out.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        out.append(f"{where}: uses a host namespace")
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        ctx = container.get("securityContext", {})
        cname = f"{where} container {container.get('name')}"
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            out.append(f"{cname}: runAsNonRoot is not true")
        if ctx.get("readOnlyRootFilesystem") is not True:
            out.append(f"{cname}: readOnlyRootFilesystem is not true")
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{cname}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            out.append(f"{cname}: privileged")
        if "ALL" not in (ctx.get("capabilities", {}).get("drop") or []):
            out.append(f"{cname}: capabilities do not drop ALL")
        if ctx.get("capabilities", {}).get("add"):
            out.append(f"{cname}: adds capabilities")
        resources = container.get("resources", {})
        out.extend(
            f"{cname}: no {resource} {part[:-1]}"
            for part in ("requests", "limits")
            for resource in ("cpu", "memory")
            if resource not in (resources.get(part) or {})
        )
    return out


def problems(objects: Iterable[Obj]) -> list[str]:
    """Every violation of the rules above in a rendered set of manifests, one line each."""
    objs = [o for o in objects if o]
    pdbs = [o for o in objs if o.get("kind") == "PodDisruptionBudget"]
    hpas = [o for o in objs if o.get("kind") == "HorizontalPodAutoscaler"]
    policies = [o for o in objs if o.get("kind") == "NetworkPolicy"]
    out: list[str] = []

    deny_namespaces = {
        _namespace(p)
        for p in policies
        if not p.get("spec", {}).get("podSelector")
        and {"Ingress", "Egress"} <= set(p.get("spec", {}).get("policyTypes", []))
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    }

    for obj in objs:
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        where = _name(obj)
        pod, labels = _pod_spec(obj)
        out.extend(_security(where, pod))
        ns = _namespace(obj)
        if ns not in deny_namespaces:
            out.append(
                f"{where}: no default-deny NetworkPolicy (empty podSelector, Ingress and Egress) in its namespace"
            )
        if obj.get("kind") != "Deployment":
            continue
        name = obj["metadata"]["name"]
        if not any(_namespace(p) == ns and _matches(p["spec"].get("selector"), labels) for p in pdbs):
            out.append(f"{where}: no PodDisruptionBudget selects its pods")
        has_hpa = any(
            _namespace(h) == ns
            and h["spec"]["scaleTargetRef"].get("kind") == "Deployment"
            and h["spec"]["scaleTargetRef"].get("name") == name
            for h in hpas
        )
        reason = str(obj.get("metadata", {}).get("annotations", {}).get(EXEMPT_HPA, "")).strip()
        if not has_hpa and not reason:
            out.append(f"{where}: no HorizontalPodAutoscaler targets it (and no {EXEMPT_HPA} reason)")
        if has_hpa:
            strategy = obj["spec"].get("strategy", {})
            if strategy.get("type", "RollingUpdate") != "RollingUpdate" or strategy.get("rollingUpdate", {}).get(
                "maxUnavailable"
            ) not in (0, "0", "0%"):
                out.append(f"{where}: autoscaled but its rollout is not RollingUpdate with maxUnavailable 0")
        if not any(
            _namespace(p) == ns and p["spec"].get("podSelector") and _matches(p["spec"]["podSelector"], labels)
            for p in policies
        ):
            out.append(f"{where}: no NetworkPolicy of its own (a non-empty podSelector matching its pods)")
        for container in pod.get("containers", []):
            missing = [probe for probe in PROBES if probe not in container]
            if missing:
                out.append(f"{where} container {container.get('name')}: no {', '.join(missing)}")
    return out
