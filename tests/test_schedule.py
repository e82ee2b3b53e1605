"""Daemon wiring: crontab weekdays, draining on stop, and the scheduler's settings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sweeper.report import Result, SweepReport
from sweeper.schedule import DaemonState, cron_trigger, drain, run_daemon


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        # 2026-05-23 is a Saturday.
        ("0 3 * * 0", datetime(2026, 5, 23, 12, tzinfo=UTC), datetime(2026, 5, 24, 3, tzinfo=UTC)),
        ("0 3 * * 7", datetime(2026, 5, 23, 12, tzinfo=UTC), datetime(2026, 5, 24, 3, tzinfo=UTC)),
        ("0 3 * * 1", datetime(2026, 5, 23, 12, tzinfo=UTC), datetime(2026, 5, 25, 3, tzinfo=UTC)),
        (
            "0 3 * * 1-5",
            datetime(2026, 5, 23, 12, tzinfo=UTC),
            datetime(2026, 5, 25, 3, tzinfo=UTC),
        ),
        (
            "*/15 * * * *",
            datetime(2026, 5, 23, 12, 1, tzinfo=UTC),
            datetime(2026, 5, 23, 12, 15, tzinfo=UTC),
        ),
        (
            "0 */6 * * */2",
            datetime(2026, 5, 23, 12, 1, tzinfo=UTC),
            datetime(2026, 5, 23, 18, tzinfo=UTC),
        ),
    ],
)
def test_cron_weekdays_count_as_crontab_does(
    expr: str, start: datetime, expected: datetime
) -> None:
    """0 and 7 are Sunday, 1 is Monday (APScheduler 3's from_crontab says 0 is Monday)."""
    trigger = cron_trigger(expr, "UTC")
    assert trigger.get_next_fire_time(None, start) == expected


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1/3", "mon,thu"),
        ("sat,sun", "sun,sat"),
        ("mon-wed", "mon,tue,wed"),
    ],
)
def test_crontab_weekdays_are_translated(field: str, names: str) -> None:
    """Every crontab weekday form comes out as explicit APScheduler day names."""
    from sweeper.schedule import crontab_weekdays

    assert crontab_weekdays(field) == names


def test_cron_rejects_bad_weekdays_and_field_counts() -> None:
    """Out-of-range weekdays and wrong field counts are errors."""
    with pytest.raises(ValueError, match="out of range"):
        cron_trigger("0 3 * * 8", "UTC")
    with pytest.raises(ValueError, match="five-field"):
        cron_trigger("0 3 * *", "UTC")
    with pytest.raises(ValueError, match="backwards"):
        cron_trigger("0 3 * * 5-2", "UTC")
    with pytest.raises(ValueError, match="step"):
        cron_trigger("0 3 * * */x", "UTC")


def test_cron_uses_the_configured_time_zone() -> None:
    """schedule.timezone applies to cron: 03:00 in Berlin is 01:00 UTC in summer."""
    trigger = cron_trigger("0 3 * * *", "Europe/Berlin")
    after = datetime(2026, 5, 23, 12, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, after).astimezone(UTC) == datetime(
        2026, 5, 24, 1, tzinfo=UTC
    )


def test_drain_waits_for_the_task_without_a_stop() -> None:
    """Without a stop request the task runs to its end."""

    async def main() -> str:
        task = asyncio.ensure_future(asyncio.sleep(0, result="done"))
        await drain(task, asyncio.Event(), grace=0.01)
        return task.result()

    assert asyncio.run(main()) == "done"


def test_drain_cancels_after_the_grace_period() -> None:
    """A task still running `grace` seconds after stop is cancelled."""

    async def main() -> bool:
        stop = asyncio.Event()
        forever = asyncio.ensure_future(asyncio.Event().wait())
        stop.set()
        await drain(forever, stop, grace=0.01)
        return forever.cancelled()

    assert asyncio.run(main())


def test_daemon_sweeps_at_start_with_explicit_scheduler_settings() -> None:
    """The first sweep runs at start; the job has max_instances=1, coalesce and grace."""
    from apscheduler.triggers.interval import IntervalTrigger

    seen: dict[str, Any] = {}

    async def main() -> DaemonState:
        stop = asyncio.Event()

        def new_sweep() -> tuple[SweepReport, Any]:
            report = SweepReport("id", datetime.now(UTC), dry_run=False)

            async def work() -> SweepReport:
                from apscheduler.schedulers.asyncio import AsyncIOScheduler

                del AsyncIOScheduler
                stop.set()
                return report

            return report, work()

        state = DaemonState()
        state.listeners.append(lambda r: seen.setdefault("report", r))
        return await run_daemon(
            new_sweep,
            stop=stop,
            trigger=IntervalTrigger(hours=1, timezone="UTC"),
            misfire_grace=timedelta(minutes=5),
            state=state,
        )

    state = asyncio.run(main())
    assert state.sweeps == 1
    assert seen["report"].result is Result.COMPLETED
    assert state.last_success_at is not None
    assert state.running is False


