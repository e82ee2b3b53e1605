"""Precise marking: a timer is an outcome only once a re-read showed a zombie, and the
listing's guard counts every step silent past half its limit (issue 15, findings 5, 6)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from structlog.testing import capture_logs

from sweeper.api import STEPS_PATH
from sweeper.model import format_timestamp
from sweeper.report import Result
from tests.builders import H, build_sweeper, precise
from tests.fakes import FakeClock, FakePlatform, record

M = timedelta(minutes=1)
S = timedelta(seconds=1)


def reread_answer(platform: FakePlatform, response: httpx.Response) -> None:
    """Every re-read of a step (not the listing) is answered so."""

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            return response
        return None

    platform.before.append(hook)


def test_a_timer_whose_reread_fails_is_unchecked_not_a_zombie(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Due at +90 s; its re-read is answered 503 every time: nothing showed the step stale.
    No zombie, no step.failed, no entry; counted `unchecked`; the next listing takes it."""
    platform.add(record("soon", started=2 * H - 90 * S))
    reread_answer(platform, httpx.Response(503))
    sweeper = build_sweeper(platform, clock)
    with capture_logs() as logs:
        report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.result is Result.COMPLETED
    assert report.entries == []
    assert report.counts["unchecked"] == 1
    assert report.counts["zombies"] == 0
    assert report.counts["failed"] == 0
    assert not [e for e in logs if e["event"] == "step.failed"]
    assert platform.patches == []


def test_a_timer_that_runs_out_of_interval_is_unchecked(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The re-read is asked to wait 50 s (Retry-After) and the interval ends before: not
    `skipped_deadline` (a zombie nobody saw), but unchecked."""
    platform.add(record("soon", started=2 * H - 90 * S))
    reread_answer(platform, httpx.Response(503, headers={"Retry-After": "50"}))
    sweeper = build_sweeper(platform, clock)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=2 * M)))
    assert report.entries == []
    assert report.counts["unchecked"] == 1
    assert report.counts["skipped_deadline"] == 0


def test_a_timer_refused_its_token_halts_the_interval_without_a_zombie(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """401 on a timer's re-read: the run ends token_refused; the step is no zombie."""
    platform.add(record("soon", started=2 * H - 90 * S))
    reread_answer(platform, httpx.Response(401))
    sweeper = build_sweeper(platform, clock)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.result is Result.TOKEN_REFUSED
    assert report.entries == []
    assert report.counts["zombies"] == 0


def test_a_healthy_fleet_beyond_max_steps_is_not_refused(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Ten workers that beat (limit 2 h, an interval of 5 h: each has due moments in it),
    max_steps 3: none is ever silent past half its limit, nothing is refused or marked."""
    platform.add(*(record(f"ok{i}", started=5 * H, heartbeat=M + i * S) for i in range(10)))

    def beat(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            step_id = request.url.path.rsplit("/", 1)[1]
            platform.state.steps[step_id]["lastHeartbeatAt"] = format_timestamp(clock() - M)

    platform.before.append(beat)
    sweeper = build_sweeper(platform, clock, max_steps=3)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=5 * H)))
    assert report.result is Result.COMPLETED
    assert report.counts["zombies"] == 0
    assert platform.patches == []


@pytest.mark.parametrize(("silent", "refused"), [(61 * M, True), (59 * M, False)])
def test_steps_silent_past_half_their_limit_count_at_the_listing(
    platform: FakePlatform, clock: FakeClock, silent: timedelta, refused: bool
) -> None:
    """Limit 2 h, an interval of 5 min: four steps silent 61 min (past half the limit,
    though not a whole interval from due) with max_steps 3 are refused at the listing;
    silent 59 min they are not counted."""
    platform.add(*(record(f"s{i}", started=5 * H, heartbeat=silent) for i in range(4)))
    sweeper = build_sweeper(platform, clock, max_steps=3)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=5 * M)))
    assert (report.result is Result.REFUSED) is refused
    if refused:
        assert report.guard == "max_steps"
    assert platform.patches == []


def test_no_interval_marks_more_than_max_steps(platform: FakePlatform, clock: FakeClock) -> None:
    """Limit 2 h, an interval of 90 min: six steps silent 50 min at the listing (not
    counted there) all die; max_steps 3: three are written, then the interval is refused."""
    platform.add(*(record(f"d{i}", started=5 * H, heartbeat=50 * M + i * S) for i in range(6)))
    sweeper = build_sweeper(platform, clock, max_steps=3)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=90 * M)))
    assert len(platform.patches) == 3
    assert report.result is Result.REFUSED
