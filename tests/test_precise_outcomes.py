"""Precise marking's outcomes and guards: a timer is an outcome only once a re-read showed
a zombie; the max_steps guard counts zombies due in the interval (every step silent past
half its limit), never healthy steps that keep beating; a halt ends the run at once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from sweeper.api import STEPS_PATH
from sweeper.errors import SkipReason
from sweeper.model import format_timestamp
from sweeper.report import Result
from tests.builders import H, M, S, build_sweeper, patient_sweeper, precise, rules_with, run
from tests.fakes import NOW, FakeClock, FakePlatform, record, refusal


def test_a_timer_whose_reread_fails_is_unchecked_not_a_zombie(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Due at +90 s; its re-read is answered 503 every time: nothing showed the step stale.
    No zombie, no step.failed, no entry; counted `unchecked`; the next listing takes it."""
    platform.add(record("soon", started=2 * H - 90 * S))
    platform.answer_rereads(httpx.Response(503))
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
    platform.answer_rereads(httpx.Response(503, headers={"Retry-After": "50"}))
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
    platform.answer_rereads(refusal())
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


def test_precise_guard_does_not_count_healthy_heartbeating_steps(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The max_steps guard of precise marking counts zombies, not healthy steps due in the
    interval that keep beating: with more such steps than max_steps, the one real zombie is
    still marked and the sweep is not refused."""
    live = [f"live{n}" for n in range(4)]
    platform.add(record("dead", started=5 * H))
    platform.add(*(record(s, started=H, heartbeat=timedelta(seconds=10)) for s in live))

    def keep_beating(request: httpx.Request) -> None:
        for step_id in live:  # the workers are alive: they heartbeat all the time
            platform.state.steps[step_id]["lastHeartbeatAt"] = format_timestamp(clock())

    platform.before.append(keep_beating)
    rules = rules_with(3 * M)
    sweeper = patient_sweeper(platform, clock, rules=rules, max_steps=3)
    report = run(sweeper, precise(sweeper, clock))
    assert report.result is not Result.REFUSED, report.error
    assert platform.state.steps["dead"]["status"] == "FAILED"


def test_more_zombies_due_in_the_interval_than_max_steps_are_refused(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """More steps dying inside the interval than sweep.max_steps: every one is armed, and
    the sweep is refused (sweep.refused guard=max_steps), none marked silently."""
    platform.add(*(record(f"w{n}", started=H, heartbeat=10 * S) for n in range(3)))
    rules = rules_with(3 * M)
    sweeper = build_sweeper(platform, clock, rules=rules, max_steps=2, max_concurrency=1)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    # All three were dead (never beat again) and crossed their limit inside the interval.
    assert report.counts["armed"] == 3, report.counts
    assert report.result is Result.REFUSED, (report.result, report.counts)
    assert [e for e in logs if e["event"] == "sweep.refused"]


def test_a_real_zombie_waits_for_a_timer_place_when_healthy_steps_fill_the_heap(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Healthy steps that keep beating do not keep a real zombie out of the timer heap
    (max_steps 3, three healthy steps due first): the zombie is marked in this interval."""
    platform.add(*(record(f"h{n}", started=H, heartbeat=30 * S) for n in range(3)))
    platform.add(record("dead", started=H, heartbeat=10 * S))
    platform.beat_when_read(lambda step_id: step_id.startswith("h"))
    rules = rules_with(3 * M)
    sweeper = build_sweeper(platform, clock, rules=rules, max_steps=3)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    marked = [e.stepId for e in report.entries if e.outcome.value == "marked"]
    assert marked == ["dead"], (marked, report.counts)
    (full,) = [e for e in logs if e["event"] == "timers.full"]
    assert (full["armed"], full["waiting"], full["max_steps"]) == (3, 1, 3)
    assert full["detail"] == "steps due later wait for a timer's place (at most sweep.max_steps)"


def test_timers_armed_gauge_drops_when_the_run_ends(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """When a run halts (a re-read answered 401) the armed-timers gauge drops to 0: no
    timer of that run will fire."""
    platform.add(*(record(f"w{n}", started=2 * H - (n + 1) * M) for n in range(3)))

    platform.answer_rereads(httpx.Response(401, json={"success": False}))
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        await asyncio.sleep(0)  # a real nap yields to the tasks firing
        clock.advance(timedelta(seconds=seconds))

    sweeper.nap = nap
    gauge: list[int] = []
    interval.on_armed = gauge.append
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.result is Result.TOKEN_REFUSED
    assert report.counts["armed"] == 3
    assert gauge[-1] == 0, gauge
    assert all(isinstance(n, int) for n in gauge), gauge


def test_a_halt_ends_the_nap(platform: FakePlatform, clock: FakeClock) -> None:
    """A halt (a timer's re-read answered 401) wakes the timer loop from its nap: the run
    ends at once, not when the next timer is due."""
    platform.add(record("w0", started=2 * H - M), record("w1", started=2 * H - 4 * M))

    platform.answer_rereads(httpx.Response(401, json={"success": False}))
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        for _ in range(200):  # the tasks firing run meanwhile
            await asyncio.sleep(0)
            if wake.is_set() or sweeper.stop.is_set():
                clock.advance(timedelta(milliseconds=1))
                return
        clock.advance(timedelta(seconds=seconds))

    sweeper.nap = nap
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.result is Result.TOKEN_REFUSED
    assert report.finished_at is not None
    assert report.finished_at < NOW + 2 * M, report.finished_at - NOW


def test_healthy_steps_are_not_counted_as_zombies(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Steps that beat whenever they are read are never counted as zombies by precise
    marking (limit shorter than the interval): zombies = 0, no step.skipped."""
    platform.add(*(record(f"h{n}", started=H, heartbeat=30 * S) for n in range(25)))
    platform.beat_when_read(lambda step_id: step_id.startswith("h"))
    rules = rules_with(3 * M)
    sweeper = build_sweeper(platform, clock, rules=rules)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    skipped = [e for e in logs if e["event"] == "step.skipped"]
    assert (report.counts["zombies"], len(skipped)) == (0, 0), report.counts


# -- what each timer's end says (the mutation run of precise.py asked for these) ----


def test_each_unchecked_timer_is_counted_and_logged_with_its_step(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Two timers whose re-reads fail: two `unchecked`, each logged with its step and why."""
    platform.add(record("a", started=2 * H - 60 * S), record("b", started=2 * H - 90 * S))
    platform.answer_rereads(httpx.Response(503))
    sweeper = build_sweeper(platform, clock)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.counts["unchecked"] == 2
    unchecked = [e for e in logs if e["event"] == "timer.unchecked"]
    assert sorted((e["step_id"], e["organization_id"]) for e in unchecked) == [
        ("a", "org-a"),
        ("b", "org-a"),
    ]
    assert all("503" in e["error"] for e in unchecked), unchecked


def test_a_dropped_timer_is_logged_with_its_step_and_reason(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """A step that finished before its moment: `timer.dropped` names it and why."""
    platform.add(record("done", started=2 * H - 60 * S))

    def finish(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            platform.state.update("done", status="SUCCEEDED")

    platform.before.append(finish)
    sweeper = build_sweeper(platform, clock)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.entries == []
    (dropped,) = [e for e in logs if e["event"] == "timer.dropped"]
    assert (dropped["step_id"], dropped["organization_id"]) == ("done", "org-a")
    assert dropped["reason"] == "finished"


def test_only_a_timer_write_is_watched(platform: FakePlatform, clock: FakeClock) -> None:
    """The detection-lag histogram means precise marking's lag: a zombie a timer watched
    cross its limit is `watched`; one the listing found already stale is not."""
    platform.add(record("old", started=5 * H), record("soon", started=2 * H - 60 * S))
    sweeper = build_sweeper(platform, clock)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    watched = {e.stepId: e.watched for e in report.entries}
    assert watched == {"old": None, "soon": True}


def test_a_lost_lease_drops_the_timers_and_says_so(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """[leader] the lease is lost before the timer fires: nothing is read or written after."""
    platform.add(record("soon", started=2 * H - 60 * S))
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    interval.holding = lambda: False
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.result is Result.INTERRUPTED, report.result
    assert report.error == "the lease was lost: the timers are dropped"
    assert [r.method for r in platform.requests] == ["GET"]  # the listing only
    assert platform.patches == []


def test_the_interval_refusal_says_where(platform: FakePlatform, clock: FakeClock) -> None:
    """The refusal of one zombie too many says it was counted in the listing interval."""
    platform.add(*(record(f"d{i}", started=5 * H, heartbeat=50 * M + i * S) for i in range(6)))
    sweeper = build_sweeper(platform, clock, max_steps=3)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=90 * M)))
    assert report.error == "4 zombies in this listing interval, more than sweep.max_steps"


@pytest.mark.parametrize(("alive", "outcome"), [(False, "marked"), (True, "skipped")])
def test_a_timer_write_answered_503_is_judged_again_from_the_listed_step(
    platform: FakePlatform, clock: FakeClock, alive: bool, outcome: str
) -> None:
    """The timer's first write is answered 503 (not applied); the next attempt reads the
    step again and judges it against the listing's baseline: still silent, written; a
    heartbeat since, left alone."""
    platform.add(record("soon", started=2 * H - 60 * S))
    patches: list[int] = []

    def first_patch_fails(request: httpx.Request) -> httpx.Response | None:
        if request.method != "PATCH":
            return None
        patches.append(1)
        if len(patches) > 1:
            return None
        if alive:
            platform.state.update("soon", lastHeartbeatAt=format_timestamp(clock()))
        return httpx.Response(503)

    platform.before.append(first_patch_fails)
    sweeper = patient_sweeper(platform, clock)
    report = run(sweeper, precise(sweeper, clock))
    (entry,) = report.entries
    assert entry.outcome.value == outcome, (entry, report.counts)
    assert entry.reason is (SkipReason.ALIVE if alive else None)
    assert len(patches) == (1 if alive else 2)
    assert platform.state.steps["soon"]["status"] == ("RUNNING" if alive else "FAILED")


def test_an_unforeseen_error_in_a_timer_crashes_the_sweep(
    platform: FakePlatform, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: a bug while a timer is judged ends the sweep `crashed`, with its cause."""
    import sweeper.precise

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in rearm")

    monkeypatch.setattr(sweeper.precise, "rearm", broken)
    platform.add(record("soon", started=2 * H - 60 * S))
    sweeper_ = build_sweeper(platform, clock)
    report = asyncio.run(sweeper_.run(interval=precise(sweeper_, clock)))
    assert report.result is Result.CRASHED
    assert "a bug in rearm" in (report.error or "")
    assert platform.patches == []


@pytest.mark.parametrize("how", ["the interval ends", "the lease is lost"])
def test_a_timer_that_fails_while_the_timers_stop_still_crashes_the_sweep(
    platform: FakePlatform, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Fail closed when the timers stop too: a timer still firing when the interval runs
    out (or the lease is lost) is waited for, and an unforeseen error in it ends the
    sweep `crashed`, with its cause."""
    import sweeper.precise

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in rearm")

    monkeypatch.setattr(sweeper.precise, "rearm", broken)
    platform.add(record("soon", started=2 * H - 60 * S))
    lost = [False]
    stopped: list[bool] = []

    async def slow_reread(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and not request.url.path.endswith(STEPS_PATH):
            # The timers stop while this re-read is on its way: the timer loop sees it
            # (and fires no more) before the answer comes back.
            if how == "the interval ends":
                clock.advance(10 * M)
            else:
                lost[0] = True
            interval.wake.set()
            for _ in range(50):
                await asyncio.sleep(0)  # a loop turn, not time: the timer loop runs
            stopped.append(clock() >= interval.until or lost[0])
        return platform.handle(request)

    sweeper_ = build_sweeper(slow_reread, clock)
    interval = precise(sweeper_, clock)
    interval.holding = lambda: not lost[0]
    report = asyncio.run(sweeper_.run(interval=interval))
    assert stopped == [True]
    assert report.result is Result.CRASHED, report.result
    assert "a bug in rearm" in (report.error or "")
    assert platform.patches == []


@pytest.mark.parametrize(("after_due", "armed"), [(timedelta(microseconds=1), 1), (0 * S, 0)])
def test_a_step_due_at_the_intervals_end_is_left_to_the_next_listing(
    platform: FakePlatform, clock: FakeClock, after_due: timedelta, armed: int
) -> None:
    """Due 1 µs before the interval ends: armed. Due exactly at its end: the next listing's."""
    platform.add(record("edge", started=2 * H - 5 * M))  # due at +5 min + 1 µs
    due = 5 * M + timedelta(microseconds=1)
    sweeper = build_sweeper(platform, clock)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=due + after_due)))
    assert report.counts["armed"] == armed, report.counts


def test_a_timers_reread_waits_no_retry_past_the_intervals_end(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Due at +90 s, the interval ends at +2 min; the re-read is answered 503 with
    Retry-After 50 s: it gives up rather than wait past the interval's end (the next
    listing takes the step over), so it is read once and the run ends in its interval."""
    platform.add(record("soon", started=2 * H - 90 * S))
    platform.answer_rereads(httpx.Response(503, headers={"Retry-After": "50"}))
    sweeper = patient_sweeper(platform, clock)
    interval = precise(sweeper, clock, until=2 * M)
    report = run(sweeper, interval)
    assert report.counts["unchecked"] == 1, report.counts
    assert [r.method for r in platform.requests if r.url.path.endswith("/soon")] == ["GET"]
    assert report.finished_at is not None and report.finished_at <= interval.until


def test_as_many_zombies_as_max_steps_are_all_marked(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """max_steps 2, two zombies at the listing and nothing else: not refused, both marked."""
    platform.add(record("z1", started=5 * H), record("z2", started=5 * H))
    sweeper = build_sweeper(platform, clock, max_steps=2)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.result is Result.COMPLETED, report.error
    assert report.counts["marked"] == 2


def test_a_known_outage_keeps_a_step_from_the_timers_and_the_guard(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Limit 2 h, interval 5 min: a step silent 2 h - 1 min would be due in the interval
    and is past half its limit, but the platform was away the last 70 min: its idle time
    is 49 min, it is due after the interval and not counted by the guard (max_steps 0)."""
    from sweeper.outages import OutageWindows

    platform.add(record("s", started=2 * H - M))
    sweeper = build_sweeper(platform, clock, max_steps=0)
    sweeper.outages = lambda: OutageWindows.of([(NOW - 70 * M, NOW)])
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.result is Result.COMPLETED, report.error
    assert report.counts["armed"] == 0, report.counts


def test_a_timer_writes_second_attempt_counts_an_outage_learned_meanwhile(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The timer's write is answered 503 (not applied); before its next attempt the sweep
    learns the platform was away 15 s just before the step's moment: judged with that
    outage it is not stale yet, and is left alone (one PATCH)."""
    from sweeper.outages import OutageWindows

    platform.add(record("soon", started=2 * H - 60 * S))
    sweeper = patient_sweeper(platform, clock)
    windows = {"now": OutageWindows()}
    sweeper.outages = lambda: windows["now"]
    patches: list[int] = []

    def first_patch_fails(request: httpx.Request) -> httpx.Response | None:
        if request.method != "PATCH":
            return None
        patches.append(1)
        windows["now"] = OutageWindows.of([(NOW + 45 * S, NOW + 60 * S)])
        return httpx.Response(503)

    platform.before.append(first_patch_fails)
    report = run(sweeper, precise(sweeper, clock))
    (entry,) = report.entries
    assert (entry.outcome.value, entry.reason) == ("skipped", SkipReason.ALIVE), entry
    assert patches == [1]
