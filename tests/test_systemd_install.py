"""The README's systemd install, run as written into a scratch root, works for a dynamic user.

systemd itself does not run here, so the test does what it would: installs the files
with the README's own commands (paths under a temporary root), hands the token over
as LoadCredential= does, and runs `sweeper check-config` as an unprivileged uid
(65534, as a DynamicUser is: no group, no access to root-only files).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import TOKEN

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "deploy" / "systemd" / "sweeper.service"
ONCE_UNIT = ROOT / "deploy" / "systemd" / "sweeper-once.service"
NOBODY = 65534
SETPRIV = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
BASE_URL = "https://platform.example.test"

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="needs root to install files as root and run as uid 65534 (CI runs as root)",
    ),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
]


def readme_install_commands() -> str:
    """The first sh block of the README's systemd section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### systemd\n", 1)[1].split("\n### ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the README's systemd section has no sh block"
    return match.group(1)


@pytest.fixture(name="scratch")
def _scratch() -> Iterator[Path]:
    """A root directory others can traverse (pytest's tmp_path is 0700)."""
    probe = subprocess.run(
        [*SETPRIV, sys.executable, "-c", "import sweeper"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("this interpreter or checkout is not readable by uid 65534")
    path = Path(tempfile.mkdtemp(prefix="sweeper-systemd-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def install_as_the_readme_says(scratch: Path) -> None:
    (scratch / "etc" / "systemd" / "system").mkdir(parents=True)
    script = readme_install_commands().replace(" /etc/", f" {scratch}/etc/")
    # systemctl has no scratch root to act on: the lines before it are what is checked.
    script = "\n".join(
        ": systemctl skipped" if line.startswith("systemctl") else line
        for line in script.splitlines()
    )
    assert "/etc/" not in script.replace(f"{scratch}/etc/", "")
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "TOKEN": TOKEN, "BASE_URL": BASE_URL},
        check=True,
        umask=0o022,
    )


def load_credential(scratch: Path) -> Path:
    """What LoadCredential=api-token:/etc/sweeper/api-token gives the service's user."""
    credentials = scratch / "run" / "credentials" / "sweeper.service"
    credentials.mkdir(parents=True)
    target = credentials / "api-token"
    shutil.copyfile(scratch / "etc" / "sweeper" / "api-token", target)
    for path in (target, credentials):
        os.chown(path, NOBODY, NOBODY)
    target.chmod(0o400)
    credentials.chmod(0o500)
    return credentials


def as_dynamic_user(scratch: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # No COVERAGE_* variables: the unprivileged child could not write coverage data.
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    return subprocess.run(
        [
            *SETPRIV,
            sys.executable,
            "-m",
            "sweeper",
            "--log-format",
            "json",
            *args,
        ],
        cwd=scratch,
        env={**keep, "PYTHONDONTWRITEBYTECODE": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def unit_setting(unit: Path, key: str) -> str:
    (value,) = [
        line.split("=", 1)[1]
        for line in unit.read_text().splitlines()
        if line.startswith(key + "=")
    ]
    return value


def test_units_read_what_the_readme_installs() -> None:
    """ExecStart's --config and LoadCredential= name the files the README installs."""
    commands = readme_install_commands()
    for unit in (UNIT, ONCE_UNIT):
        assert "--config /etc/sweeper/config.toml" in unit_setting(unit, "ExecStart")
        assert unit_setting(unit, "LoadCredential") == "api-token:/etc/sweeper/api-token"
        assert unit_setting(unit, "DynamicUser") == "yes"
    assert "install -m 0644 config.example.toml /etc/sweeper/config.toml" in commands
    assert "install -m 0600 /dev/stdin /etc/sweeper/api-token" in commands
    assert unit_setting(UNIT, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_the_dynamic_user_reads_its_configuration_and_credential(scratch: Path) -> None:
    """As uid 65534, check-config passes with the token from the credential, no warning."""
    install_as_the_readme_says(scratch)
    config = scratch / "etc" / "sweeper" / "config.toml"
    assert config.stat().st_mode & 0o777 == 0o644
    assert (scratch / "etc" / "sweeper" / "api-token").stat().st_mode & 0o777 == 0o600
    credentials = load_credential(scratch)
    done = as_dynamic_user(
        scratch, "--config", str(config), "check-config", CREDENTIALS_DIRECTORY=str(credentials)
    )
    assert done.returncode == 0, done.stderr
    assert f'"base_url": "{BASE_URL}"' in done.stdout
    assert '"token_file": null' in done.stdout
    assert TOKEN not in done.stdout + done.stderr
    assert "config.warning" not in done.stderr


def test_the_token_comes_only_through_the_credential(scratch: Path) -> None:
    """Without LoadCredential the dynamic user has no token: the root-only file is not read."""
    install_as_the_readme_says(scratch)
    config = scratch / "etc" / "sweeper" / "config.toml"
    done = as_dynamic_user(scratch, "--config", str(config), "check-config")
    assert done.returncode == 78
    assert "api.token: required" in done.stderr
    assert TOKEN not in done.stdout + done.stderr
    # The old example's token_file pointed at the root-only file: permission denied.
    token_file = scratch / "etc" / "sweeper" / "api-token"
    pointed = scratch / "etc" / "sweeper" / "pointed.toml"
    pointed.write_text(
        config.read_text().replace("[api]\n", f'[api]\ntoken_file = "{token_file}"\n', 1),
        encoding="utf-8",
    )
    pointed.chmod(0o644)
    denied = as_dynamic_user(
        scratch,
        "--config",
        str(pointed),
        "check-config",
        CREDENTIALS_DIRECTORY=str(load_credential(scratch)),
    )
    assert denied.returncode == 78
    assert "api.token_file" in denied.stderr
    assert "Permission denied" in denied.stderr
