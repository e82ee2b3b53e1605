"""Several real daemons (the CLI, in subprocesses) under one election, against one stand-in.

Each copy has its own token on the stand-in, so every listing and every PATCH is
attributed to the copy that sent it; the properties of the issue are checked on
that record, and on each copy's own events (JSON on its stderr).

Which clock decides "no request between a copy's leader.lost and its next
leader.acquired": the COPY'S OWN monotonic clock. Each copy runs at debug level and
logs `request.sent` just before a request's bytes are written to the socket, and
`leader.acquired` / `leader.lost` with the moment its gate opened / shut, all with
`monotonic`: one process, one clock, the clock the lease itself is timed on, and no
observer in between. The stand-in's arrival time (`Seen.at`, `time.time()` when its
handler runs on a thread of this loaded pytest process) is not an honest clock for
an order that tight: it is a later observation by another process. It still
attributes every request (who sent what, which step was written), and every request
it saw must have a send stamp from that copy (else the stamps would not cover all).
"""

from __future__ import annotations

import itertools
import json
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
from tests.e2e import environment, wait_for
from tests.fakes import TOKEN, record

#: The issue's test timing: lease 4 s, renew 1 s; api.timeout 1 s.
LEASE, RENEW = 4.0, 1.0
#: Failover after kill -9 or SIGSTOP: another copy lists within lease + renew + 2 s. A
#: target that bench/leader.py measures and prints; the tests wait for the failover as
#: an event, bounded only generously (a loaded machine is slow, not wrong).
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


@dataclass(frozen=True)
class Sent:
    """One request as its sender logged it (`request.sent`), just before the write."""

    monotonic: float  # the sender's own monotonic clock
    at: float  # wall clock, comparable across copies on this machine
    copy: str
    method: str
    path: str

    @property
    def listing(self) -> bool:
        return self.method == "GET" and self.path == STEPS_PATH


def _wall(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


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
        self,
        name: str,
        tmp: Path,
        stand: Stand,
        engine_config: str,
        argv: tuple[str, ...] = (),
        lease: float = LEASE,
    ) -> None:
        self.name = name
        folder = tmp / name
        folder.mkdir(exist_ok=True)
        token = folder / "token"
        token.write_text(stand.tokens[name] + "\n")
        token.chmod(0o600)
        self.config = folder / "config.toml"
        self.config.write_text(
            # debug: request.sent, the send stamps the properties are checked on.
            '[log]\nlevel = "debug"\n'
            f'[api]\nbase_url = "{stand.server.base_url}"\ntoken_file = "{token}"\n'
            'timeout = "1s"\nmax_rate = 0\nmax_attempts = 2\n'
            '[schedule]\ninterval = "60s"\n'
            '[sweep]\nstale_after = "30s"\n'
            f'[leader]\nidentity = "{name}"\nlease = "{lease:g}s"\nrenew_every = "{RENEW:g}s"\n'
            f"{engine_config}"
        )
        self.config.chmod(0o600)
        self.log = folder / "stderr.log"
        self.argv = argv or ("run",)
        self.proc: subprocess.Popen[str] | None = None
        self._read = 0  # bytes of the log parsed so far (it only grows)
        self._events: list[dict[str, Any]] = []
        self._named: dict[str, list[dict[str, Any]]] = {}

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
        # Only what was appended since the last call, whole lines only: the tests poll
        # this, and a debug log re-read whole each time would load this process.
        with self.log.open("rb") as handle:
            handle.seek(self._read)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._read += len(complete)
        for line in complete.decode().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                self._events.append(event)
                self._named.setdefault(str(event["event"]), []).append(event)
        return list(self._events if name is None else self._named.get(name, []))

    def times(self, name: str, **fields: Any) -> list[float]:
        return [
            _wall(e) for e in self.events(name) if all(e.get(k) == v for k, v in fields.items())
        ]

    def sends(self) -> list[Sent]:
        return [
            Sent(float(e["monotonic"]), _wall(e), self.name, str(e["method"]), str(e["path"]))
            for e in self.events("request.sent")
        ]

    def holding_periods(self) -> list[tuple[float, float]]:
        """[acquired, lost) on this copy's monotonic clock; an open one ends at +inf."""
        marks = sorted(
            (float(e["monotonic"]), e["event"])
            for e in self.events()
            if e["event"] in ("leader.acquired", "leader.lost")
        )
        periods: list[tuple[float, float]] = []
        start: float | None = None
        for at, event in marks:
            if event == "leader.acquired":
                assert start is None, f"{self.name}: acquired twice without a loss between"
                start = at
            else:
                assert start is not None, f"{self.name}: lost a lease it did not hold"
                periods.append((start, at))
                start = None
        if start is not None:
            periods.append((start, float("inf")))
        return periods

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


