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
