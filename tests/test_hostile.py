"""A hostile platform, driven by hypothesis: random-but-HTTP-valid trouble on every request.

Each example builds a platform of zombies and live steps (the same step id in two
organizations included), hostile listing records, and a schedule of faults that
the platform plays on its requests in order: 5xx with and without Retry-After,
writes applied whose answer is lost, 409s, re-reads naming another step, writes
answered with another status, steps that finish or heartbeat while a write waits
to be retried, clock jumps, a skewed Date, a refused token, a cursor that
repeats. Whatever happens, the invariants of a sweep must hold:

- every zombie ends in exactly one outcome, and the counts add up;
- every `marked` was applied, and every write the platform applied is reported `marked`
  unless no answer could confirm it (then `failed` with its attempts, never `skipped`,
  `refused` or `not_attempted`, which would claim that nothing was written); once a
  re-read has shown this sweep's write, it is `marked` (the settling re-read);
- every PATCH follows its own re-read, which showed the step RUNNING and stale;
- no PATCH after a guard fired, after the token was refused, or after the deadline;
- exit 0 only when every zombie was marked or left alone for a harmless reason;
- the sweep ends (no hang).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper.api import STEPS_PATH
from sweeper.model import StepStatus, format_timestamp
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Rule, Rules
from sweeper.precise import Interval
from sweeper.report import OUTCOME_COUNTS, ExitCode, Outcome, Result, SweepReport
from sweeper.timers import TimerHeap
from tests.builders import build_sweeper, run
from tests.fakes import NOW, FakeClock

LIMIT = timedelta(hours=1)
DEADLINE = timedelta(minutes=10)
INTERVAL = timedelta(minutes=5)
RULES = Rules((), Rule("default", LIMIT, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE))
HARMLESS = {Outcome.MARKED, Outcome.SKIPPED}

FAULTS = (
    "ok",
    "503",
    "429-retry-after",
    "lost",  # a write applied, its answer lost (502); a read answered 502
    "applied-503",  # a write applied, then 503 (a proxy's); a read answered 503
    "applied-timeout",  # a write applied, its answer never came; a read timed out
    "applied-broken",  # a write applied, answered 200 with no JSON; a read the same
    "409",
    "wrong-id",
    "wrong-status",
    "finish-while-waiting",  # 503, and the worker finishes the step meanwhile
    "beat-while-waiting",  # 503, and the worker heartbeats meanwhile
    "slow",  # the clock jumps 3 minutes during this request
    "late",  # the answer comes after other requests' answers
    "skew",
    "401",
)
HOSTILE_RECORDS: tuple[Any, ...] = (
    {"stepId": "x1", "organizationId": "org-a", "status": "RUNNING",
     "startedAt": "0001-01-01T00:00:00+01:00"},
    {"stepId": "x2", "organizationId": "org-a", "status": "RUNNING",
     "startedAt": "9999-12-31T23:59:59-01:00"},
    {"stepId": "x3", "organizationId": "org-a", "status": "RUNNING",
     "startedAt": "2026-05-23T01:00:00Z", "extra": "__DEEP__"},
    {"stepId": "x4", "organizationId": "org-a", "status": "SUCCEEDED",
     "startedAt": "2026-05-23T01:00:00Z"},
    {"stepId": "", "organizationId": "org-a", "status": "RUNNING",
     "startedAt": "2026-05-23T01:00:00Z"},
    {"stepId": "x6", "status": "RUNNING", "startedAt": "2026-05-23T01:00:00Z"},
    {"stepId": "x7", "organizationId": "org-a", "status": "RUNNING",
     "startedAt": "2026-05-23T01:00:00Z", "retryCount": -1},
    [1, 2, 3],
    None,
)  # fmt: skip
DEEP_TEXT = '{"a":' * 5000 + "1" + "}" * 5000


@dataclass
class Hostile:
    """The platform's state and its fault schedule; records what it saw, in order."""

    clock: FakeClock
    faults: list[str]
    hostile_records: list[Any]
    page_size: int
    repeat_cursor: bool
    steps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    timeline: list[tuple[str, Any]] = field(default_factory=list)
    last_reread: dict[tuple[str, str], bool] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    deadline_at: float = 0.0
    #: Steps a re-read showed with this sweep's write (a sweepId), answered cleanly.
    shown_applied: set[tuple[str, str]] = field(default_factory=set)
    #: Steps whose write was applied, and whether a re-read of them came after it.
    read_since_applied: dict[tuple[str, str], bool] = field(default_factory=dict)

    def fault(self) -> str:
        return self.faults.pop(0) if self.faults else "ok"

    def answer(self, status: int, body: Any = None, **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Date", email.utils.format_datetime(self.clock(), usegmt=True))
        return httpx.Response(status, content=b"" if body is None else content, headers=headers)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        # A PATCH counts from the moment it is sent: record it before anything else runs.
        if request.method == "PATCH":
            self.sent(request)
        await asyncio.sleep(0)  # let the writers interleave
        fault = self.fault()
        if fault == "slow":
            self.clock.advance(timedelta(minutes=3))
        if fault == "late":
            for _ in range(20):
                await asyncio.sleep(0)
        if fault == "401":
            self.timeline.append(("token_refused", None))
            return self.answer(401, {"success": False})
        path = request.url.raw_path.decode().split("?")[0]
        if path == STEPS_PATH:
            response = self.listing(request)
        else:
            step_id = unquote(path.removeprefix(STEPS_PATH + "/"))
            org = request.url.params.get("organizationId")
            if request.method == "GET":
                if (str(org), step_id) in self.read_since_applied:
                    self.read_since_applied[(str(org), step_id)] = True
                response = self.reread((str(org), step_id), fault)
            else:
                response = self.patch(step_id, json.loads(request.content), fault)
        if fault == "skew":
            response.headers["Date"] = email.utils.format_datetime(
                self.clock() + timedelta(hours=1), usegmt=True
            )
            self.timeline.append(("skew", None))
        elif fault not in ("wrong-id", "applied-broken", "applied-timeout") and (
            request.method == "GET" and path != STEPS_PATH and response.status_code == 200
        ):
            data = json.loads(response.content).get("data") or {}
            if (data.get("errorDetails") or {}).get("sweepId"):
                self.shown_applied.add((data["organizationId"], data["stepId"]))
        await asyncio.sleep(0)
        if fault == "applied-timeout":
            raise httpx.ReadTimeout("no answer")
        return response

    def listing(self, request: httpx.Request) -> httpx.Response:
        running = [r for r in self.steps.values() if r["status"] == "RUNNING"]
        everything: list[Any] = [*running, *self.hostile_records]
        start = int(request.url.params.get("cursor", "0"))
        page = everything[start : start + self.page_size]
        after = start + self.page_size
        cursor = str(after) if after < len(everything) else None
        if cursor is None and self.repeat_cursor and start > 0:
            cursor = str(self.page_size)  # a cycle back to page 2
        text = json.dumps({"success": True, "data": page, "nextCursor": cursor})
        return self.answer(200, text.replace('"__DEEP__"', DEEP_TEXT).encode())

    def reread(self, key: tuple[str, str], fault: str) -> httpx.Response:
        record = self.steps.get(key)
        self.last_reread[key] = False
        if fault in ("503", "lost", "applied-503"):
            return self.answer(502 if fault == "lost" else 503)
        if fault == "applied-broken":
            return self.answer(200, b"<html>")
        if fault == "429-retry-after":
            return self.answer(429, **{"Retry-After": "1"})
        if record is None:
            return self.answer(404, {"success": False})
        if fault == "wrong-id":
            other = dict(record, stepId=record["stepId"] + "-other")
            return self.answer(200, {"success": True, "data": other})
        self.last_reread[key] = record["status"] == "RUNNING" and self.stale(record)
        return self.answer(200, {"success": True, "data": record})

    def sent(self, request: httpx.Request) -> None:
        step_id = unquote(request.url.raw_path.decode().removeprefix(STEPS_PATH + "/"))
        key = (json.loads(request.content)["organizationId"], step_id)
        self.timeline.append(("PATCH", key))
        if self.clock.monotonic() >= self.deadline_at:
            self.violations.append(f"PATCH {key} after the deadline")
        # With recheck off the first attempt may go unread; every retry is read first.
        needs_reread = self.require_reread or key in self.patched
        if not self.last_reread.pop(key, False) and needs_reread:
            self.violations.append(f"PATCH {key} without its own RUNNING-and-stale re-read")
        self.patched.add(key)

    def patch(self, step_id: str, body: dict[str, Any], fault: str) -> httpx.Response:
        key = (body["organizationId"], step_id)
        record = self.steps.get(key)
        if record is None:
            return self.answer(404, {"success": False})
        if fault in ("503", "finish-while-waiting", "beat-while-waiting"):
            if record["status"] == "RUNNING" and fault == "finish-while-waiting":
                record["status"] = "SUCCEEDED"
            if record["status"] == "RUNNING" and fault == "beat-while-waiting":
                record["lastHeartbeatAt"] = format_timestamp(self.clock())
            return self.answer(503)
        if fault == "429-retry-after":
            return self.answer(429, **{"Retry-After": "1"})
        if fault == "409":
            return self.answer(409, {"success": False})
        if fault == "wrong-status":
            return self.answer(200, {"success": True, "data": dict(record, status="RUNNING")})
        record.update(
            status=body["status"],
            errorDetails=body["errorDetails"],
            completedAt=body["completedAt"],
        )
        self.read_since_applied[key] = False
        if fault in ("lost", "applied-503"):
            return self.answer(502 if fault == "lost" else 503)
        if fault == "applied-broken":
            return self.answer(200, b"<html>")
        return self.answer(200, {"success": True, "data": record})

    def stale(self, record: dict[str, Any]) -> bool:
        times = [record["startedAt"], record.get("lastHeartbeatAt", record["startedAt"])]
        last = max(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times)
        return self.clock() - last > LIMIT

    require_reread: bool = True
    patched: set[tuple[str, str]] = field(default_factory=set)


@contextmanager
def timeline_of_events(timeline: list[tuple[str, Any]]) -> Iterator[None]:
    """Sweep events go into the platform's timeline, so order can be checked."""

    def record(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        timeline.append((event_dict["event"], event_dict))
        raise structlog.DropEvent

    old = structlog.get_config()
    structlog.configure(processors=[record])
    try:
        yield
    finally:
        structlog.configure(**old)


scenario = st.fixed_dictionaries(
    {
        "steps": st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                st.sampled_from(["org-a", "org-b"]),
                st.sampled_from(["zombie", "zombie", "live", "soon"]),
            ),
            max_size=10,
            unique_by=lambda t: (t[0], t[1]),
        ),
        "hostile": st.lists(st.sampled_from(range(len(HOSTILE_RECORDS))), max_size=3),
        "faults": st.lists(st.sampled_from(FAULTS), max_size=40),
        "page_size": st.integers(1, 6),
        "repeat_cursor": st.booleans(),
        "recheck": st.booleans(),
        "concurrency": st.integers(1, 4),
        "max_steps": st.sampled_from([3, 100]),
        "precise": st.booleans(),
        "max_attempts": st.integers(1, 3),
    }
)


