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


def render(mode: str) -> list[str]:
    """kubectl kustomize overlays/<mode>, split into its documents."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / "overlays" / mode)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in rendered.split("\n---\n") if doc.strip()]


def kind_of(doc: str) -> str:
    match = re.search(r"^kind: (\w+)$", doc, re.MULTILINE)
    assert match, doc[:200]
    return match.group(1)


def groups_and_alerts(docs: list[str]) -> tuple[list[str], list[str]]:
    rules = [doc for doc in docs if kind_of(doc) == "PrometheusRule"]
    assert len(rules) == 1
    groups = re.findall(r"^\s*- name: (sweeper-\S+)$", rules[0], re.MULTILINE)
    alerts = re.findall(r"^\s*- alert: (\w+)$", rules[0], re.MULTILINE)
    return groups, alerts


@pytest.mark.tools
@pytest.mark.parametrize(("mode", "workload"), MODES.items())
def test_each_overlay_renders_exactly_one_workload(mode: str, workload: str) -> None:
    """kubectl kustomize overlays/<mode>: the shared base plus one workload of its kind, and no
    Secret (an apply never overwrites the real token)."""
    kinds = [kind_of(doc) for doc in render(mode)]
    assert [k for k in kinds if k in WORKLOADS] == [workload]
    assert {"Namespace", "ConfigMap", "NetworkPolicy"} <= set(kinds)
    assert "Secret" not in kinds


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


@pytest.mark.tools
def test_the_daemon_overlay_is_scraped_and_alerts_on_the_daemon() -> None:
    """A ServiceMonitor for the metrics Service, with job="sweeper"; the daemon's alerts only."""
    docs = render("daemon")
    (monitor,) = [doc for doc in docs if kind_of(doc) == "ServiceMonitor"]
    (service,) = [doc for doc in docs if kind_of(doc) == "Service"]
    assert "jobLabel: app.kubernetes.io/name" in monitor
    assert "port: metrics" in monitor and "name: metrics" in service
    assert "app.kubernetes.io/name: sweeper" in service
    groups, alerts = groups_and_alerts(docs)
    assert groups == ["sweeper-daemon"]
    assert {"SweeperDown", "SweeperAbsent", "SweeperNoSuccessfulSweep"} <= set(alerts)
    assert not [a for a in alerts if "OneShot" in a or "Textfile" in a or "CronJob" in a]


@pytest.mark.tools
def test_the_cronjob_overlay_pushes_and_alerts_on_the_push() -> None:
    """The CronJob pushes to a Pushgateway; its alerts select that push, none of the daemon's
    (SweeperAbsent would fire: no daemon exists) and no ServiceMonitor."""
    docs = render("cronjob")
    kinds = [kind_of(doc) for doc in docs]
    assert "ServiceMonitor" not in kinds
    (cronjob,) = [doc for doc in docs if kind_of(doc) == "CronJob"]
    assert "- --push-gateway" in cronjob
    groups, alerts = groups_and_alerts(docs)
    assert groups == ["sweeper-pushgateway"]
    assert "SweeperAbsent" not in alerts and "SweeperDown" not in alerts
    assert set(alerts) == {
        "SweeperCronJobNoSuccessfulSweep",
        "SweeperCronJobNeverSucceeded",
        "SweeperCronJobNotPushing",
        "SweeperCronJobAbsent",
    }


def test_the_base_applies_no_secret() -> None:
    """secret.example.yaml is in no kustomization: `kubectl apply -k` keeps the real token."""
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        text = kustomization.read_text(encoding="utf-8")
        assert not re.search(r"^\s*- .*secret", text, re.MULTILINE), kustomization