@pytest.mark.parametrize(
    ("results", "blocked"),
    [
        ([Result.COMPLETED], None),
        ([Result.CRASHED], Result.CRASHED),
        ([Result.TOKEN_REFUSED], Result.TOKEN_REFUSED),
        ([Result.MISCONFIGURED], Result.MISCONFIGURED),
        ([Result.UNAVAILABLE], None),  # transient: readiness waits three intervals
        ([Result.CRASHED, Result.UNAVAILABLE], Result.CRASHED),  # only a success clears it
        ([Result.CRASHED, Result.COMPLETED], None),
    ],
)
def test_readiness_is_lost_at_once_by_a_crash_a_refused_token_or_a_misconfiguration(
    results: list[Result], blocked: Result | None
) -> None:
    """DaemonState.blocked_by, which /readyz reads: set by those results, cleared by success."""
    from apscheduler.triggers.interval import IntervalTrigger

    queue = list(results)

    async def main() -> DaemonState:
        stop = asyncio.Event()

        def new_sweep() -> tuple[SweepReport, Any]:
            report = SweepReport("id", datetime.now(UTC), dry_run=False)

            async def work() -> SweepReport:
                report.result = queue.pop(0)
                if not queue:
                    stop.set()
                return report

            return report, work()

        return await run_daemon(
            new_sweep,
            stop=stop,
            trigger=IntervalTrigger(seconds=0.01, timezone="UTC"),
            misfire_grace=timedelta(minutes=5),
        )

    state = asyncio.run(main())
    assert state.sweeps == len(results)
    assert state.blocked_by is blocked


def test_a_sweep_that_raises_is_counted_as_crashed() -> None:
    """An exception out of the sweep's work: result crashed, logged, the daemon goes on."""
    from apscheduler.triggers.interval import IntervalTrigger

    seen: list[SweepReport] = []

    async def main() -> DaemonState:
        stop = asyncio.Event()

        def new_sweep() -> tuple[SweepReport, Any]:
            report = SweepReport("id", datetime.now(UTC), dry_run=False)

            async def work() -> SweepReport:
                stop.set()
                raise RuntimeError("bug")

            return report, work()

        state = DaemonState()
        state.listeners.append(seen.append)
        return await run_daemon(
            new_sweep,
            stop=stop,
            trigger=IntervalTrigger(hours=1, timezone="UTC"),
            misfire_grace=timedelta(minutes=5),
            state=state,
        )

    state = asyncio.run(main())
    assert seen[0].result is Result.CRASHED
    assert state.blocked_by is Result.CRASHED


def test_a_reload_that_lengthens_the_interval_is_no_overrun() -> None:
    """Finding 15: the listing applies a reload that reschedules the job from 1 h to 2 h,
    and lasts 90 min (an injected clock): no false sweep.overran, no listing at once."""
    from apscheduler.triggers.interval import IntervalTrigger
    from structlog.testing import capture_logs

    now = [datetime.now(UTC)]
    state = DaemonState()

    async def main() -> None:
        stop = asyncio.Event()

        def new_sweep() -> tuple[SweepReport, Any]:
            state.schedule.reschedule(
                IntervalTrigger(hours=2, timezone="UTC"), timedelta(minutes=5)
            )
            report = SweepReport("id", now[0], dry_run=False)

            async def work() -> SweepReport:
                now[0] += timedelta(minutes=90)
                return report

            return report, work()

        swept = asyncio.Event()
        state.listeners.append(lambda _: swept.set())

        async def stop_after_the_first_sweep() -> None:
            await swept.wait()
            for _ in range(5):  # let the job finish its bookkeeping
                await asyncio.sleep(0)
            stop.set()

        stopper = asyncio.ensure_future(stop_after_the_first_sweep())
        await run_daemon(
            new_sweep,
            stop=stop,
            trigger=IntervalTrigger(hours=1, timezone="UTC"),
            misfire_grace=timedelta(minutes=5),
            state=state,
            clock=lambda: now[0],
        )
        await stopper

    with capture_logs() as logs:
        asyncio.run(main())
    assert state.sweeps == 1
    assert not [e for e in logs if e["event"] == "sweep.overran"]


@pytest.mark.parametrize("previous_still_running", [True, False])
def test_a_lease_taken_back_while_the_last_sweep_finishes_lists_when_it_ends(
    previous_still_running: bool,
) -> None:
    """[leader]: a copy lost the lease while a sweep was finishing its writes, and takes it
    back before that sweep ends (`list_now` then). With a 1-hour interval, a second
    listing only comes promptly if it follows the end of the first, and never overlaps
    it (one listing at a time). Without a sweep running, `list_now` lists at once."""
    from apscheduler.triggers.interval import IntervalTrigger

    from sweeper.schedule import list_now

    order: list[str] = []
    holding = [True]

    async def main() -> DaemonState:
        stop = asyncio.Event()
        started, finish_first = asyncio.Event(), asyncio.Event()
        state = DaemonState()

        def new_sweep() -> tuple[SweepReport, Any]:
            report = SweepReport("id", datetime.now(UTC), dry_run=False)
            number = sum(1 for o in order if o.startswith("start")) + 1
            order.append(f"start {number}")

            async def work() -> SweepReport:
                if number == 1:
                    started.set()
                    if previous_still_running:
                        holding[0] = False  # lost: the sweep drains its writes
                        await asyncio.sleep(0)
                        holding[0] = True  # taken back before it has ended
                        list_now(state)
                    await finish_first.wait()
                else:
                    stop.set()
                order.append(f"end {number}")
                return report

            return report, work()

        async def driver() -> None:
            # Waits for events, with a generous bound (the interval is an hour).
            try:
                async with asyncio.timeout(30):
                    await started.wait()
                    finish_first.set()
                    if not previous_still_running:
                        assert state.job is not None
                        await asyncio.wait({state.job})
                        list_now(state)  # nothing runs: at once
                    await stop.wait()
            finally:
                stop.set()  # a second listing that never came: the daemon stops all the same

        driving = asyncio.ensure_future(driver())
        done = await run_daemon(
            new_sweep,
            stop=stop,
            trigger=IntervalTrigger(hours=1, timezone="UTC"),
            misfire_grace=timedelta(minutes=5),
            state=state,
            may_list=lambda: holding[0],
        )
        await driving
        return done

    state = asyncio.run(main())
    assert order == ["start 1", "end 1", "start 2", "end 2"]
    assert state.sweeps == 2 and state.relist is False
