"""The CLI as a Unix tool: help, --version, levels, colour, pipes, and tables for a person."""

from __future__ import annotations

import argparse
import io
import json
import os
import pty
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sweeper import __version__
from sweeper.cli import build_parser
from sweeper.devserver.server import announcement
from sweeper.logs import configure_logging
from tests.e2e import Platform, environment, sweeper, write_config
from tests.fakes import TOKEN, record


@dataclass
class Terminal:
    code: int
    screen: str
    stderr: str

    def named(self, name: str) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]
        return [e for e in lines if e.get("event") == name]


def on_a_terminal(*args: str, tmp_path: Path) -> Terminal:
    """Run the real CLI with stdout on a pseudo-terminal (as a person runs it), JSON logs."""
    primary, secondary = pty.openpty()
    err = tmp_path / "stderr.log"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "--log-format", "json", *args],
            stdout=secondary,
            stderr=stderr,
            env=environment(),
        )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    code = proc.wait(timeout=60)
    screen = b"".join(chunks).decode().replace("\r\n", "\n")
    return Terminal(code, screen, err.read_text())


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no commands")


def test_every_flag_has_help_text() -> None:
    """Every option of every command says what it does; the ones with a default name it."""
    parser = build_parser()
    for name, command in {"": parser, **subparsers(parser)}.items():
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"sweeper {name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.nargs != 0 and action.dest != "help":
                if action.dest in ("step_id", "org"):
                    continue
                text = action.help
                assert "default" in text, f"sweeper {name} {action.option_strings}: no default"


@pytest.mark.parametrize(
    "args", [["--version"], ["run", "--version"], ["check-config", "--version"]]
)
def test_version_anywhere(args: list[str]) -> None:
    """`--version` before or after the command prints the version and exits 0."""
    result = sweeper(*args)
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == f"sweeper {__version__}"


def test_run_help_shows_defaults_and_exit_codes() -> None:
    """`sweeper run --help` lists the defaults and what each exit code means."""
    result = sweeper("run", "--help")
    assert result.code == 0
    assert "sweep.max_steps, 500" in result.stdout
    assert "77  the platform refused the token" in result.stdout


@pytest.mark.parametrize("level", ["warn", "WARN", "warning"])
def test_log_level_warn_is_warning(level: str) -> None:
    """`--log-level warn` is accepted, as most tools spell it."""
    args = build_parser().parse_args(["--log-level", level, "check-config"])
    assert args.log_level == "warning"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("no_color", "coloured"), [("1", False), ("", True)])
def test_no_color_is_honoured(
    monkeypatch: pytest.MonkeyPatch, no_color: str, coloured: bool
) -> None:
    """NO_COLOR (non-empty) turns the console's colours off, even on a terminal."""
    monkeypatch.setenv("NO_COLOR", no_color)
    out = FakeTerminal()
    configure_logging("console", "info", stream=out)
    import structlog

    structlog.get_logger("t").info("hello", key="value")
    assert ("\x1b[" in out.getvalue()) is coloured


