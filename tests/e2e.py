"""End-to-end harness: the stand-in platform on loopback and the real `sweeper` CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sweeper.devserver.server import RunningServer, serve_in_thread
from sweeper.devserver.state import PlatformState
from tests.fakes import TOKEN

Hook = Callable[[Request], Awaitable[Response | None]]
#: A base URL nothing listens on: runs given it must stop before any call.
NOWHERE = "http://127.0.0.1:9"


@dataclass
class Platform:
    """A running stand-in whose behaviour tests can change between runs."""

    server: RunningServer
    hooks: list[Hook] = field(default_factory=list)

    @property
    def state(self) -> PlatformState:
        return self.server.state

    @property
    def faults(self) -> Any:
        return self.server.app.state.faults

    @property
    def counters(self) -> Any:
        return self.server.app.state.counters

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def arrivals(self, method: str) -> list[float]:
        return [t for t, m, _ in self.counters.arrivals if m == method]

    def reset(self) -> None:
        from datetime import timedelta

        self.state.reset()
        self.hooks.clear()
        self.faults.latency = timedelta(0)
        self.faults.error_rate = 0.0
        self.faults.clock_skew = timedelta(0)
        self.faults.send_date = True
        self.faults.retry_after_seconds = 1
        self.counters.arrivals.clear()
        self.counters.requests = self.counters.faults = 0
        self.counters.by_method.clear()
        self.counters.keep_arrivals = True


def start_platform() -> Platform:
    hooks: list[Hook] = []

    async def intercept(request: Request) -> Response | None:
        for hook in hooks:
            answer = await hook(request)
            if answer is not None:
                return answer
        return None

    server = serve_in_thread(PlatformState(), TOKEN, intercept=intercept)
    return Platform(server, hooks)


def write_config(tmp_path: Path, base_url: str, extra: str = "", token: str = TOKEN) -> Path:
    token_file = tmp_path / "api-token"
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    config = tmp_path / "config.toml"
    # Keys set at the top of `extra` (still in [api]) replace these defaults.
    api_part = extra.split("[", 1)[0]
    given = {line.split("=", 1)[0].strip() for line in api_part.splitlines() if "=" in line}
    defaults = {"max_rate": "0", "max_attempts": "1", "timeout": '"5s"'}
    lines = "".join(f"{k} = {v}\n" for k, v in defaults.items() if k not in given)
    config.write_text(
        f'[api]\nbase_url = "{base_url}"\ntoken_file = "{token_file}"\n{lines}{extra}\n',
        encoding="utf-8",
    )
    config.chmod(0o600)
    return config


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update(extra)
    return env


def sweeper(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, stderr: Any = None
) -> Result:
    """Run the real CLI to completion; JSON logs on stderr (captured unless `stderr` says
    where they go)."""
    done = subprocess.run(
        [sys.executable, "-m", "sweeper", "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr is None else stderr,
        text=True,
        timeout=timeout,
        env=env or environment(),
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr or "")


def start_sweeper(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )


class Lines:
    """A daemon's JSON events as they arrive (read on demand from its log file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read_text(self) -> str:
        return self.path.read_text()

    @property
    def events(self) -> list[dict[str, Any]]:
        return Result(0, "", self.read_text()).events

    def named(self, event: str) -> list[dict[str, Any]]:
        return Result(0, "", self.read_text()).named(event)


def start_daemon(config: Path, tmp_path: Path) -> tuple[subprocess.Popen[str], Lines]:
    """`sweeper run` in the background, its JSON logs in a file of tmp_path (a pipe
    nobody reads would fill and stall it)."""
    err = tmp_path / "daemon.log"
    with err.open("w") as handle:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sweeper",
                "--log-format",
                "json",
                "--config",
                str(config),
                "run",
            ],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            text=True,
            env=environment(),
        )
    return proc, Lines(err)


def stop_daemon(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def run_daemon_until(config: Path, tmp_path: Path, done: Callable[[str], bool]) -> str:
    """Run the real daemon until its log shows `done` (an event, with a generous bound);
    its log."""
    proc, log = start_daemon(config, tmp_path)
    try:
        wait_for(lambda: done(log.read_text()), timeout=120)
    finally:
        stop_daemon(proc)
    return log.read_text()


def start_dev_server(*args: str, token: str) -> tuple[subprocess.Popen[str], str]:
    """`sweeper dev-server --port 0 ARGS` with SWEEPER_DEV_TOKEN=token; the process and the
    base URL it prints on its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "dev-server", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(SWEEPER_DEV_TOKEN=token),
    )
    assert proc.stdout is not None
    found = re.search(r"(http://127\.0\.0\.1:\d+)", proc.stdout.readline())
    assert found is not None, "dev-server printed no base URL"
    return proc, found.group(1)


def free_port() -> int:
    """A loopback port free at the moment of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Poll a condition another process makes true (not a sleep standing in for time)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def signal_and_collect(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> Result:
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    return Result(proc.returncode, stdout, stderr)
