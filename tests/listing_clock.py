"""The listing schedule under test: a clock moved by hand, a trigger that fires once far
ahead, and waiting for a listing job to have ended (its done-callbacks run)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

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
