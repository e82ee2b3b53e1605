"""What the tests of deploy/ share: the repository's root, deploy/prometheus/render.py as
a module, and Debian's promtool and prometheus (a failure, never a skip, when missing)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_render() -> ModuleType:
    path = ROOT / "deploy" / "prometheus" / "render.py"
    spec = importlib.util.spec_from_file_location("deploy_render", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prometheus_tool(name: str, variable: str) -> str:
    """`promtool` or `prometheus`: $variable, or the one `make deploy-check` (or
    `make unit-test`) put in .venv-tools/promtool."""
    path = os.environ.get(variable) or str(ROOT / ".venv-tools" / "promtool" / name)
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} not found at {path}: run `make deploy-check`, or "
            f"deploy/prometheus/install-promtool.sh .venv-tools/promtool, or set {variable}"
        )
    return path
