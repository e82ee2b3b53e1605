"""The daemon's loop: a sweep at each listing (sweeper/listings.py says when), the stop
signal, and draining writes in flight."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from sweeper import __version__

# The cron helpers live in sweeper/cron.py; re-exported for callers of this module.
from sweeper.cron import cron_trigger as cron_trigger
from sweeper.cron import crontab_weekdays as crontab_weekdays
from sweeper.errors import Crashed, Result
from sweeper.listings import ListingSchedule, Trigger
from sweeper.notify import SystemdNotifier
from sweeper.report import SweepReport

#: A sweep ending so makes /readyz 503 at once, until one succeeds: no retry helps.
NOT_READY_AT_ONCE = frozenset({Result.TOKEN_REFUSED, Result.CRASHED, Result.MISCONFIGURED})

#: After a stop request, writes in flight get this long to finish.
SHUTDOWN_GRACE_SECONDS = 10.0

log = structlog.get_logger("sweeper.schedule")


def install_stop_handlers(stop: asyncio.Event, on_hangup: Callable[[], None] | None = None) -> None:
    """SIGTERM and SIGINT set the stop event; a second one changes nothing.

    SIGHUP never kills: it calls `on_hangup` (the daemon's reload), or is logged
    and ignored where there is nothing to reload (one-shot runs).
    """
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        if not stop.is_set():
            # A routine stop (systemctl stop, a rollout): nothing is wrong.
            log.info("shutdown.requested", signal=signal.Signals(signum).name)
        stop.set()

    def hangup() -> None:
        if on_hangup is None:
            log.warning("signal.ignored", signal="SIGHUP", detail="nothing to reload in this run")
        else:
            on_hangup()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, hangup)


async def drain(task: asyncio.Task[Any], stop: asyncio.Event, grace: float) -> None:
    """Wait for the task; once a stop is requested, give it `grace` seconds, then cancel it."""
    stop_waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_waiter.cancel()
    if task.done():
        return
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.error("shutdown.grace_exceeded", grace_seconds=grace)
        task.cancel()
        await asyncio.wait({task})


@dataclass
class DaemonState:
    """What the daemon knows between sweeps (health and metrics read it)."""

    running: bool = False
    sweeps: int = 0
    current: asyncio.Task[SweepReport] | None = None
    last_report: SweepReport | None = None
    last_success_at: datetime | None = None
    #: A sweep whose token was refused or that crashed: not ready until one succeeds.
    blocked_by: Result | None = None
    #: When the daemon lists (a reload reschedules it, a lease taken back lists now).
    schedule: ListingSchedule = field(default_factory=ListingSchedule)
    listeners: list[Callable[[SweepReport], None]] = field(default_factory=list)

    @property
    def job(self) -> asyncio.Task[Any] | None:
        """The job running the latest sweep (it counts the sweep when the sweep ends)."""
        return self.schedule.job

    @property
    def relist(self) -> bool:
        """A listing is wanted at once (`list_now`), and none has started since."""
        return self.schedule.relist


def list_now(state: DaemonState) -> None:
    """List at once: now when no job runs, else as soon as the running one has ended."""
    state.schedule.list_now()


@dataclass
class _Listing:
    """The listing job: one sweep, then its count in the daemon's state."""

    new_sweep: Callable[[], tuple[SweepReport, Awaitable[SweepReport]]]
    state: DaemonState
    stop: asyncio.Event
    clock: Callable[[], datetime]
    may_list: Callable[[], bool]

    async def __call__(self) -> None:
        if self.stop.is_set() or not self.may_list():
            return
        schedule = self.state.schedule
        schedule.listing_begins()  # this listing is the one wished for
        report, work = self.new_sweep()
        # Read after new_sweep: a reload it applied may have rescheduled the listings, and
        # the old next listing time would make a lengthened interval look overrun.
        next_listing = schedule.next_listing_at()
        self.state.last_report = report
        self.state.current = asyncio.ensure_future(work)
        try:
            # Shielded: the scheduler's shutdown must not cancel writes in flight.
            await asyncio.shield(self.state.current)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # one failed sweep never kills the daemon
            crashed = Crashed(exc)
            report.end(crashed)
            log.error("sweep.aborted", sweep_id=report.sweep_id, **crashed.log_fields())
        finally:
            self.count(report)
            self.check_overrun(next_listing)

    def count(self, report: SweepReport) -> None:
        """The sweep has ended: readiness, the last success, and the listeners."""
        state = self.state
        state.sweeps += 1
        if report.succeeded:
            state.last_success_at = self.clock()
            state.blocked_by = None
        elif report.result in NOT_READY_AT_ONCE:
            state.blocked_by = report.result
        for listener in state.listeners:
            listener(report)

    def check_overrun(self, next_listing: datetime | None) -> None:
        if next_listing is not None and not self.stop.is_set() and self.clock() >= next_listing:
            # This sweep ran past the next listing's time, which the scheduler then
            # skipped (one at a time): list now rather than an interval later, once
            # this job has ended.
            log.info("sweep.overran", next_listing=next_listing.isoformat())
            self.state.schedule.list_now()


async def run_daemon(
    new_sweep: Callable[[], tuple[SweepReport, Awaitable[SweepReport]]],
    *,
    stop: asyncio.Event,
    trigger: Trigger,
    misfire_grace: timedelta,
    state: DaemonState | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    notifier: SystemdNotifier | None = None,
    may_list: Callable[[], bool] = lambda: True,
) -> DaemonState:
    """Sweep on the trigger until `stop` is set; the first sweep runs at start.

    `may_list` ([leader]): a copy that does not hold the lease lists nothing.
    """
    state = state or DaemonState()
    notifier = notifier or SystemdNotifier({})
    every = notifier.watchdog_interval
    state.schedule.start(
        _Listing(new_sweep, state, stop, clock, may_list),
        trigger,
        misfire_grace,
        clock=clock,
        stopping=stop.is_set,
        watchdog=None if every is None else (every, notifier.watchdog),
    )
    state.running = True
    notifier.ready()
    log.info(
        "daemon.started", version=__version__, next_sweep="now", systemd_notify=notifier.enabled
    )
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        await _wind_down(state, stop)
    return state


async def _wind_down(state: DaemonState, stop: asyncio.Event) -> None:
    """No new listing; writes in flight get their grace; the last sweep is counted."""
    state.running = False
    state.schedule.pause()
    if state.current is not None and not state.current.done():
        await drain(state.current, stop, SHUTDOWN_GRACE_SECONDS)
    job = state.schedule.job
    if job is not None and not job.done():
        # Its sweep has ended: let it count it (listeners, readiness) before we stop.
        await asyncio.wait({job}, timeout=1)
    state.schedule.shutdown()
    last = state.last_report.summary() if state.last_report else None
    log.info("daemon.stopped", sweeps=state.sweeps, last_sweep=last)
