"""Precise marking over MockTransport with an injected clock: timers fire at due moments."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sweeper.api import STEPS_PATH
from sweeper.daemon import LISTING_MARGIN
from sweeper.guards import DRIFT, ClockCheck
from sweeper.model import format_timestamp
from sweeper.report import Outcome, Result
from tests.builders import H, M, S, build_sweeper, precise, rules_with
from tests.e2e import Platform, run_daemon_until, write_config
from tests.fakes import NOW, FakeClock, FakePlatform, record


def writes(platform: FakePlatform) -> list[tuple[str, Any]]:
    return [(r.url.path.rsplit("/", 1)[1], r.extensions.get("at")) for r in platform.patches]


def timestamped(platform: FakePlatform, clock: FakeClock) -> None:
    def note(request: httpx.Request) -> None:
        request.extensions["at"] = clock()

    platform.before.append(note)


def test_a_step_due_before_the_next_listing_is_marked_at_its_moment(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Due at +90 s: listed now (the horizon reaches it), armed, written at +90 s, not before."""
    platform.add(record("soon", started=2 * H - 90 * S), record("later", started=2 * H - 10 * M))
    timestamped(platform, clock)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.counts["armed"] == 1
    assert report.counts["not_stale"] == 2
    ((step_id, at),) = writes(platform)
    assert step_id == "soon"
    assert NOW + 90 * S <= at <= NOW + 91 * S
    (entry,) = report.entries
    assert entry.outcome is Outcome.MARKED
    assert 0 <= (entry.lagSeconds or 0) < 1
    listing = next(r for r in platform.requests if r.url.path == STEPS_PATH)
    # startedBefore reaches steps that will be due before the interval ends (the
    # smallest limit of any rule is 30 minutes).
    assert listing.url.params["startedBefore"] == format_timestamp(NOW + 5 * M - 30 * M)


