"""Precise marking, the moving part: between two listings, fire each armed timer
at its step's due moment and settle the step exactly as a sweep does.

A listing in precise mode (`Sweeper.run(report, interval)`) reads every RUNNING
step that can cross its limit before the next listing, writes those already due
and arms a timer for the others (`sweeper.timers`, pure). This module owns that
part of the sweep (`Watch`: the steps due soon, the zombies confirmed) and runs
the timers until the interval ends: one loop, one heap, sleeping until the
earliest due moment; each timer that fires re-reads its step and either writes
it (through the sweep's writer: same checks, events and accounting), re-arms it
when its sign of life moved, or drops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sweeper.errors import LeaseLost, SkipReason, as_error
from sweeper.guards import blast_radius, check_blast_radius
from sweeper.model import Step
from sweeper.outages import OutageWindows
from sweeper.policy import Decision, Rules, recheck
from sweeper.report import StepEntry
from sweeper.timers import Next, Timer, TimerHeap, due_at, half_silent, listing_horizon, rearm
from sweeper.writer import WriteConfig, Writer

#: Sleep for so many seconds, or less if the event is set (or a stop comes).
Nap = Callable[[float, asyncio.Event], Awaitable[None]]


class WatchConfig(WriteConfig, Protocol):
    """What precise marking reads of the sweep's configuration (sweep.SweepConfig)."""

    @property
    def rules(self) -> Rules: ...
    @property
    def max_steps(self) -> int: ...


@dataclass
class Interval:
    """One listing interval of the daemon in precise mode."""

    #: When this interval ends: shortly before the next listing.
    until: datetime
    timers: TimerHeap
    #: Called with the number of armed timers whenever it changes (a metrics gauge).
    on_armed: Callable[[int], None] = lambda _: None
    #: Set when a timer is re-armed or a guard fires, so that the loop looks again.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Steps due in the interval that found the heap full (at most sweep.max_steps
    #: timers), earliest first: armed as timers fire and free their places.
    waiting: list[Timer] = field(default_factory=list)
    #: [leader]: whether this copy still holds the lease; when not, timers are dropped.
    holding: Callable[[], bool] = lambda: True

    def refill(self) -> None:
        """Arm waiting steps while the heap has room, earliest first."""
        while self.waiting and len(self.timers) < self.timers.max_steps:
            timer = self.waiting.pop(0)
            self.timers.arm(timer.step, timer.due, timer.sweep_id)


class Watch:
    """Precise marking's part of one sweep: the steps the listing found due before the
    interval ends, and the zombies confirmed in it (at most sweep.max_steps)."""

    precise = True

    def __init__(
        self,
        interval: Interval,
        writer: Writer,
        cfg: WatchConfig,
        outages: Callable[[], OutageWindows],
        nap: Nap,
    ) -> None:
        self.interval = interval
        self.writer = writer
        self.ledger = writer.ledger
        self.clocks = writer.clocks
        self.cfg = cfg
        self.outages = outages
        self.nap = nap
        self.soon: list[Timer] = []  # steps due before the interval ends
        self.silent = 0  # listed steps silent past half their limit
        self.confirmed = 0  # zombies confirmed in this interval so far
        writer.ledger.on_halt = interval.wake.set  # the timer loop stops napping and ends

    @property
    def until(self) -> datetime:
        """The interval's end on the platform's clock, as step timestamps are."""
        return self.clocks.on_platform(self.interval.until)

    def horizon(self, now: datetime) -> datetime:
        """The listing's startedBefore: young steps due before the next listing too."""
        return listing_horizon(now, self.until - now, self.cfg.rules)

    def saw_alive(self, step: Step, now: datetime, outages: OutageWindows) -> None:
        """A listed step not stale yet: counted if half silent, a timer if due soon."""
        self.silent += half_silent(step, now, self.cfg.rules, outages)
        due = due_at(step, self.cfg.rules, outages)
        if due is not None and due < self.until:
            self.soon.append(Timer(step, due, self.ledger.sweep_id))

    def begin(self, zombies: int) -> None:
        """The listing ended with `zombies` due now: check the guard, arm the timers.

        The guard counts the zombies due in this listing interval: those due now, and
        those due later that have already been silent past half their limit
        (operations.md, "Precise marking"). A healthy step (silent less than that) is
        not counted: with a limit shorter than the interval every healthy step has a
        due moment in it, and counting them would refuse every listing of a large
        fleet. The zombies the timers then confirm are counted as they come, and no
        interval marks more than max_steps (`fire`).
        """
        interval = self.interval
        interval.timers.clear()
        check_blast_radius(zombies + self.silent, self.cfg.max_steps)
        self.confirmed = zombies
        for timer in sorted(self.soon, key=lambda t: t.due):
            if not interval.timers.arm(timer.step, timer.due, self.ledger.sweep_id):
                interval.waiting.append(timer)  # armed when a timer frees its place
        if interval.waiting:
            self.ledger.log.warning(
                "timers.full",
                armed=len(interval.timers),
                waiting=len(interval.waiting),
                max_steps=self.cfg.max_steps,
                detail="steps due later wait for a timer's place (at most sweep.max_steps)",
            )
        self.ledger.counts["armed"] = len(self.soon)
        interval.on_armed(len(interval.timers))

    async def run(self) -> None:
        await run_timers(self)


