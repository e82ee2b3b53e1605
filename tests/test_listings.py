"""The listing schedule: the trigger of `[schedule]`, the next listing, precise marking's
interval end, rescheduling and "list again now", on an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from sweeper.listings import LISTING_MARGIN, ListingSchedule, cadence_of, grace_seconds
from sweeper.settings import ScheduleSettings
from tests.listing_clock import LATER, Clock, wish_during_a_listing


def hourly() -> object:
    from apscheduler.triggers.interval import IntervalTrigger

    return IntervalTrigger(hours=1, timezone="UTC")


def at(moment: datetime) -> object:
    from apscheduler.triggers.date import DateTrigger

    return DateTrigger(run_date=moment, timezone="UTC")


async def idle() -> None:
    return None


def started(clock: Clock, listing: Callable[[], Awaitable[None]] = idle) -> ListingSchedule:
    """A schedule started on the running loop; its first listing is due at clock()."""
    schedule = ListingSchedule(clock)
    schedule.start(listing, hourly(), timedelta(minutes=5))
    return schedule


def test_an_interval_schedule_lists_every_interval_with_that_much_grace() -> None:
    """`interval = "90s"`: a gap of 90 s between listings, and 90 s of misfire grace."""
    cadence = cadence_of(ScheduleSettings(interval=timedelta(seconds=90)))
    assert cadence.gap == cadence.misfire == timedelta(seconds=90)
    assert cadence.trigger.interval == timedelta(seconds=90)


def test_a_cron_schedule_has_the_gap_between_two_fire_times() -> None:
    """`cron = "0 */2 * * *"`: two hours between listings; grace is jitter + 5 min."""
    now = datetime(2026, 12, 2, 0, 30, tzinfo=UTC)
    cadence = cadence_of(ScheduleSettings(cron="0 */2 * * *"), now)
    assert cadence.gap == timedelta(hours=2)
    assert cadence.misfire == timedelta(minutes=5)
    jittered = ScheduleSettings(cron="0 */2 * * *", jitter=timedelta(seconds=30))
    assert cadence_of(jittered, now).misfire == timedelta(minutes=5, seconds=30)


@pytest.mark.parametrize(
    ("misfire", "seconds"),
    [(timedelta(0), 1), (timedelta(milliseconds=400), 1), (timedelta(minutes=5), 300)],
)
def test_the_misfire_grace_is_whole_seconds_and_at_least_one(
    misfire: timedelta, seconds: int
) -> None:
    """APScheduler's misfire_grace_time counts whole seconds; below one a listing a tick
    late would be skipped."""
    assert grace_seconds(misfire) == seconds


def test_before_start_there_is_no_next_listing_and_nothing_to_move() -> None:
    """Not started: no next listing, no interval end; `list_now` only keeps the wish."""
    schedule = ListingSchedule(Clock(LATER))
    schedule.list_now()
    schedule.bring_forward()
    schedule.reschedule(hourly(), timedelta(minutes=5))
    schedule.pause()
    schedule.shutdown()
    assert schedule.next_listing_at() is None
    assert schedule.interval_end() is None
    assert schedule.relist is True and schedule.started is False


def test_the_first_listing_is_due_at_start() -> None:
    """`start` puts the first listing at the clock's now."""

    async def main() -> datetime | None:
        schedule = started(Clock(LATER))
        try:
            return schedule.next_listing_at()
        finally:
            schedule.shutdown()

    assert asyncio.run(main()) == LATER


@pytest.mark.parametrize(
    ("left", "margin"),
    [
        (timedelta(hours=1), LISTING_MARGIN),  # a full margin
        (timedelta(seconds=1), timedelta(milliseconds=100)),  # a tenth of the time left
        (timedelta(0), timedelta(0)),
    ],
)
def test_precise_marking_ends_a_margin_before_the_next_listing(
    left: timedelta, margin: timedelta
) -> None:
    """The interval ends LISTING_MARGIN before the next listing, or a tenth of the time
    left when that is less."""
    clock = Clock(LATER)

    async def main() -> datetime | None:
        schedule = started(clock)
        try:
            clock.now = LATER - left
            return schedule.interval_end()
        finally:
            schedule.shutdown()

    assert asyncio.run(main()) == LATER - margin


def test_a_reschedule_moves_the_next_listing_to_the_new_trigger() -> None:
    """A reload's new trigger decides the next listing."""
    moved = LATER + timedelta(days=3)

    async def main() -> datetime | None:
        schedule = started(Clock(LATER))
        try:
            schedule.reschedule(at(moved), timedelta(minutes=1))
            return schedule.next_listing_at()
        finally:
            schedule.shutdown()

    assert asyncio.run(main()) == moved


def test_bring_forward_makes_the_next_listing_due_now() -> None:
    """`bring_forward`: the next listing is at the clock's now."""
    clock = Clock(LATER + timedelta(days=1))

    async def main() -> datetime | None:
        schedule = ListingSchedule(clock)
        schedule.start(idle, at(LATER + timedelta(days=9)), timedelta(minutes=5))
        try:
            clock.now = LATER + timedelta(days=2)
            schedule.bring_forward()
            return schedule.next_listing_at()
        finally:
            schedule.shutdown()

    assert asyncio.run(main()) == LATER + timedelta(days=2)


def test_list_now_without_a_listing_running_lists_at_once() -> None:
    """No job runs: `list_now` makes the next listing due now, and keeps the wish until
    a listing begins."""
    clock = Clock(LATER)

    async def main() -> tuple[datetime | None, bool, bool]:
        schedule = started(clock)
        try:
            clock.now = LATER + timedelta(hours=5)
            schedule.list_now()
            wished = schedule.relist
            schedule.listing_begins()
            return schedule.next_listing_at(), wished, schedule.relist
        finally:
            schedule.shutdown()

    assert asyncio.run(main()) == (LATER + timedelta(hours=5), True, False)


@pytest.mark.parametrize("stopping", [False, True])
def test_list_now_during_a_listing_lists_when_it_ends(stopping: bool) -> None:
    """A listing runs: `list_now` leaves the next listing where it is, and brings it
    forward once that job has ended, unless the daemon is stopping by then."""
    clock = Clock(datetime.now(UTC))  # the first listing runs at once
    ended = LATER + timedelta(hours=7)

    async def main() -> tuple[datetime | None, datetime | None]:
        schedule = ListingSchedule(clock)
        return await wish_during_a_listing(
            schedule, clock, ended, schedule.list_now, stopping=lambda: stopping
        )

    during, after = asyncio.run(main())
    assert during == LATER
    assert after == (LATER if stopping else ended)


def test_the_watchdog_pings_on_the_schedulers_loop() -> None:
    """`watchdog`: a job on the same scheduler pings at its period."""

    async def main() -> bool:
        pinged = asyncio.Event()
        schedule = ListingSchedule(Clock(LATER))
        schedule.start(
            idle, hourly(), timedelta(minutes=5), watchdog=(timedelta(seconds=0.01), pinged.set)
        )
        try:
            async with asyncio.timeout(30):
                await pinged.wait()
            return True
        finally:
            schedule.pause()
            schedule.shutdown()

    assert asyncio.run(main())
