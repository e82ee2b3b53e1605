"""The lease gate on the write path: checked just before each request goes out.

A request refused by the gate is never sent; the zombies it leaves are
`not_attempted` (reason `lease_lost`), the sweep ends `interrupted` (exit 75).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sweeper.api import STEPS_PATH
from sweeper.errors import LeaseLost
from sweeper.leader import Gate, LeaseClock
from sweeper.pacing import RateLimiter, sleep_until_stopped
from sweeper.precise import Interval
from sweeper.report import ExitCode, Outcome, Result
from sweeper.timers import TimerHeap
from tests.builders import H, build_client, build_sweeper
from tests.fakes import FakeClock, FakePlatform, record

M = timedelta(minutes=1)


def leased(clock: FakeClock, seconds: float = 15.0, need: float = 11.0) -> Gate:
    lease = LeaseClock(clock.monotonic)
    lease.renewed(clock.monotonic(), seconds)
    return Gate(lease, need)


def sent(platform: FakePlatform, method: str) -> list[httpx.Request]:
    return [r for r in platform.requests if r.method == method]


def test_a_request_whose_wait_stalls_past_the_margin_is_not_sent(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The rate limiter's wait ends with too little lease left: the GET never goes out."""
    platform.add(record("z1"))

    async def stalling_sleep(seconds: float) -> None:
        clock.advance(timedelta(seconds=5))  # the process stalled inside the wait

    limiter = RateLimiter(1, monotonic=clock.monotonic, sleep=stalling_sleep)
    gate = leased(clock)  # 15 s left, 11 s needed
    client = build_client(
        platform,
        clock,
        timeout=timedelta(seconds=10),
        max_connections=2,
        limiter=limiter,
        gate=gate,
        max_attempts=5,
        clock_check=None,
        sleep=sleep_until_stopped(None),
    )

    async def scenario() -> None:
        assert await client.get_step("z1", "org-a") is not None  # 15 s left: sent
        with pytest.raises(LeaseLost, match=r"less than api\.timeout"):
            await client.get_step("z1", "org-a")  # waited 5 s for its slot: 10 s left

    asyncio.run(scenario())
    assert len(platform.requests) == 1


def test_losing_the_lease_before_the_writes_leaves_them_not_attempted(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Listed with the lease; it runs out before the re-reads: no GET of a step, no PATCH."""
    platform.add(record("z1"), record("z2"), record("z3"))
    gate = leased(clock)

    def lose_after_listing(request: httpx.Request) -> None:
        if request.url.path == STEPS_PATH:
            clock.advance(timedelta(seconds=5))  # 10 s left when the listing answers

    platform.before.append(lose_after_listing)
    sweeper = build_sweeper(platform, clock, max_concurrency=1)
    sweeper.client.gate = gate
    report = asyncio.run(sweeper.run())
    assert [r.url.path for r in platform.requests] == [STEPS_PATH]
    assert report.result is Result.INTERRUPTED
    assert report.exit_code is ExitCode.UNAVAILABLE
    assert {(e.outcome, e.reason) for e in report.entries} == {
        (Outcome.NOT_ATTEMPTED, "lease_lost")
    }
    assert report.counts["not_attempted"] == 3
    (aborted,) = [e for e in logs if e["event"] == "sweep.aborted"]
    assert aborted["result"] == "interrupted" and "lease" in aborted["error"]


def test_a_write_refused_between_its_reread_and_its_send_is_not_attempted(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The lease runs short during the re-read: that PATCH is never sent and counts 0 tries."""
    platform.add(record("z1"))
    gate = leased(clock)

    def stall_on_reread(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            clock.advance(timedelta(seconds=5))

    platform.before.append(stall_on_reread)
    sweeper = build_sweeper(platform, clock)
    sweeper.client.gate = gate
    report = asyncio.run(sweeper.run())
    assert sent(platform, "PATCH") == []
    (entry,) = report.entries
    assert (entry.outcome, entry.reason, entry.attempts) == (
        Outcome.NOT_ATTEMPTED,
        "lease_lost",
        0,
    )


def test_a_write_after_an_unanswered_one_is_failed_not_unattempted(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A first PATCH lost its answer; the lease runs short before the retry: failed (it may
    have been applied), never not_attempted."""
    platform.add(record("z1"))
    gate = leased(clock)
    patches = 0

    def first_patch_unanswered(request: httpx.Request) -> httpx.Response | None:
        nonlocal patches
        if request.method == "PATCH":
            patches += 1
            clock.advance(timedelta(seconds=5))
            return httpx.Response(500, json={"success": False})
        return None

    platform.before.append(first_patch_unanswered)
    sweeper = build_sweeper(platform, clock, max_attempts=3)
    sweeper.client.gate = gate
    report = asyncio.run(sweeper.run())
    assert patches == 1
    (entry,) = report.entries
    assert entry.outcome is Outcome.FAILED
    assert entry.attempts == 1


def test_precise_timers_are_dropped_when_the_lease_is_lost(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """An interval whose copy no longer holds the lease fires no timer and reads nothing."""
    platform.add(record("soon", started=2 * H - 90 * timedelta(seconds=1)))
    sweeper = build_sweeper(platform, clock)
    holding = [True]

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        holding[0] = False  # lost while waiting for the timer
        clock.advance(timedelta(seconds=seconds))

    sweeper.nap = nap
    interval = Interval(until=clock() + 5 * M, timers=TimerHeap(100), holding=lambda: holding[0])
    report = asyncio.run(sweeper.run(interval=interval))
    assert [r.url.path for r in platform.requests] == [STEPS_PATH]
    assert report.result is Result.INTERRUPTED
    assert len(interval.timers) == 0
