"""One zombie's write (sweeper/writer.py) through the sweep, over the real HTTP path
(httpx.MockTransport on the fake platform): the checks between the re-read and the
write, retries against the deadline, the settling re-read on each path that leaves a
write unconfirmed, 409s, a refused token and a lost lease at the write, and the
platform's clock."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sweeper.api import step_url
from sweeper.errors import LeaseLost
from sweeper.model import StepStatus
from sweeper.policy import manual_rule
from sweeper.report import Outcome
from tests.builders import (
    H,
    M,
    S,
    build_sweeper,
    events,
    patient_sweeper,
    precise,
    rules_with,
    run,
)
from tests.fakes import NOW, FakeClock, FakePlatform, is_reread, record, refusal


def conflict() -> httpx.Response:
    body = {"success": False, "error": {"code": "CONFLICT", "message": "not running"}}
    return httpx.Response(409, json=body)


def rereads(platform: FakePlatform) -> int:
    return len([r for r in platform.requests if is_reread(r)])


def outcome(entry: Any) -> tuple[Outcome, str | None]:
    return entry.outcome, None if entry.reason is None else str(entry.reason.value)


# -- between the re-read and the write ---------------------------------------------------


def test_a_deadline_passed_during_the_reread_sends_no_write(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The deadline passes while the zombie is re-read: no PATCH, skipped (deadline)."""
    platform.add(record("z1"))

    def slow_reread(request: httpx.Request) -> None:
        if is_reread(request):
            clock.advance(timedelta(minutes=10))

    platform.before.append(slow_reread)
    report = run(build_sweeper(platform, clock, deadline=timedelta(minutes=1)))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.SKIPPED, "deadline")
    assert platform.patches == []
    assert platform.state.steps["z1"]["status"] == "RUNNING"


def test_a_stop_during_the_reread_sends_no_write(platform: FakePlatform, clock: FakeClock) -> None:
    """A stop requested while the zombie is re-read: no PATCH, skipped (shutdown)."""
    platform.add(record("z1"))
    stop = asyncio.Event()

    def stop_on_reread(request: httpx.Request) -> None:
        if is_reread(request):
            stop.set()

    platform.before.append(stop_on_reread)
    report = run(build_sweeper(platform, clock, stop=stop))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.SKIPPED, "shutdown")
    assert platform.patches == []


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("cause", ["deadline", "shutdown"])
def test_a_mark_by_hand_whose_read_ends_past_a_stop_or_the_deadline_writes_nothing(
    platform: FakePlatform, clock: FakeClock, dry_run: bool, cause: str
) -> None:
    """`mark` (dry run or not) whose read of the step ends past the deadline, or after a
    stop was requested: skipped (deadline, shutdown), never `would_mark`, no PATCH."""
    platform.add(record("z1"))
    stop = asyncio.Event()

    def slow_reread(request: httpx.Request) -> None:
        if is_reread(request):
            if cause == "deadline":
                clock.advance(timedelta(minutes=10))
            else:
                stop.set()

    platform.before.append(slow_reread)
    sweeper = build_sweeper(
        platform, clock, stop=stop, dry_run=dry_run, deadline=timedelta(minutes=1)
    )
    rule = manual_rule(StepStatus.FAILED, "BY_HAND", "stuck: {idle}")
    report = asyncio.run(sweeper.mark("z1", "org-a", rule, force=True))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.SKIPPED, cause)
    assert platform.patches == []


# -- retries against the deadline --------------------------------------------------------


