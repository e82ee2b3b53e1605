"""The daemon: APScheduler 3 wiring, the stop signal, and draining writes in flight."""

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
    #: The APScheduler scheduler while the daemon runs (a reload reschedules its job).
    scheduler: Any = None
    #: The job running the latest sweep (it counts the sweep when the sweep ends).
    job: asyncio.Task[Any] | None = None
    #: A listing is wanted at once (`list_now`), and none has started since.
    relist: bool = False
    listeners: list[Callable[[SweepReport], None]] = field(default_factory=list)


def list_now(state: DaemonState) -> None:
    """List at once: now when no job runs, else as soon as the running one has ended.

    One listing at a time: the scheduler skips a run while the job still runs (a sweep
    finishing its writes after the lease was lost, then taken back), and would list
    only an interval later. So the wish is kept (`relist`) and each job's end, once the
    scheduler has counted it ended, schedules the listing if no job has served it.
    """
    state.relist = True
    if state.scheduler is not None and (state.job is None or state.job.done()):
        state.scheduler.modify_job("sweep", next_run_time=datetime.now(UTC))


async def run_daemon(
    new_sweep: Callable[[], tuple[SweepReport, Awaitable[SweepReport]]],
    *,
    stop: asyncio.Event,
    trigger: Any,
    misfire_grace: timedelta,
    state: DaemonState | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    notifier: SystemdNotifier | None = None,
    may_list: Callable[[], bool] = lambda: True,
) -> DaemonState:
    """Sweep on the trigger until `stop` is set; the first sweep runs at start.

    `may_list` ([leader]): a copy that does not hold the lease lists nothing.
    """
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    state = state or DaemonState()
    notifier = notifier or SystemdNotifier({})

    def after_job(_: object) -> None:
        # A done-callback of the job's task, added after the scheduler's own: the
        # scheduler has counted the job ended, so a run now is not skipped.
        if state.relist and not stop.is_set() and state.scheduler is not None:
            state.scheduler.modify_job("sweep", next_run_time=clock())

    async def sweep_job() -> None:
        task = asyncio.current_task()
        assert task is not None
        state.job = task
        task.add_done_callback(after_job)
        if stop.is_set() or not may_list():
            return
        state.relist = False  # this listing is the one wished for
        report, work = new_sweep()
        # Read after new_sweep: a reload it applied may have rescheduled the job, and the
        # old next listing time would make a lengthened interval look overrun.
        job = state.scheduler.get_job("sweep") if state.scheduler is not None else None
        next_listing = job.next_run_time if job is not None else None
        state.last_report = report
        state.current = asyncio.ensure_future(work)
        try:
            # Shielded: the scheduler's shutdown must not cancel writes in flight.
            await asyncio.shield(state.current)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # one failed sweep never kills the daemon
            crashed = Crashed(exc)
            report.end(crashed)
            log.error("sweep.aborted", sweep_id=report.sweep_id, **crashed.log_fields())
        finally:
            state.sweeps += 1
            if report.succeeded:
                state.last_success_at = clock()
                state.blocked_by = None
            elif report.result in NOT_READY_AT_ONCE:
                state.blocked_by = report.result
            for listener in state.listeners:
                listener(report)
            if next_listing is not None and not stop.is_set() and clock() >= next_listing:
                # This sweep ran past the next listing's time, which the scheduler then
                # skipped (one at a time): list now rather than an interval later, once
                # this job has ended (after_job).
                log.info("sweep.overran", next_listing=next_listing.isoformat())
                state.relist = True

    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        sweep_job,
        trigger,
        id="sweep",
        name="sweep",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(misfire_grace.total_seconds())),
        next_run_time=clock(),
    )
    if notifier.watchdog_interval is not None:

        async def watchdog() -> None:
            # Runs on the scheduler's own loop: a wedged loop stops the pings.
            notifier.watchdog()

        scheduler.add_job(
            watchdog,
            IntervalTrigger(seconds=notifier.watchdog_interval.total_seconds(), timezone=UTC),
            id="watchdog",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
    scheduler.start()
    state.scheduler = scheduler
    state.running = True
    notifier.ready()
    log.info(
        "daemon.started", version=__version__, next_sweep="now", systemd_notify=notifier.enabled
    )
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        state.running = False
        scheduler.pause()
        if state.current is not None and not state.current.done():
            await drain(state.current, stop, SHUTDOWN_GRACE_SECONDS)
        if state.job is not None and not state.job.done():
            # Its sweep has ended: let it count it (listeners, readiness) before we stop.
            await asyncio.wait({state.job}, timeout=1)
        scheduler.shutdown(wait=False)
        last = state.last_report.summary() if state.last_report else None
        log.info("daemon.stopped", sweeps=state.sweeps, last_sweep=last)
    return state