def test_dev_server_announces_url_token_and_a_working_snippet() -> None:
    """The dev-server prints its URL, its token and a configuration that points at it."""
    text = announcement("http://127.0.0.1:8700", "dev-token")
    assert "http://127.0.0.1:8700" in text and "token: dev-token" in text
    snippet = "\n".join(
        line.strip() for line in text.splitlines() if line.startswith("  ") and " = " in line
    )
    config = tomllib.loads("[api]\n" + snippet.replace("[api]\n", ""))
    assert config == {"api": {"base_url": "http://127.0.0.1:8700", "token": "dev-token"}}
    assert "SWEEPER_API__BASE_URL=http://127.0.0.1:8700 SWEEPER_API__TOKEN=dev-token" in text


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`sweeper check-config | head -1`: the reader left; exit 141 as a Unix tool, no crash."""
    config = write_config(tmp_path, "https://platform.example.test")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "--config", str(config), "check-config"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the program writes
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in stderr
    assert b"crashed" not in stderr


def test_check_config_json_shows_the_interval_in_force(tmp_path: Path) -> None:
    """No `"interval": null` where 5m is in force; a rule shows what it inherits."""
    extra = '[[sweep.rules]]\nname = "r"\nmatch = { stepType = ["x"] }\nstatus = "CANCELLED"\n'
    config = write_config(tmp_path, "https://platform.example.test", extra)
    result = sweeper("--config", str(config), "check-config")
    assert result.code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["schedule"]["interval"] == "5m"
    assert shown["sweep"]["rules"][0]["stale_after"] == "2h"


def test_check_config_on_a_terminal_is_a_table(tmp_path: Path) -> None:
    """On a terminal: the values in force, where the file and the token came from."""
    config = write_config(tmp_path, "https://platform.example.test")
    seen = on_a_terminal("--config", str(config), "check-config", tmp_path=tmp_path)
    assert seen.code == 0, seen.stderr
    assert f"configuration: {config.resolve()}" in seen.screen
    assert "token: the file " in seen.screen
    assert "schedule.interval" in seen.screen and "5m" in seen.screen
    assert not seen.screen.lstrip().startswith("{")
    assert TOKEN not in seen.screen


def test_run_once_on_a_terminal_ends_with_a_table(stand_in: Platform, tmp_path: Path) -> None:
    """`run --once` on a terminal: counts and one row per zombie, idle times as `1d 3h`."""
    now = datetime.now(UTC)
    stand_in.state.add(record("old", now=now, started=timedelta(days=1, hours=3, minutes=4)))
    config = write_config(tmp_path, stand_in.base_url)
    seen = on_a_terminal("--config", str(config), "run", "--once", tmp_path=tmp_path)
    assert seen.code == 0, seen.stderr
    assert "completed" in seen.screen
    assert "marked FAILED" in seen.screen
    assert "1d 3h" in seen.screen
    assert "RUNNING steps listed" in seen.screen
    assert "exit code 0" in seen.screen
    assert seen.named("sweep.finished")  # the JSON events are still there for machines


def test_a_dry_run_on_a_terminal_says_nothing_was_written(
    stand_in: Platform, tmp_path: Path
) -> None:
    """--dry-run: the table says so, with `would mark` rows."""
    stand_in.state.add(record("old", now=datetime.now(UTC), started=timedelta(hours=5)))
    config = write_config(tmp_path, stand_in.base_url)
    seen = on_a_terminal("--config", str(config), "run", "--once", "--dry-run", tmp_path=tmp_path)
    assert seen.code == 0, seen.stderr
    assert "dry run: nothing written" in seen.screen
    assert "would mark FAILED" in seen.screen
    assert stand_in.state.patches == []


def test_mark_refuses_a_live_step_and_says_why(stand_in: Platform, tmp_path: Path) -> None:
    """A step that beat 55 s ago: not marked, exit 1, its idle time and limit named."""
    now = datetime.now(UTC)
    stand_in.state.add(record("live", now=now, heartbeat=timedelta(seconds=55)))
    config = write_config(tmp_path, stand_in.base_url)
    seen = on_a_terminal(
        "--config", str(config), "mark", "live", "--org", "org-a", tmp_path=tmp_path
    )
    assert seen.code == 1
    assert stand_in.state.patches == []
    assert "not marked" in seen.screen
    assert "within its limit (2h, rule default)" in seen.screen
    assert "--force" in seen.screen
    assert "zombies" not in seen.screen  # a sentence, not a sweep's counts


def test_mark_force_uses_the_by_hand_error_code(stand_in: Platform, tmp_path: Path) -> None:
    """--force marks a live step; the default error code says a person marked it."""
    now = datetime.now(UTC)
    stand_in.state.add(record("live", now=now, heartbeat=timedelta(seconds=55)))
    config = write_config(tmp_path, stand_in.base_url)
    seen = on_a_terminal(
        "--config", str(config), "mark", "live", "--org", "org-a", "--force", tmp_path=tmp_path
    )
    assert seen.code == 0, seen.stderr
    assert stand_in.state.steps["live"]["errorCode"] == "MARKED_BY_HAND"
    assert "marked FAILED with error code MARKED_BY_HAND" in seen.screen


def test_mark_a_missing_step_or_wrong_org_says_so(stand_in: Platform, tmp_path: Path) -> None:
    """A wrong --org (or id): `not found`, exit 1."""
    stand_in.state.add(record("s1", org="org-a", now=datetime.now(UTC), started=timedelta(hours=5)))
    config = write_config(tmp_path, stand_in.base_url)
    seen = on_a_terminal("--config", str(config), "mark", "s1", "--org", "org-b", tmp_path=tmp_path)
    assert seen.code == 1
    assert "not found: no such step in this organization" in seen.screen
    assert stand_in.state.patches == []