def first_listing_after(copies: list[Copy], at: float, but_not: str, timeout: float = 60) -> float:
    """Seconds from `at` (wall) to the first listing another copy SENT after it, waiting
    up to `timeout` for one."""
    found: list[float] = []

    def listed() -> bool:
        found[:] = [
            s.at for c in copies if c.name != but_not for s in c.sends() if s.listing and s.at > at
        ]
        return bool(found)

    wait_for(listed, timeout=timeout)
    return min(found) - at


def wait_all_marked(stand: Stand, ids: list[str], timeout: float = 90) -> None:
    def marked() -> bool:
        return all(stand.state.steps[i]["status"] == "FAILED" for i in ids)

    wait_for(marked, timeout=timeout)


def check_properties(stand: Stand, copies: list[Copy], ids: list[str]) -> None:
    """The issue's properties, on what each copy sent (its own stamps) and what the
    stand-in saw (who wrote what)."""
    seen = stand.requests()  # first: every request in it was sent before the logs are read
    report_diagnostics(stand, copies)
    assert all(s.copy != "?" for s in seen), "a request no copy's token explains"
    sends = {c.name: c.sends() for c in copies}
    # The stamps cover every request the stand-in saw, copy by copy, kind by kind.
    for copy in copies:
        for kind in {(s.method, s.path) for s in seen if s.copy == copy.name}:
            stamped = sum((s.method, s.path) == kind for s in sends[copy.name])
            arrived = sum((s.method, s.path) == kind and s.copy == copy.name for s in seen)
            assert stamped >= arrived, f"{copy.name}: {arrived} x {kind} seen, {stamped} stamped"
    # No request from a copy that does not hold the lease: each one sent inside one of
    # its holding periods, on its own monotonic clock (the first acquisition included).
    for copy in copies:
        periods = copy.holding_periods()
        outside = [s for s in sends[copy.name] if not any(a < s.monotonic < b for a, b in periods)]
        assert not outside, (
            f"{copy.name} sent {outside[:3]} without the lease; held {periods};"
            f" lag of the stand-in: {observer_lag(stand, copies)}"
        )
    # No two copies list within the same second (as sent, on the machine's wall clock).
    listings = sorted((s for c in copies for s in sends[c.name] if s.listing), key=lambda s: s.at)
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


def standin_after_lost(stand: Stand, copies: list[Copy]) -> list[Seen]:
    """The old, dishonest check: requests the stand-in RECORDED between a copy's
    leader.lost and its next leader.acquired (wall clock of two processes)."""
    late = []
    for copy in copies:
        acquired = copy.times("leader.acquired")
        for at in copy.times("leader.lost"):
            again = min([t for t in acquired if t > at], default=float("inf"))
            late += [s for s in stand.requests(copy.name) if at < s.at < again]
    return late


def report_diagnostics(stand: Stand, copies: list[Copy]) -> None:
    """With LEADER_DIAGNOSTICS=<file>: one JSON line per check of how late the stand-in
    recorded requests, and what the old stand-in-clock check would have said."""
    target = os.environ.get("LEADER_DIAGNOSTICS")
    if not target:
        return
    late = standin_after_lost(stand, copies)
    line = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "?"),
        "load": os.getloadavg()[0],
        "lag": observer_lag(stand, copies),
        "standin_after_lost": [(s.copy, s.method, s.path, s.at) for s in late],
    }
    with open(target, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def observer_lag(stand: Stand, copies: list[Copy]) -> dict[str, float]:
    """How late the in-process stand-in recorded requests after they were sent: for each
    copy, the largest (arrival - send) over requests matched in order by kind."""
    lag: dict[str, float] = {}
    for copy in copies:
        by_kind: dict[tuple[str, str], list[float]] = {}
        for sent in copy.sends():
            by_kind.setdefault((sent.method, sent.path), []).append(sent.at)
        for kind, stamps in by_kind.items():
            arrivals = [s.at for s in stand.requests(copy.name) if (s.method, s.path) == kind]
            for sent_at, arrived_at in zip(sorted(stamps), sorted(arrivals), strict=False):
                lag[copy.name] = max(lag.get(copy.name, 0.0), arrived_at - sent_at)
    return {name: round(value, 3) for name, value in lag.items()}


def stop_all(copies: list[Copy]) -> None:
    for copy in copies:
        copy.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    wait_for(condition, timeout=timeout)
