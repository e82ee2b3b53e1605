"""A partial outage: the platform's reads work while its heartbeat writes fail (adv15b,
finding 2). Outage memory samples the platform with reads, so it sees the platform up
and forgives nothing; every live step goes silent together. What stands between that
and a fleet marked dead is the blast-radius guard, `sweep.max_steps` (docs/outage-grace.md,
"What outage grace cannot see")."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sweeper.outages import OutageLog, watch_gap
from sweeper.report import ExitCode, Result
from tests.builders import build_sweeper, rules_with
from tests.fakes import FakeClock, FakePlatform, record

L = timedelta(minutes=2)
FLEET = 5


def partial_outage(platform: FakePlatform, clock: FakeClock) -> OutageLog:
    """Heartbeat writes failed for 3 limits while every read the daemon made (a probe
    every half gap) was answered: the outage log saw the platform up throughout."""
    log = OutageLog(clock, gap=watch_gap(L), keep=2 * L)
    start = clock()
    while clock() - start < 3 * L:
        log.observe("GET", "200")
        clock.advance(watch_gap(L) / 2)  # type: ignore[operator]
    silent = 3 * L  # their last heartbeat landed before the writes began to fail
    platform.add(*(record(f"live-{n}", heartbeat=silent, now=clock()) for n in range(FLEET)))
    return log


def sweep_once(platform: FakePlatform, clock: FakeClock, log: OutageLog, max_steps: int):  # type: ignore[no-untyped-def]
    sweeper = build_sweeper(
        platform, clock, outages=log.windows, rules=rules_with(L), max_steps=max_steps
    )
    return asyncio.run(sweeper.run())


def test_a_fleet_larger_than_max_steps_is_refused_whole(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Every live step silent at once, more of them than max_steps: the sweep is refused
    (exit 3) and nothing is written."""
    log = partial_outage(platform, clock)
    assert not log.windows().overlap(clock() - 3 * L, clock())  # nothing forgiven
    report = sweep_once(platform, clock, log, max_steps=FLEET - 1)
    assert report.result is Result.REFUSED
    assert report.exit_code is ExitCode.GUARD_REFUSED
    assert platform.patches == []
    assert all(s["status"] == "RUNNING" for s in platform.state.steps.values())


def test_a_fleet_no_larger_than_max_steps_is_marked(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The limit, stated as a test: with max_steps at least the fleet, the guard does not
    refuse, and every live step whose heartbeats could not be written is marked."""
    log = partial_outage(platform, clock)
    report = sweep_once(platform, clock, log, max_steps=FLEET)
    assert report.exit_code is ExitCode.OK
    assert len(platform.patches) == FLEET