def run_scenario(case: dict[str, Any]) -> tuple[Hostile, SweepReport]:
    clock = FakeClock(NOW)
    platform = Hostile(
        clock=clock,
        faults=list(case["faults"]),
        hostile_records=[HOSTILE_RECORDS[i] for i in case["hostile"]],
        page_size=case["page_size"],
        repeat_cursor=case["repeat_cursor"],
    )
    platform.require_reread = case["recheck"]
    ago = {"zombie": 5 * LIMIT, "live": timedelta(minutes=5), "soon": LIMIT - timedelta(minutes=2)}
    for step_id, org, kind in case["steps"]:
        started = NOW - ago[kind]
        platform.steps[(org, step_id)] = {
            "stepId": step_id,
            "organizationId": org,
            "status": "RUNNING",
            "startedAt": format_timestamp(started),
        }

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        clock.advance(timedelta(seconds=seconds))

    sweeper = build_sweeper(
        platform.handle,
        clock,
        max_attempts=case.get("max_attempts", 3),
        sleep=clock.sleep,
        nap=nap,
        rules=RULES,
        recheck=case["recheck"],
        max_concurrency=case["concurrency"],
        max_steps=case["max_steps"],
        deadline=DEADLINE,
        page_size=case["page_size"],
    )
    # A sweep's writes start within its deadline; with precise marking, a timer fires
    # before the interval ends and its write starts within the deadline after that.
    last_start = DEADLINE + (INTERVAL if case["precise"] else timedelta(0))
    platform.deadline_at = clock.monotonic() + last_start.total_seconds()

    interval = Interval(until=NOW + INTERVAL, timers=TimerHeap(100)) if case["precise"] else None
    with timeline_of_events(platform.timeline):
        report = run(sweeper, interval)
    return platform, report


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario)
def test_a_hostile_platform_never_breaks_the_invariants(case: dict[str, Any]) -> None:
    """Counts add up, applied is marked, re-read before every write, nothing after a guard."""
    platform, report = run_scenario(case)
    assert platform.violations == []
    # Every zombie ends in exactly one outcome; the counts add up.
    assert all(e.outcome is not Outcome.PENDING for e in report.entries)
    assert sum(report.counts[name] for name in OUTCOME_COUNTS) == report.counts["zombies"]
    assert report.counts["zombies"] == len(report.entries)
    assert len({e.key for e in report.entries}) == len(report.entries)
    # What the platform applied is reported marked, and only that.
    applied = {
        key
        for key, record in platform.steps.items()
        if (record.get("errorDetails") or {}).get("sweepId") == report.sweep_id
    }
    entries = {e.key: e for e in report.entries}
    marked = {key for key, e in entries.items() if e.outcome is Outcome.MARKED}
    assert marked <= applied
    for key in applied - marked:
        # Applied, but no answer could confirm it (lost, then the re-read failed too):
        # reported as a failed attempt, never as skipped, refused or not attempted.
        assert entries[key].outcome is Outcome.FAILED
        assert entries[key].attempts
        # And no re-read showed it: one that did settles it as marked.
        assert key not in platform.shown_applied, (key, entries[key])
        # One was tried after the write (the settling re-read), unless the token was refused.
        refused = any(kind == "token_refused" for kind, _ in platform.timeline)
        assert platform.read_since_applied[key] or refused, (key, entries[key])
    # No PATCH once a guard fired or the token was refused.
    stopped = False
    for kind, _ in platform.timeline:
        if kind in ("sweep.refused", "sweep.aborted"):
            stopped = True
        assert not (stopped and kind == "PATCH"), platform.timeline
    # A guard that fired ends the sweep as refused; exit 0 only when all is accounted for.
    if report.exit_code is ExitCode.OK:
        assert report.result is Result.COMPLETED
        assert all(e.outcome in HARMLESS for e in report.entries)
    assert report.result is not Result.CRASHED, report.error
    invalid = [e for kind, e in platform.timeline if kind == "record.invalid"]
    assert report.counts["invalid"] == len(invalid)