def test_a_heartbeat_just_before_the_due_moment_leaves_the_step_alone(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The worker beats 1 s before the timer: re-armed at its new moment, past the interval."""
    platform.add(record("beating", started=2 * H - 60 * S))
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock, until=2 * M)

    def heartbeat(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            platform.state.update("beating", lastHeartbeatAt=format_timestamp(clock() - S))

    platform.before.append(heartbeat)
    report = asyncio.run(sweeper.run(interval=interval))
    assert platform.patches == []
    # Its new moment is past the interval: dropped, left to the next listing. It never
    # was a zombie: no entry, no step.skipped.
    assert report.entries == []
    assert len(interval.timers) == 0


def test_a_heartbeat_moves_the_timer_within_the_interval(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A beat at +30 s: re-armed at its new moment (+30 s + 2 h), then written there."""
    platform.add(record("s", org="org-a", started=2 * H - 60 * S))
    timestamped(platform, clock)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock, until=3 * H)
    beats = {"n": 0}

    def heartbeat(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path != STEPS_PATH and not beats["n"]:
            beats["n"] += 1
            platform.state.update("s", lastHeartbeatAt=format_timestamp(NOW + 30 * S))

    platform.before.append(heartbeat)
    report = asyncio.run(sweeper.run(interval=interval))
    ((_, at),) = writes(platform)
    # Nothing answered for two hours (no prober here): our idea of the platform's clock
    # has aged by the drift rate meanwhile (guards.DRIFT, docs/outage-grace.md), which
    # is the most the write may be late by.
    assert NOW + 2 * H + 30 * S <= at <= NOW + 2 * H + 31 * S + 2 * H * DRIFT
    assert report.counts["marked"] == 1
    assert report.counts["skipped_alive"] == 0


def test_a_step_that_finished_before_its_moment_is_no_zombie(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Its timer fires, the re-read shows SUCCEEDED: never written, and never a zombie."""
    platform.add(record("done", started=2 * H - 30 * S))
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)

    def finish(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            platform.state.update("done", status="SUCCEEDED")

    platform.before.append(finish)
    report = asyncio.run(sweeper.run(interval=interval))
    assert platform.patches == []
    assert report.entries == []
    assert report.counts["zombies"] == 0


def test_the_blast_radius_counts_every_step_due_in_the_interval(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """2 due now + 2 due soon > max_steps 3: nothing is written, no timer is armed."""
    platform.add(
        *(record(f"now{n}", started=5 * H) for n in range(2)),
        *(record(f"soon{n}", started=2 * H - 30 * S) for n in range(2)),
    )
    sweeper = build_sweeper(platform, clock, max_steps=3)
    interval = precise(sweeper, clock)
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.result is Result.REFUSED
    assert platform.patches == []
    assert len(interval.timers) == 0


def test_no_timer_write_after_a_stop(platform: FakePlatform, clock: FakeClock) -> None:
    """A stop while waiting for the next timer: the loop ends, nothing more is written."""
    platform.add(record("a", started=2 * H - 30 * S), record("b", started=2 * H - 60 * S))
    stop = asyncio.Event()
    sweeper = build_sweeper(platform, clock, stop=stop)
    interval = precise(sweeper, clock)

    def stop_after_first(request: httpx.Request) -> None:
        if request.method == "PATCH":
            stop.set()

    platform.before.append(stop_after_first)
    report = asyncio.run(sweeper.run(interval=interval))
    assert len(platform.patches) == 1
    assert report.result is Result.INTERRUPTED
    assert report.counts["marked"] == 1


def test_an_outage_since_arming_moves_the_timer(platform: FakePlatform, clock: FakeClock) -> None:
    """The platform was away after the timer was armed: it fires later, by the outage's length."""
    from sweeper.outages import OutageWindows

    platform.add(record("s", started=2 * H - 60 * S))
    timestamped(platform, clock)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    windows = {"now": OutageWindows()}
    sweeper.outages = lambda: windows["now"]

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        clock.advance(timedelta(seconds=seconds))
        # 40 s of outage, between the listing and the timer's moment.
        windows["now"] = OutageWindows.of([(NOW + 10 * S, NOW + 50 * S)])

    sweeper.nap = nap
    asyncio.run(sweeper.run(interval=interval))
    ((_, at),) = writes(platform)
    assert NOW + 100 * S <= at <= NOW + 101 * S
    # Not read at its old moment: the outage was known before the timer fired.
    reads = [r.extensions["at"] for r in platform.requests if r.url.path.endswith("/s")]
    assert [t for t in reads if t < NOW + 100 * S] == [], reads


def test_timer_writes_keep_the_listings_sweep_id_and_the_counts_add_up(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """One sweep.finished for the interval: listing writes and timer writes, one sweep_id."""
    platform.add(
        record("now", started=5 * H),
        *(record(f"soon{n}", started=2 * H - (20 + n) * S) for n in range(3)),
    )
    sweeper = build_sweeper(platform, clock)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    marked = [e for e in logs if e["event"] == "step.marked"]
    assert len(marked) == 4
    assert {e["sweep_id"] for e in marked} == {report.sweep_id}
    (finished,) = [e for e in logs if e["event"] == "sweep.finished"]
    assert (finished["zombies"], finished["marked"], finished["armed"]) == (4, 4, 3)


# -- the real daemon against the stand-in -------------------------------------------


def test_the_daemon_marks_each_zombie_by_its_timer_never_before_its_moment(
    stand_in: Platform, tmp_path: Any
) -> None:
    """A worker that dies is marked by its timer, never before its limit; one that beats is
    left alone until it stops. (How soon after the limit is a figure of the benchmark and
    of the unit tests' injected clock, not a wall-clock tolerance here.)"""
    import signal
    import time
    from datetime import UTC, datetime

    from sweeper.devserver.state import _parse_time
    from tests.e2e import signal_and_collect, start_sweeper, wait_for, write_config

    limit = timedelta(seconds=5)
    started = datetime.now(UTC)
    stand_in.state.add(record("dies", now=started, started=timedelta(0)))
    stand_in.state.add(record("beats", now=started, started=timedelta(0)))
    extra = '[schedule]\ninterval = "1h"\n[sweep]\nstale_after = "5s"\n'
    proc = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    try:

        def beat() -> None:
            now = datetime.now(UTC)
            stand_in.state.steps["beats"]["lastHeartbeatAt"] = format_timestamp(now)

        def dies_marked() -> bool:
            beat()
            time.sleep(0.05)  # a worker heartbeating every 50 ms, not a wait for time
            return any(p.step_id == "dies" for p in stand_in.state.patches)

        wait_for(dies_marked)
        (dies,) = [p for p in stand_in.state.patches if p.step_id == "dies"]
        due = _parse_time(stand_in.state.steps["dies"]["startedAt"]) + limit
        assert dies.at >= due
        assert stand_in.state.steps["beats"]["status"] == "RUNNING"
        last_beat = _parse_time(stand_in.state.steps["beats"]["lastHeartbeatAt"])
        # The worker stops beating now: marked by its timer, not before its new moment.
        wait_for(lambda: any(p.step_id == "beats" for p in stand_in.state.patches))
        (beats,) = [p for p in stand_in.state.patches if p.step_id == "beats"]
        assert beats.at >= last_beat + limit
    finally:
        result = signal_and_collect(proc, signal.SIGTERM)
    assert result.code == 0, result.stderr
    marked = result.named("step.marked")
    assert [e["step_id"] for e in marked] == ["dies", "beats"]
    assert len({e["sweep_id"] for e in marked}) == 1  # both armed by the first listing


def test_no_timer_write_starts_after_the_interval(platform: FakePlatform, clock: FakeClock) -> None:
    """A write still retrying when the interval ends stops there: the next listing takes over."""
    platform.add(record("s", started=2 * H - 30 * S))
    platform.before.append(
        lambda r: (
            httpx.Response(503, headers={"Retry-After": "50"}) if r.method == "PATCH" else None
        )
    )
    sweeper = build_sweeper(platform, clock, max_attempts=5)
    interval = precise(sweeper, clock, until=M)
    report = asyncio.run(sweeper.run(interval=interval))
    assert len(platform.patches) == 1  # +30 s; a retry at +80 s would cross the interval
    assert report.counts["failed"] == 1
    assert clock() < NOW + M


def test_zombies_confirmed_by_timers_are_capped_by_max_steps(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """One dead at the listing, then a fleet that had just beaten dies: past max_steps
    zombies in the interval, the rest are refused (and at most max_steps timers exist)."""

    platform.add(record("dead", started=H))
    platform.add(*(record(f"w{n}", started=H, heartbeat=10 * S) for n in range(5)))
    rules = rules_with(3 * M)
    sweeper = build_sweeper(platform, clock, rules=rules, max_steps=2, max_concurrency=1)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    # Not counted at the listing (they had just beaten); the heap holds max_steps at a
    # time, the others wait for a place.
    assert report.counts["armed"] == 5
    assert len(platform.patches) == 2  # the dead one, then the first timer's
    assert report.result is Result.REFUSED
    assert (report.counts["marked"], report.counts["refused"]) == (2, 1)
    (refused,) = [e for e in logs if e["event"] == "sweep.refused"]
    assert refused["guard"] == "max_steps"


@pytest.mark.parametrize("due_again", [31 * S, 40 * S], ids=["past", "exactly now"])
def test_a_backdated_sign_of_life_is_judged_at_once_not_read_again_and_again(
    platform: FakePlatform, clock: FakeClock, due_again: timedelta
) -> None:
    """The re-read (ending at +40 s + 1 µs on a slow platform) shows a sign of life newer
    than the listed one yet due again already (at +31 s, or exactly now): judged on that
    read as the new baseline, written at once with it, one read."""
    platform.add(record("s", started=2 * H - 30 * S))  # due at +30 s + 1 µs
    # "Exactly now" on an exact estimate of the platform's clock: with the estimate's
    # drift allowance (guards.DRIFT) it is a few µs behind, and the step is not due yet.
    exact = ClockCheck(timedelta(minutes=2), clock, drift=0)
    sweeper = build_sweeper(platform, clock, clock_check=exact)
    interval = precise(sweeper, clock)
    reads = {"n": 0}
    moved = NOW - 2 * H + due_again  # newer than startedAt, due at due_again + 1 µs

    def backdate(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            reads["n"] += 1
            # The clock is pinned at each read: a second read would be a third, ... (a
            # sweep that never ends); end it as a failure instead.
            assert reads["n"] <= 2, "read again and again"
            clock.advance(NOW + 40 * S + timedelta(microseconds=1) - clock())
            platform.state.update("s", updatedAt=format_timestamp(moved))

    platform.before.append(backdate)
    report = asyncio.run(sweeper.run(interval=interval))
    assert reads["n"] == 1
    assert report.counts["marked"] == 1, report.counts
    (patch,) = platform.patches
    details = json.loads(patch.content)["errorDetails"]
    assert details["lastSignOfLifeField"] == "updatedAt"
    assert details["lastSignOfLifeAt"] == format_timestamp(moved)


def test_a_timer_firing_at_the_end_of_the_interval_starts_no_write_after_it(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A timer firing just before the interval ends on a slow platform: a request in
    flight is not cut, but no write starts after the interval's end."""
    interval_length = 5 * M
    # Due exactly 1 ms before `until` (limit 2 h, last sign of life 2 h - 5 min + 1 ms ago).
    platform.add(record("late", started=2 * H - interval_length + timedelta(milliseconds=2)))

    def slow(request: httpx.Request) -> None:
        if request.url.path != STEPS_PATH:
            clock.advance(S)

    platform.before.append(slow)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock, until=interval_length)
    patches_at: list[object] = []
    platform.before.append(lambda r: patches_at.append(clock()) if r.method == "PATCH" else None)
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.counts["armed"] == 1
    # A request in flight is not cut (its answer matters), but no write starts after the
    # interval's end; an overrun makes the daemon list at once (see the next test).
    assert all(at < interval.until for at in patches_at), patches_at  # type: ignore[operator]


def test_daemon_precise_timers_on_a_slow_platform_lose_no_listing(
    stand_in: Platform, tmp_path: Path
) -> None:
    """The daemon in precise mode on a slow platform (0.4 s a request, interval 2 s, steps
    due all along): an interval that runs past the next listing's time lists again at once
    (sweep.overran), so no listing is lost to APScheduler's max_instances."""
    now = datetime.now(UTC)
    for i in range(20):
        stand_in.state.add(record(f"d{i}", now=now, started=timedelta(seconds=2 - i * 0.1)))
    stand_in.faults.latency = timedelta(milliseconds=400)
    extra = '[schedule]\ninterval = "2s"\nprecise = true\n[sweep]\nstale_after = "4s"\n'
    config = write_config(tmp_path, stand_in.base_url, extra)

    def done(log: str) -> bool:
        return log.count('"sweep.started"') >= 4 and len(stand_in.state.patches) == 20

    lines = run_daemon_until(config, tmp_path, done).splitlines()
    skipped = [line for line in lines if "maximum number of running instances" in line]
    overran = [line for line in lines if '"sweep.overran"' in line]
    # An interval that ran past the next listing's time lists again at once: none lost.
    # (The stop may cut the last one: a daemon stopping lists nothing more.)
    assert len(overran) >= len(skipped) - 1


def test_a_listing_longer_than_the_interval_still_marks_in_precise_mode(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """A listing longer than the interval (3 pages of 20 s, interval 30 s) is bounded by
    sweep.deadline, not by the interval's end: precise mode marks its zombies as a plain
    sweep does."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(3)))

    def slow_listing(request: httpx.Request) -> None:
        if request.url.path == STEPS_PATH:
            clock.advance(20 * S)

    platform.before.append(slow_listing)
    plain = asyncio.run(build_sweeper(platform, clock, page_size=1).run())
    assert plain.counts["marked"] == 3 and plain.result is Result.COMPLETED

    platform.add(*(record(f"y{n}", started=5 * H) for n in range(3)))
    sweeper = build_sweeper(platform, clock, page_size=1)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=30 * S)))
    aborted = [e for e in logs if e["event"] == "sweep.aborted"]
    assert report.result is Result.COMPLETED, (report.result, [e["error"] for e in aborted])
    assert report.counts["marked"] == 3


def _creeping(
    platform: FakePlatform, clock: FakeClock, latency: timedelta, limit: int
) -> list[int]:
    """Each re-read of "creep" shows its sign of life 1 ms newer (still stale), and
    takes `latency`; after `limit` re-reads it stops creeping (so the test ends)."""
    platform.add(record("creep", started=2 * H - M))
    gets: list[int] = []

    def creep(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/creep"):
            gets.append(1)
            if len(gets) < limit:
                data = dict(platform.state.steps["creep"])
                raw = data.get("lastHeartbeatAt") or data["startedAt"]
                seen = datetime.fromisoformat(raw.replace("Z", "+00:00"))
                data["lastHeartbeatAt"] = format_timestamp(seen + timedelta(milliseconds=1))
                platform.state.add(data)
            clock.advance(latency)
        return None

    platform.before.append(creep)
    return gets


def test_a_sign_of_life_that_creeps_but_stays_stale_is_not_re_read_in_a_loop(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A step whose every re-read shows a sign of life 1 ms newer yet still stale is read
    a few times at most, not in a loop of re-reads re-armed in the past."""
    gets = _creeping(platform, clock, timedelta(milliseconds=100), limit=300)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    asyncio.run(sweeper.run(interval=interval))
    assert len(gets) <= 3, len(gets)


def test_a_timer_re_armed_in_the_past_ends_with_its_interval(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A timer re-armed at a moment already past ends with its interval: the run finishes
    by the interval's end plus LISTING_MARGIN, however long the step keeps creeping."""
    gets = _creeping(platform, clock, S, limit=2000)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.finished_at is not None
    assert report.finished_at <= interval.until + LISTING_MARGIN, (
        report.finished_at - interval.until,
        len(gets),
    )


def test_precise_mode_keeps_max_concurrency_writes_in_flight(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """api.max_concurrency bounds the writes in flight in precise mode too, listing's and
    timers' together: with 1, never two at once."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(2)))
    platform.add(*(record(f"t{n}", started=2 * H - timedelta(milliseconds=1)) for n in range(2)))
    in_flight: list[int] = [0]
    peak: list[int] = [0]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method != "PATCH":
            return platform.handle(request)
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await asyncio.sleep(0.02)
            return platform.handle(request)
        finally:
            in_flight[0] -= 1

    sweeper = build_sweeper(handler, clock, max_concurrency=1)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.counts["marked"] == 4, report.counts
    assert peak[0] <= 1, peak[0]


def test_an_outage_learned_during_the_reread_still_delays_the_write(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Due at +30 s; while its re-read is under way the sweep learns of a 10 s outage
    before that moment: the step is judged with it, re-armed and written at +40 s,
    not at once (at +31 s)."""
    from sweeper.outages import OutageWindows

    platform.add(record("s", started=2 * H - 30 * S))
    timestamped(platform, clock)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    windows = {"now": OutageWindows()}
    sweeper.outages = lambda: windows["now"]

    def outage_known(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path.endswith("/s"):
            clock.advance(S)
            windows["now"] = OutageWindows.of([(NOW + 20 * S, NOW + 30 * S)])

    platform.before.append(outage_known)
    asyncio.run(sweeper.run(interval=interval))
    ((_, at),) = writes(platform)
    assert NOW + 40 * S < at <= NOW + 42 * S, at - NOW  # its second re-read takes 1 s


def test_a_backdated_step_is_rearmed_when_an_outage_grows_while_it_is_judged(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The re-read shows a sign of life newer than the listed one and past its own moment;
    by the time that read is judged as the new baseline, an outage still open has grown
    over it (each look at the outages can find it longer): the step is re-armed at its
    delayed moment (+45 s) and written only then, after a second read."""
    from sweeper.outages import OutageWindows

    platform.add(record("s", started=2 * H - 30 * S))  # due at +30 s
    timestamped(platform, clock)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    moved = NOW - 2 * H + 31 * S
    looks = {"after_read": -1}

    def outages() -> OutageWindows:
        if looks["after_read"] < 0:
            return OutageWindows()
        looks["after_read"] += 1
        if looks["after_read"] == 1:  # the first judgement, right after the read
            return OutageWindows()
        return OutageWindows.of([(NOW + 31 * S, NOW + 45 * S)])

    sweeper.outages = outages
    reads: list[object] = []

    def backdate(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path.endswith("/s"):
            reads.append(clock())
            clock.advance(10 * S if len(reads) == 1 else S)  # slow once, then quick
            platform.state.update("s", updatedAt=format_timestamp(moved))
            looks["after_read"] = max(looks["after_read"], 0)

    platform.before.append(backdate)
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.counts["marked"] == 1, report.counts
    assert len(reads) == 2, reads
    assert reads[1] > NOW + 45 * S, reads  # read again at its delayed moment, not before
    ((_, at),) = writes(platform)
    assert at >= NOW + 45 * S, at - NOW