async def run_timers(watch: Watch) -> None:
    """Fire timers as they come due until the interval ends, a guard fires or a stop."""
    interval, writer, clocks = watch.interval, watch.writer, watch.clocks
    heap = interval.timers
    slots = writer.slots  # shared with the listing's own writes: max_concurrency in all
    firing: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        firing.discard(task)
        slots.release()
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    try:
        while not writer.halted and not writer.stop.is_set() and not failures:
            if not interval.holding():
                watch.ledger.halt(LeaseLost("the lease was lost: the timers are dropped"))
                break
            interval.wake.clear()
            interval.refill()
            due = heap.next_due()  # on the platform's clock, as step timestamps are
            if clocks.wall() >= interval.until:
                break  # the next listing is due: it takes over whatever is left
            if due is not None and due < watch.until:
                wait = (due - clocks.platform_now()).total_seconds()
                if wait > 0:
                    left = (interval.until - clocks.wall()).total_seconds()
                    await watch.nap(min(wait, left), interval.wake)
                    continue
                for timer in heap.pop_due(clocks.platform_now()):
                    await slots.acquire()
                    task = asyncio.ensure_future(fire(watch, timer))
                    firing.add(task)
                    task.add_done_callback(done)
                interval.on_armed(len(heap))
            elif firing:
                # A timer firing now may re-arm its step: wait for that, or for it to end.
                woken = asyncio.ensure_future(interval.wake.wait())
                try:
                    await asyncio.wait({*firing, woken}, return_when="FIRST_COMPLETED")
                finally:
                    woken.cancel()
            else:
                break
    finally:
        # Writes in flight finish (a stop drains them); the timers not fired are
        # simply not zombies yet: the next listing rebuilds them all.
        if firing:
            await asyncio.wait(set(firing))
        heap.clear()
        interval.waiting.clear()
        interval.on_armed(0)
    if failures:
        raise failures[0]


async def fire(watch: Watch, timer: Timer) -> None:
    """A timer came due: read the step again, then write, re-arm or drop it."""
    writer, clocks, cfg, interval = watch.writer, watch.clocks, watch.cfg, watch.interval
    if writer.halted or writer.stop.is_set():
        return
    # Outage grace: an outage since the timer was armed moves its step's due moment.
    due = due_at(timer.step, cfg.rules, watch.outages())
    if due is None:
        return
    until = watch.until
    if due > clocks.platform_now():
        arm(interval, timer.step, due, timer.sweep_id, until)
        return
    # A write never starts later than sweep.deadline after its timer fired, nor after
    # the interval ends (the next listing reads the step again and takes it over).
    deadline_at = min(clocks.monotonic() + cfg.deadline.total_seconds(), interval_end(watch))
    step = timer.step
    try:
        current = await writer.client.get_step(
            step.step_id,
            step.organization_id,
            then_write=not cfg.dry_run,
            give_up_at=deadline_at,
        )
    except Exception as exc:
        unchecked(watch, step, exc)
        return
    now, until = clocks.platform_now(), watch.until
    verdict = rearm(step, current, now, until, cfg.rules, watch.outages())
    if verdict.next is Next.REARM and verdict.step is not None and verdict.due is not None:
        if verdict.due > now:
            arm(interval, verdict.step, verdict.due, timer.sweep_id, until)
            return
        # It moved, yet is already past its new moment (a backdated sign of life):
        # judge this read as the new baseline now, rather than read it again and again.
        step = verdict.step
        verdict = rearm(step, step, now, until, cfg.rules, watch.outages())
        if verdict.next is Next.REARM and verdict.step is not None and verdict.due is not None:
            arm(interval, verdict.step, verdict.due, timer.sweep_id, until)
            return
    if verdict.next is Next.DROP:
        # Finished, gone or alive at its due moment: it never was a zombie.
        watch.ledger.log.debug(
            "timer.dropped",
            step_id=step.step_id,
            organization_id=step.organization_id,
            reason=(verdict.reason or SkipReason.ALIVE).value,
        )
        return
    entry: StepEntry = watch.ledger.new_entry(step.step_id, step.organization_id)
    watch.confirmed += 1
    refused = blast_radius(watch.confirmed, cfg.max_steps, "in this listing interval")
    if refused is not None:
        # More zombies in this interval than sweep.max_steps: no more writes in it;
        # the next listing sees them all and refuses them all if they are still there.
        watch.ledger.halt(refused)
        return  # left pending: refused when the interval ends

    def judge(again: Step | None) -> Decision | SkipReason:
        return recheck(step, again, clocks.platform_now(), cfg.rules, watch.outages())

    await writer.write(judge, entry, verdict.decision, deadline_at, reserved=True)
    # Its lag is precise marking's detection lag: it crossed its limit while a timer
    # watched it. A backlog written by a listing (at start, after a timer's re-read
    # failed, by a periodic sweep) is not: the histogram means one thing.
    entry.watched = True


def unchecked(watch: Watch, step: Step, exc: Exception) -> None:
    """A timer's re-read gave no answer: nothing showed the step stale, so it is no
    zombie (no entry, no step.failed); the next listing reads it again. What stops
    every write (a refused token, a guard, a lost lease, the unforeseen) still stops them."""
    error = as_error(exc)
    if error.halts:
        watch.ledger.halt(error)
    elif error.reason is not SkipReason.SHUTDOWN:  # stopping: the next listing takes it over
        watch.ledger.counts["unchecked"] += 1
        watch.ledger.log.debug(  # counted in sweep.finished; hundreds at once on a slow platform
            "timer.unchecked",
            step_id=step.step_id,
            organization_id=step.organization_id,
            error=str(exc),
        )


def interval_end(watch: Watch) -> float:
    """The interval's end on the monotonic clock the deadlines use."""
    clocks = watch.clocks
    return clocks.monotonic() + (watch.interval.until - clocks.wall()).total_seconds()


def arm(interval: Interval, step: Step, due: datetime, sweep_id: str, until: datetime) -> None:
    """Arm a timer due (on the platform's clock) before `until` (the interval's end, there)."""
    if due < until and interval.timers.arm(step, due, sweep_id):
        interval.wake.set()
