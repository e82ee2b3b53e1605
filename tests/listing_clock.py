"""The listing schedule under test: a clock moved by hand, a trigger that fires once far
ahead, and waiting for a listing job to have ended (its done-callbacks run)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sweeper.listings import ListingSchedule

#: Far enough ahead that APScheduler (on its own wall clock) never runs a job due then.
LATER = datetime(2100, 1, 1, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def then(moment: datetime) -> object:
    """A trigger whose every next fire time is `moment` (until it has passed)."""
    from apscheduler.triggers.base import BaseTrigger

    class Then(BaseTrigger):  # type: ignore[misc]
        def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
            return moment if previous is None or previous < moment else None

    return Then()


async def job_ended(schedule: ListingSchedule) -> None:
    """The latest listing job has ended and the callbacks after it have run."""
    assert schedule.job is not None
    await asyncio.wait({schedule.job})
    for _ in range(3):  # done-callbacks run on the next loop turns
        await asyncio.sleep(0)


async def wish_during_a_listing(
    schedule: ListingSchedule,
    clock: Clock,
    ended: datetime,
    wish: Callable[[], object],
    stopping: Callable[[], bool] = lambda: False,
) -> tuple[datetime | None, datetime | None]:
    """Start `schedule` (its first listing runs at once, the next at LATER), call `wish`
    while that listing runs, end it at `ended`: the next listing during, and after."""
    running, finish = asyncio.Event(), asyncio.Event()

    async def listing() -> None:
        running.set()
        await finish.wait()

    schedule.start(listing, then(LATER), timedelta(minutes=5), stopping=stopping)
    try:
        async with asyncio.timeout(30):  # an upper bound on events, not a measure
            await running.wait()
            assert schedule.job_running()
            wish()
            during = schedule.next_listing_at()
            clock.now = ended
            finish.set()
            await job_ended(schedule)
        return during, schedule.next_listing_at()
    finally:
        schedule.shutdown()
