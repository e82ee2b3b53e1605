"""The production install holds the daemon only: the stand-in's server stack is an extra."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e import Platform, Result, environment, wait_for, write_config
from tests.fakes import record

ROOT = Path(__file__).parent.parent
SERVER_STACK = ("starlette", "uvicorn")

#: Runs the real CLI with imports of the server stack made impossible, as in an
#: install without the extra (sys.meta_path is asked before any installed package).
WITHOUT_SERVER_STACK = """
import runpy, sys

class NoServerStack:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NoServerStack())
for name in list(sys.modules):
    if name.partition(".")[0] in {blocked!r}:
        raise SystemExit("the server stack was imported before the test could block it")
sys.argv = ["sweeper", *sys.argv[1:]]
runpy.run_module("sweeper", run_name="__main__", alter_sys=True)
""".format(blocked=set(SERVER_STACK))


def command(*args: str) -> list[str]:
    return [sys.executable, "-c", WITHOUT_SERVER_STACK, "--log-format", "json", *args]


def run(*args: str) -> Result:
    done = subprocess.run(
        command(*args), capture_output=True, text=True, timeout=60, env=environment(), check=False
    )
    return Result(done.returncode, done.stdout, done.stderr)


def locked(lock: str) -> set[str]:
    text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
    return {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", text, re.MULTILINE)}


def test_server_stack_is_an_extra_not_a_dependency() -> None:
    """pyproject: starlette and uvicorn only in the devserver extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [re.split(r"[<>=\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    assert not set(SERVER_STACK) & set(names)
    extra = [
        re.split(r"[<>=\[ ]", d, maxsplit=1)[0]
        for d in project["optional-dependencies"]["devserver"]
    ]
    assert set(SERVER_STACK) <= set(extra)


def test_runtime_lock_and_image_hold_the_daemon_only() -> None:
    """runtime.lock (what the Dockerfile installs) has no server stack; dev.lock has it."""
    runtime, dev = locked("runtime.lock"), locked("dev.lock")
    assert not {"starlette", "uvicorn", "click"} & runtime
    assert {"starlette", "uvicorn", "httpx", "apscheduler"} <= dev
    assert runtime <= dev
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert "requirements/runtime.lock" in dockerfile
    assert "devserver" not in dockerfile


def test_run_once_works_without_the_server_stack(stand_in: Platform, tmp_path: Path) -> None:
    """A sweep, check-config and a dry run never import starlette or uvicorn."""
    now = datetime.now(UTC)
    for i in range(3):
        stand_in.state.add(record(f"z{i}", now=now, started=timedelta(hours=5)))
    config = str(write_config(tmp_path, stand_in.base_url))
    assert run("--config", config, "check-config").code == 0
    dry = run("--config", config, "run", "--once", "--dry-run")
    assert dry.code == 0, dry.stderr
    metrics = tmp_path / "sweeper.prom"
    result = run("--config", config, "run", "--once", "--metrics-file", str(metrics))
    assert result.code == 0, result.stderr
    assert len(result.named("step.marked")) == 3
    assert "sweeper_last_success_timestamp_seconds" in metrics.read_text()


def test_daemon_works_without_the_server_stack(stand_in: Platform, tmp_path: Path) -> None:
    """The daemon, /metrics server included, runs and stops cleanly without the extra."""
    now = datetime.now(UTC)
    stand_in.state.add(record("z0", now=now, started=timedelta(hours=5)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    extra = (
        '[schedule]\ninterval = "1h"\n[sweep]\nstale_after = "2s"\n'  # marks a second in
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
    )
    config = write_config(tmp_path, stand_in.base_url, extra)
    proc = subprocess.Popen(
        command("--config", str(config), "run"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        wait_for(lambda: len(stand_in.state.patches) == 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    result = Result(proc.returncode, stdout, stderr)
    assert result.code == 0, stderr
    assert result.named("server.listening")
    assert result.named("daemon.stopped")


@pytest.mark.parametrize("subcommand", ["demo", "dev-server"])
def test_demo_says_how_to_get_the_server_stack(subcommand: str) -> None:
    """Without the extra, demo and dev-server say how to install it and exit 78."""
    result = run(subcommand)
    assert result.code == 78
    assert "pip install 'zombie-step-sweeper[devserver]'" in result.stderr
    assert "Traceback" not in result.stderr


def _dockerfile() -> str:
    return (ROOT / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")


def test_distribution_name_is_not_the_unrelated_sweeper() -> None:
    """pyproject names the distribution zombie-step-sweeper; the command stays `sweeper`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "zombie-step-sweeper"
    assert project["scripts"] == {"sweeper": "sweeper.__main__:main"}


@pytest.mark.parametrize("lock", ["runtime.lock", "dev.lock"])
def test_locks_name_the_distribution(lock: str) -> None:
    """The lock files were compiled from the renamed project (no `via sweeper` left)."""
    text = (ROOT / "requirements" / lock).read_text(encoding="utf-8")
    assert "zombie-step-sweeper (pyproject.toml)" in text
    assert not re.search(r"(via|#  ) sweeper \(pyproject", text)


def test_readme_installs_this_distribution() -> None:
    """No `pip install sweeper` (another program); the install names zombie-step-sweeper."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"pip install ['\"]?sweeper\b", readme)
    assert "zombie-step-sweeper" in readme


def test_image_labels_carry_the_version() -> None:
    """The image has OCI labels, and its version label is the package's version."""
    from sweeper import __version__

    dockerfile = _dockerfile()
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in dockerfile
    assert f"ARG VERSION={__version__}\n" in dockerfile


def test_dockerignore_admits_only_what_the_image_copies() -> None:
    """.dockerignore ignores everything but the sources the Dockerfile copies."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied: set[str] = set()
    for line in _dockerfile().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(word.rstrip("/") for word in line.split()[1:-1])
    assert copied == admitted