def test_a_retry_is_logged_as_the_steps_patch(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """The wait before a write's next attempt is logged with the PATCH and its path."""
    platform.add(record("z1"))
    platform.schedule(lambda: httpx.Response(503), when=lambda r: r.method == "PATCH")
    report = run(build_sweeper(platform, clock))
    (entry,) = report.entries
    assert (entry.outcome, entry.attempts) == (Outcome.MARKED, 2)
    (retried,) = events(logs, "request.retried")
    assert (retried["method"], retried["path"]) == ("PATCH", step_url("z1"))


def test_without_retry_after_a_write_is_retried_close_to_the_deadline(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A 503 without Retry-After half a second before the deadline: the backoff is the
    client's to bound, the write is tried again (no wait of 1 s is assumed)."""
    platform.add(record("z1"))
    platform.schedule(lambda: httpx.Response(503), when=lambda r: r.method == "PATCH")
    report = run(build_sweeper(platform, clock, deadline=timedelta(seconds=0.5)))
    (entry,) = report.entries
    assert (entry.outcome, entry.attempts) == (Outcome.MARKED, 2)
    assert len(platform.patches) == 2


@pytest.mark.parametrize("deadline", [5, 10])
def test_a_retry_after_reaching_the_deadline_is_not_waited_for(
    platform: FakePlatform, clock: FakeClock, deadline: int
) -> None:
    """503 with Retry-After 10 s and the deadline 5 s or exactly 10 s away: no wait, no
    second attempt; the write failed (unavailable), not skipped."""
    platform.add(record("z1"))
    platform.schedule(
        lambda: httpx.Response(503, headers={"Retry-After": "10"}),
        when=lambda r: r.method == "PATCH",
    )
    sweeper = patient_sweeper(platform, clock, deadline=timedelta(seconds=deadline))
    report = run(sweeper)
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.FAILED, "unavailable")
    assert entry.attempts == 1
    assert len(platform.patches) == 1
    assert clock() == NOW  # nothing waited


@pytest.mark.parametrize("applied", [True, False])
def test_a_retry_wait_that_crosses_the_deadline_is_settled_by_one_reread(
    platform: FakePlatform, clock: FakeClock, applied: bool
) -> None:
    """The wait before a retry ends past the deadline (a backoff longer than foreseen):
    no more attempts; one settling re-read says whether the write landed (marked,
    applied_earlier) or not (skipped, deadline: the 503 said it was not processed)."""
    platform.add(record("z1"))
    if applied:
        platform.apply_then(lambda: httpx.Response(503), times=1)
    else:
        platform.schedule(lambda: httpx.Response(503), when=lambda r: r.method == "PATCH")

    async def long_sleep(seconds: float) -> None:
        clock.advance(H)

    sweeper = build_sweeper(
        platform, clock, max_attempts=5, sleep=long_sleep, deadline=timedelta(minutes=1)
    )
    report = run(sweeper)
    (entry,) = report.entries
    if applied:
        assert outcome(entry) == (Outcome.MARKED, "applied_earlier")
        assert platform.state.steps["z1"]["status"] == "FAILED"
    else:
        assert outcome(entry) == (Outcome.SKIPPED, "deadline")
        assert platform.state.steps["z1"]["status"] == "RUNNING"
    assert len(platform.patches) == 1
    assert rereads(platform) == 2  # the re-read before the write, the settling one


def test_a_timers_write_is_not_retried_past_the_interval(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A precise-marking timer fires 30 s before the interval ends (the sweep's deadline
    is 4 min away); its write is answered 503 with Retry-After 40 s: the timer's own
    deadline (the interval's end) refuses the wait, one attempt, failed."""
    platform.add(record("soon", started=2 * H - 90 * S))
    platform.schedule(
        lambda: httpx.Response(503, headers={"Retry-After": "40"}),
        when=lambda r: r.method == "PATCH",
    )
    sweeper = build_sweeper(platform, clock, max_attempts=5)
    report = run(sweeper, precise(sweeper, clock, until=2 * M))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.FAILED, "unavailable")
    assert len(platform.patches) == 1


# -- the re-read of a retry --------------------------------------------------------------


def test_a_retry_whose_reread_shows_our_write_is_marked_without_writing_again(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Applied, answer 503; the retry's re-read shows this sweep's write: marked
    (applied_earlier), one PATCH, its lag reported."""
    platform.add(record("z1"))
    platform.apply_then(lambda: httpx.Response(503), times=1)
    report = run(build_sweeper(platform, clock, max_attempts=3))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.MARKED, "applied_earlier")
    assert entry.lagSeconds is not None
    assert len(platform.patches) == 1
    (marked,) = events(logs, "step.marked")
    assert marked["detail"] == "applied_earlier"


def test_a_retry_whose_reread_fails_is_settled_by_one_more_read(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Applied, answer 503; the retry's re-read fails every try: the settling re-read
    shows this sweep's write, marked (applied_earlier)."""
    platform.add(record("z1"))
    platform.apply_then(lambda: httpx.Response(503), times=1)
    platform.schedule(
        None, lambda: httpx.Response(503), lambda: httpx.Response(503), when=is_reread
    )
    report = run(build_sweeper(platform, clock, max_attempts=2))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.MARKED, "applied_earlier")
    assert len(platform.patches) == 1
    assert rereads(platform) == 4  # before the write, two tries of the retry's, settling


# -- 409 ----------------------------------------------------------------------------------


def test_a_409_on_the_first_attempt_is_a_conflict_without_more_reads(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The first attempt answered 409: skipped (conflict); nothing more is read."""
    platform.add(record("z1"))
    platform.schedule(conflict, when=lambda r: r.method == "PATCH")
    report = run(build_sweeper(platform, clock, max_attempts=3))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.SKIPPED, "conflict")
    assert len(platform.patches) == 1
    assert rereads(platform) == 1


@pytest.mark.parametrize("running", [True, False])
def test_a_409_on_a_retry_is_resolved_by_one_reread(
    platform: FakePlatform, clock: FakeClock, running: bool
) -> None:
    """Attempt 1 answered 503 (not processed), attempt 2 answered 409: one re-read asks
    whether the lost attempt was ours; it was not, so skipped (conflict), whatever the
    step shows (finished by another, or RUNNING still): never written again."""
    platform.add(record("z1"))

    def other_finished() -> httpx.Response:
        if not running:
            platform.state.steps["z1"].update(status="FAILED", errorDetails={"sweepId": "x"})
        return conflict()

    platform.schedule(
        lambda: httpx.Response(503), other_finished, when=lambda r: r.method == "PATCH"
    )
    report = run(build_sweeper(platform, clock, max_attempts=3))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.SKIPPED, "conflict")
    assert len(platform.patches) == 2
    assert rereads(platform) == 3


def test_a_409_on_a_retry_after_our_write_landed_is_marked(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Attempt 1 applied and its answer lost, the retry's re-read lost too, attempt 2
    answered 409: the re-read after it shows this sweep's write, marked."""
    platform.add(record("z1"))
    platform.apply_then(lambda: httpx.Response(503), times=1)

    # The retry's re-read answers the step as it was before (a stale replica).
    before = dict(platform.state.steps["z1"])
    platform.schedule(
        None,
        lambda: httpx.Response(200, json={"success": True, "data": before}),
        when=is_reread,
    )
    platform.schedule(conflict, when=lambda r: r.method == "PATCH")  # after apply_then's
    report = run(build_sweeper(platform, clock, max_attempts=3))
    (entry,) = report.entries
    assert outcome(entry) == (Outcome.MARKED, "applied_earlier")
    assert len(platform.patches) == 2
    assert rereads(platform) == 3


# -- refusals at the write -----------------------------------------------------------------


def test_a_token_refused_at_the_write_fails_that_write_with_its_status(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """The PATCH answered 401: that zombie failed (token_refused, HTTP 401, 1 attempt),
    the sweep halts, the others are not attempted."""
    platform.add(record("z1"), record("z2"))
    platform.schedule(refusal, when=lambda r: r.method == "PATCH")
    report = run(build_sweeper(platform, clock, max_concurrency=1))
    first, second = sorted(report.entries, key=lambda e: e.attempts or 0, reverse=True)
    assert outcome(first) == (Outcome.FAILED, "token_refused")
    assert (first.httpStatus, first.attempts) == (401, 1)
    assert second.outcome is Outcome.NOT_ATTEMPTED
    (failed,) = events(logs, "step.failed")
    assert failed["http_status"] == 401
    assert "401" in failed["error"]


class LosesLeaseAtWrite:
    """A lease gate that lets reads through and refuses every write."""

    def check(self, method: str) -> None:
        if method == "PATCH":
            raise LeaseLost("lease lost")

    def holding(self) -> bool:
        return True


def test_a_write_refused_by_the_lease_gate_counts_no_attempt(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The lease is lost right before the write: not sent, not attempted (0 attempts)."""
    platform.add(record("z1"))
    report = run(build_sweeper(platform, clock, gate=LosesLeaseAtWrite()))
    (entry,) = report.entries
    assert entry.outcome is Outcome.NOT_ATTEMPTED
    assert entry.attempts == 0
    assert platform.patches == []


# -- the platform's clock ------------------------------------------------------------------


def test_idle_time_is_judged_on_the_platforms_clock(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The platform's clock 100 s behind ours (accepted: max 2 min): a step that beat 60 s
    ago on its clock is alive under a 90 s limit, one that beat 120 s ago is a zombie."""
    behind = timedelta(seconds=100)
    platform.date_skew = -behind
    platform.add(
        record("live", heartbeat=60 * S, now=NOW - behind),
        record("dead", heartbeat=120 * S, now=NOW - behind),
    )
    report = run(build_sweeper(platform, clock, rules=rules_with(90 * S)))
    assert platform.state.steps["live"]["status"] == "RUNNING"
    assert platform.state.steps["dead"]["status"] == "FAILED"
    assert report.counts["marked"] == 1
