"""When the daemon lists: one APScheduler instance, the listing job on its trigger, the
next listing time, rescheduling, and "list again now"."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sweeper.cron import cron_trigger

if TYPE_CHECKING:
    from sweeper.settings import ScheduleSettings

#: Precise marking ends an interval this long (at most) before the next listing.
LISTING_MARGIN = timedelta(milliseconds=250)

#: The listing job's id in the scheduler.
JOB_ID = "sweep"

#: A trigger of APScheduler 3 (`apscheduler.triggers.base.BaseTrigger`; the package
#: ships no type hints).
Trigger = Any


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Cadence:
    """What `[schedule]` means to the scheduler."""

    trigger: Trigger
    #: How late a listing may still start (APScheduler's `misfire_grace_time`).
    misfire: timedelta
    #: The gap between two listings (readiness allows three of them).
    gap: timedelta


def cadence_of(schedule: ScheduleSettings, now: datetime | None = None) -> Cadence:
    """The trigger of `[schedule]`, its misfire grace, and the gap between two listings."""
    if schedule.cron:
        trigger = cron_trigger(schedule.cron, schedule.timezone, schedule.jitter)
        first = trigger.get_next_fire_time(None, now or _now())
        second = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
        return Cadence(trigger, schedule.jitter + timedelta(minutes=5), second - first)
    from apscheduler.triggers.interval import IntervalTrigger

    interval = schedule.effective_interval
    trigger = IntervalTrigger(
        seconds=interval.total_seconds(),
        timezone="UTC",
        jitter=int(schedule.jitter.total_seconds()) or None,
    )
    return Cadence(trigger, interval, interval)


def grace_seconds(misfire: timedelta) -> int:
    # APScheduler counts whole seconds; below one it would skip a listing one tick late.
    return max(1, int(misfire.total_seconds()))


class ListingSchedule:
    """The listing job on its trigger, one listing at a time (APScheduler 3, in UTC).

    Not started, it only keeps the wish to list again (`list_now`): the first listing
    runs at `start` anyway.
    """

    def __init__(self, clock: Callable[[], datetime] = _now) -> None:
        self.clock = clock
        self._scheduler: Any = None
        #: The task of the latest listing job (it counts its sweep when the sweep ends).
        self.job: asyncio.Task[Any] | None = None
        #: A listing is wanted at once (`list_now`), and none has started since.
        self.relist = False
        self._stopping: Callable[[], bool] = lambda: False

    # -- the scheduler's life ----------------------------------------------------

    def start(
        self,
        listing: Callable[[], Awaitable[None]],
        trigger: Trigger,
        misfire: timedelta,
        *,
        clock: Callable[[], datetime] | None = None,
        stopping: Callable[[], bool] = lambda: False,
        watchdog: tuple[timedelta, Callable[[], object]] | None = None,
    ) -> None:
        """Run `listing` now, then on the trigger; `watchdog` pings on the scheduler's loop.

        `stopping`: once true, a wish to list again is no longer honoured. `clock`
        replaces the one given at construction (the daemon's, in tests a fake one).
        """
        from apscheduler.schedulers.asyncio import AsyncIOScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        self._stopping = stopping
        if clock is not None:
            self.clock = clock

        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            self.job = task
            task.add_done_callback(self._after_job)
            await listing()

        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            job,
            trigger,
            id=JOB_ID,
            name=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=grace_seconds(misfire),
            next_run_time=self.clock(),
        )
        if watchdog is not None:
            every, ping = watchdog

            async def watchdog_job() -> None:
                # Runs on the scheduler's own loop: a wedged loop stops the pings.
                ping()

            scheduler.add_job(
                watchdog_job,
                IntervalTrigger(seconds=every.total_seconds(), timezone=UTC),
                id="watchdog",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        scheduler.start()
        self._scheduler = scheduler

    @property
    def started(self) -> bool:
        return self._scheduler is not None

    def pause(self) -> None:
        """No listing starts from now on (the one running, if any, goes on)."""
        if self._scheduler is not None:
            self._scheduler.pause()

    def shutdown(self) -> None:
        """Stop the scheduler, without waiting for (or cancelling) a job still running."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)

    def job_running(self) -> bool:
        return self.job is not None and not self.job.done()

    # -- the next listing --------------------------------------------------------

    def next_listing_at(self) -> datetime | None:
        """When the scheduler lists next (None before start, or once it will not)."""
        if self._scheduler is None:
            return None
        job = self._scheduler.get_job(JOB_ID)
        following: datetime | None = None if job is None else job.next_run_time
        return following

    def interval_end(self, margin: timedelta = LISTING_MARGIN) -> datetime | None:
        """Where precise marking's interval ends: a little before the next listing, so that
        it has ended when the listing is due (one listing at a time); steps due in that
        margin are the listing's. At most a tenth of the time left. None: no next listing."""
        following = self.next_listing_at()
        if following is None:
            return None
        return following - min(margin, (following - self.clock()) / 10)

    def reschedule(self, trigger: Trigger, misfire: timedelta) -> None:
        """A new trigger and misfire grace (a reload): the next listing follows the new trigger."""
        if self._scheduler is not None:
            self._scheduler.reschedule_job(JOB_ID, trigger=trigger)
            self._scheduler.modify_job(JOB_ID, misfire_grace_time=grace_seconds(misfire))

    def bring_forward(self) -> None:
        """The next listing is due now. The scheduler skips it while a listing still runs
        (one at a time): `list_now` keeps the wish until it is served."""
        if self._scheduler is not None:
            self._scheduler.modify_job(JOB_ID, next_run_time=self.clock())

    def list_now(self) -> None:
        """List at once: now when no listing runs, else as soon as the running one has ended.

        The scheduler skips a run while the job still runs (a sweep finishing its writes
        after the lease was lost, then taken back), and would list only an interval later.
        So the wish is kept (`relist`) and each job's end, once the scheduler has counted
        it ended, schedules the listing if no job has served it.
        """
        self.relist = True
        if not self.job_running():
            self.bring_forward()

    def listing_begins(self) -> None:
        """The listing starting now serves the wish to list again."""
        self.relist = False

    def _after_job(self, _: object) -> None:
        # A done-callback of the job's task, added after the scheduler's own: the
        # scheduler has counted the job ended, so a run now is not skipped.
        if self.relist and not self._stopping():
            self.bring_forward()
