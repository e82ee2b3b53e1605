"""Kubernetes: one deploy mode at a time, as the README's commands apply them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
WORKLOADS = ("CronJob", "Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod")
MODES = {"cronjob": "CronJob", "daemon": "Deployment"}


def test_readme_applies_one_overlay_per_mode() -> None:
    """The README's kubectl commands name the overlays, never the whole directory."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    applied = re.findall(r"kubectl apply -k (\S+)", readme)
    assert sorted(applied) == sorted(f"deploy/kubernetes/overlays/{m}" for m in MODES)
    for path in applied:
        assert (ROOT / path / "kustomization.yaml").is_file()
    assert not (KUBERNETES / "kustomization.yaml").exists()


def test_the_base_holds_no_workload() -> None:
    """Workloads live in the overlays only."""
    for manifest in (KUBERNETES / "base").glob("*.yaml"):
        kinds = re.findall(r"^kind: (\w+)$", manifest.read_text(encoding="utf-8"), re.MULTILINE)
        assert not set(kinds) & set(WORKLOADS), manifest.name


@pytest.mark.tools
@pytest.mark.parametrize(("mode", "workload"), MODES.items())
def test_each_overlay_renders_exactly_one_workload(mode: str, workload: str) -> None:
    """kubectl kustomize overlays/<mode>: the shared base plus one workload of its kind."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / "overlays" / mode)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    kinds = re.findall(r"^kind: (\w+)$", rendered, re.MULTILINE)
    assert [k for k in kinds if k in WORKLOADS] == [workload]
    assert {"Namespace", "ConfigMap", "NetworkPolicy"} <= set(kinds)
    assert "namespace: sweeper" in rendered


@pytest.mark.tools
def test_the_daemon_overlay_runs_two_replicas_under_leader_election() -> None:
    """2 replicas spread over nodes, [leader] on Kubernetes with POD_NAME from the downward
    API, a Role allowing get/create/update on leases in its namespace only, a PDB.
    (No YAML parser in the test environment: kustomize's output is stable text.)"""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / "overlays" / "daemon")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = {
        (m.group(1), m.group(2)): doc
        for doc in rendered.split("\n---\n")
        if (m := re.search(r"^kind: (\w+)$.*?^  name: (\S+)$", doc, re.MULTILINE | re.DOTALL))
    }
    deployment = docs[("Deployment", "sweeper")]
    assert "\n  replicas: 2\n" in deployment
    assert "serviceAccountName: sweeper" in deployment
    assert "automountServiceAccountToken: true" in deployment
    assert re.search(
        r"topologySpreadConstraints:\n(.*\n)*?.*topologyKey: kubernetes.io/hostname\n"
        r".*whenUnsatisfiable: DoNotSchedule",
        deployment,
    )
    assert re.search(r"- name: SWEEPER_LEADER__BACKEND\n\s+value: kubernetes", deployment)
    assert re.search(
        r"- name: POD_NAME\n\s+valueFrom:\n\s+fieldRef:\n\s+fieldPath: metadata.name",
        deployment,
    )
    role = docs[("Role", "sweeper-leader-election")]
    assert "namespace: sweeper" in role
    verbs = re.findall(r"verbs:\n((?:  - \w+\n)+)", role + "\n")
    assert sorted(v for block in verbs for v in re.findall(r"- (\w+)", block)) == [
        "create",
        "get",
        "update",
    ]
    assert role.count("- leases") == role.count("- coordination.k8s.io") == 2
    assert role.count("resources:") == 2
    binding = docs[("RoleBinding", "sweeper-leader-election")]
    assert re.search(r"subjects:\n- kind: ServiceAccount\n  name: sweeper\n", binding)
    assert not [kind for kind, _ in docs if kind.startswith("Cluster")]
    pdb = docs[("PodDisruptionBudget", "sweeper")]
    assert "minAvailable: 1" in pdb
