"""Several real daemons (the CLI, in subprocesses) under one election, against one stand-in.

Each copy has its own token on the stand-in, so every listing and every PATCH is
attributed to the copy that sent it; the properties of the issue are checked on
that record, and on each copy's own events (JSON on its stderr).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sweeper.api import STEPS_PATH
from sweeper.devserver.server import RunningServer, serve_in_thread
from sweeper.devserver.state import PlatformState
from tests.e2e import Result, environment, wait_for
from tests.helpers import TOKEN, record

#: The issue's test timing: lease 4 s, renew 1 s; api.timeout 1 s.
LEASE, RENEW = 4.0, 1.0
#: Failover after kill -9 or SIGSTOP: another copy lists within lease + renew + 2 s.
FAILOVER_LIMIT = LEASE + RENEW + 2.0


@dataclass(frozen=True)
class Seen:
    """One request as the stand-in saw it: when, from which copy, what."""

    at: float
    copy: str
    method: str
    path: str

    @property
    def listing(self) -> bool:
        return self.method == "GET" and self.path == STEPS_PATH


@dataclass
class Stand:
    """The stand-in platform, accepting one token per copy and recording who sent what."""

    server: RunningServer
    tokens: dict[str, str]
    seen: list[Seen] = field(default_factory=list)

    @property
    def state(self) -> PlatformState:
        return self.server.state

    def requests(self, copy: str | None = None) -> list[Seen]:
        return [s for s in list(self.seen) if copy is None or s.copy == copy]

    def listings(self) -> list[Seen]:
        return [s for s in list(self.seen) if s.listing]


def start_stand(copies: int = 3) -> Stand:
    tokens = {f"Bearer tok-{chr(97 + i)}-{os.getpid()}": chr(97 + i) for i in range(copies)}
    seen: list[Seen] = []

    async def intercept(request: Request) -> Response | None:
        copy = tokens.get(request.headers.get("authorization", ""), "?")
        seen.append(Seen(time.time(), copy, request.method, request.url.path))
        return None

    also = tuple(t.removeprefix("Bearer ") for t in tokens)
    server = serve_in_thread(PlatformState(), TOKEN, intercept=intercept, also_tokens=also)
    return Stand(server, {copy: t.removeprefix("Bearer ") for t, copy in tokens.items()}, seen)


def due_steps(stand: Stand, n: int, first_in: float, every: float, stale: float) -> list[str]:
    """n RUNNING steps whose worker went silent, crossing their limit one after another."""
    now = datetime.now(UTC)
    ids = []
    for i in range(n):
        due_in = first_in + i * every
        step_id = f"dead-{i:03d}"
        stand.state.add(
            record(
                step_id,
                now=now,
                started=timedelta(hours=1),
                heartbeat=timedelta(seconds=stale - due_in),
            )
        )
        ids.append(step_id)
    return ids


class Copy:
    """One daemon (`sweeper run`) or one-shot run, with its log file."""

    def __init__(
        self, name: str, tmp: Path, stand: Stand, engine_config: str, argv: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        folder = tmp / name
        folder.mkdir(exist_ok=True)
        token = folder / "token"
        token.write_text(stand.tokens[name] + "\n")
        token.chmod(0o600)
        self.config = folder / "config.toml"
        self.config.write_text(
            f'[api]\nbase_url = "{stand.server.base_url}"\ntoken_file = "{token}"\n'
            'timeout = "1s"\nmax_rate = 0\nmax_attempts = 2\n'
            '[schedule]\ninterval = "60s"\n'
            '[sweep]\nstale_after = "30s"\n'
            f'[leader]\nidentity = "{name}"\nlease = "{LEASE:g}s"\nrenew_every = "{RENEW:g}s"\n'
            f"{engine_config}"
        )
        self.config.chmod(0o600)
        self.log = folder / "stderr.log"
        self.argv = argv or ("run",)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Copy:
        with self.log.open("a") as handle:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sweeper",
                    "--log-format",
                    "json",
                    "--config",
                    str(self.config),
                    *self.argv,
                ],
                stdout=subprocess.DEVNULL,
                stderr=handle,
                text=True,
                env=environment(),
            )
        return self

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = Result(0, "", self.log.read_text()).events
        return [e for e in found if name is None or e["event"] == name]

    def times(self, name: str, **fields: Any) -> list[float]:
        return [
            datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()
            for e in self.events(name)
            if all(e.get(k) == v for k, v in fields.items())
        ]

    def signal(self, signum: int) -> float:
        assert self.proc is not None
        at = time.time()
        self.proc.send_signal(signum)
        return at

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def leader_of(copies: list[Copy], after: float = 0.0) -> Copy:
    """The copy that acquired the lease last (after `after`), waiting for one to."""
    holder: list[Copy] = []

    def someone() -> bool:
        acquired = [
            (max(c.times("leader.acquired")), c) for c in copies if c.times("leader.acquired")
        ]
        acquired = [(t, c) for t, c in acquired if t > after]
        if acquired:
            holder[:] = [max(acquired, key=lambda pair: pair[0])[1]]
        return bool(holder)

    wait_for(someone, timeout=60)
    return holder[0]


def first_listing_after(stand: Stand, at: float, but_not: str) -> float:
    found: list[float] = []

    def listed() -> bool:
        found[:] = [s.at for s in stand.listings() if s.at > at and s.copy != but_not]
        return bool(found)

    wait_for(listed, timeout=60)
    return min(found) - at


def wait_all_marked(stand: Stand, ids: list[str], timeout: float = 90) -> None:
    def marked() -> bool:
        return all(stand.state.steps[i]["status"] == "FAILED" for i in ids)

    wait_for(marked, timeout=timeout)


def check_properties(stand: Stand, copies: list[Copy], ids: list[str]) -> None:
    """The issue's properties, on what the stand-in saw and what each copy said."""
    seen = stand.requests()
    assert all(s.copy != "?" for s in seen), "a request no copy's token explains"
    # No two copies list within the same second.
    listings = sorted(stand.listings(), key=lambda s: s.at)
    for before, after in itertools.pairwise(listings):
        if before.copy != after.copy:
            gap = after.at - before.at
            assert gap >= 1.0, f"{before.copy} and {after.copy} listed {gap:.3f}s apart"
    # No step written by two copies.
    writers: dict[str, set[str]] = {}
    for s in seen:
        if s.method == "PATCH":
            writers.setdefault(s.path.rsplit("/", 1)[1], set()).add(s.copy)
    assert all(len(w) == 1 for w in writers.values()), writers
    # Every dead step marked, once.
    assert all(stand.state.steps[i]["status"] == "FAILED" for i in ids)
    assert sorted(writers) == sorted(ids)
    # No request from a copy between losing the lease and taking it again.
    for copy in copies:
        lost = copy.times("leader.lost")
        acquired = copy.times("leader.acquired")
        for at in lost:
            again = min([t for t in acquired if t > at], default=float("inf"))
            late = [s for s in stand.requests(copy.name) if at < s.at < again]
            assert not late, f"{copy.name} sent {late[:3]} after it lost the lease"


def stop_all(copies: list[Copy]) -> None:
    for copy in copies:
        copy.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    wait_for(condition, timeout=timeout)
