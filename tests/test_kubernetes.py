"""deploy/kubernetes (issue 14): every manifest valid against Kubernetes' own schemas
(kubernetes-validate, offline, strict: no unknown fields), listed in the kustomization,
and the Deployment as the issue asks: probes on /healthz and /readyz, non-root, read-only
root filesystem with writable /tmp, keys from a Secret, resources set, pgvector search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(FOLDER.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            (doc,) = list(yaml.safe_load_all(path.read_text()))
            found[path.name] = doc
    return found


@pytest.mark.parametrize("name", sorted(manifests()))
def test_each_manifest_is_valid_kubernetes(name: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifests()[name], K8S_VERSION, strict=True)


def test_the_validator_refuses_an_unknown_field() -> None:
    import kubernetes_validate

    broken = manifests()["deployment.yaml"]
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(manifests())
    kinds = {doc["kind"] for doc in manifests().values()}
    assert kinds == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def test_the_deployment_runs_stateless_replicas_safely() -> None:
    docs = manifests()
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/data"} <= mounts  # what the app writes, with the root read-only
    assert container["envFrom"] == [{"secretRef": {"name": "faceverify"}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FACEVERIFY_VECTOR_SEARCH"] == "pgvector"  # no per-replica gallery copy
    # The encoder's threads follow the CPU limit, not the node's core count.
    assert int(env["FACEVERIFY_ONNX_THREADS"]) == int(container["resources"]["limits"]["cpu"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    hpa = docs["horizontalpodautoscaler.yaml"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == docs["deployment.yaml"]["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert docs["poddisruptionbudget.yaml"]["spec"]["minAvailable"] >= 1
    service = docs["service.yaml"]["spec"]
    assert service["ports"][0]["targetPort"] == container["ports"][0]["name"]


def test_every_setting_the_manifests_use_exists() -> None:
    from app.settings import Settings

    pod = manifests()["deployment.yaml"]["spec"]["template"]["spec"]
    names = {e["name"] for e in pod["containers"][0]["env"]}
    known = {f"FACEVERIFY_{f.upper()}" for f in Settings.model_fields}
    assert names <= known, names - known
