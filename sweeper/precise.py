"""Precise marking, the moving part: between two listings, fire each armed timer
at its step's due moment and settle the step exactly as a sweep does.

A listing in precise mode (`Sweeper.run(report, interval)`) reads every RUNNING
step that can cross its limit before the next listing, writes those already due
and arms a timer for the others (`sweeper.timers`, pure). This module runs the
timers until the interval ends: one loop, one heap, sleeping until the earliest
due moment; each timer that fires re-reads its step and either writes it (through
the sweep's own write path: same checks, events and accounting), re-arms it when
its sign of life moved, or drops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sweeper.errors import LeaseLost, SkipReason, as_error
from sweeper.guards import blast_radius
from sweeper.model import Step
from sweeper.policy import Decision, recheck
from sweeper.report import StepEntry
from sweeper.timers import Next, Timer, TimerHeap, due_at, rearm

if TYPE_CHECKING:
    from sweeper.sweep import Sweeper, _Run


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


async def run_timers(run: _Run, interval: Interval) -> None:
    """Fire timers as they come due until the interval ends, a guard fires or a stop."""
    sweeper, heap = run.s, interval.timers
    slots = run.slots  # shared with the listing's own writes: max_concurrency in all
    firing: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        firing.discard(task)
        slots.release()
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]

    try:
        while run.halted is None and not sweeper.stop.is_set() and not failures:
            if not interval.holding():
                run.halt(LeaseLost("the lease was lost: the timers are dropped"))
                break
            interval.wake.clear()
            interval.refill()
            due = heap.next_due()  # on the platform's clock, as step timestamps are
            if sweeper.clock() >= interval.until:
                break  # the next listing is due: it takes over whatever is left
            if due is not None and due < sweeper.on_platform(interval.until):
                wait = (due - sweeper.platform_now()).total_seconds()
                if wait > 0:
                    left = (interval.until - sweeper.clock()).total_seconds()
                    await sweeper.nap(min(wait, left), interval.wake)
                    continue
                for timer in heap.pop_due(sweeper.platform_now()):
                    await slots.acquire()
                    task = asyncio.ensure_future(fire(run, interval, timer))
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


async def fire(run: _Run, interval: Interval, timer: Timer) -> None:
    """A timer came due: read the step again, then write, re-arm or drop it."""
    sweeper, cfg = run.s, run.cfg
    if run.halted is not None or sweeper.stop.is_set():
        return
    # Outage grace: an outage since the timer was armed moves its step's due moment.
    due = due_at(timer.step, cfg.rules, sweeper.outages())
    if due is None:
        return
    until = sweeper.on_platform(interval.until)
    if due > sweeper.platform_now():
        arm(interval, timer.step, due, timer.sweep_id, until)
        return
    # A write never starts later than sweep.deadline after its timer fired, nor after
    # the interval ends (the next listing reads the step again and takes it over).
    deadline_at = min(
        sweeper.monotonic() + cfg.deadline.total_seconds(), interval_end(sweeper, interval)
    )
    step = timer.step
    try:
        current = await run.client.get_step(
            step.step_id,
            step.organization_id,
            then_write=not cfg.dry_run,
            give_up_at=deadline_at,
        )
    except Exception as exc:
        unchecked(run, step, exc)
        return
    now, until = sweeper.platform_now(), sweeper.on_platform(interval.until)
    verdict = rearm(step, current, now, until, cfg.rules, sweeper.outages())
    if verdict.next is Next.REARM and verdict.step is not None and verdict.due is not None:
        if verdict.due > now:
            arm(interval, verdict.step, verdict.due, timer.sweep_id, until)
            return
        # It moved, yet is already past its new moment (a backdated sign of life):
        # judge this read as the new baseline now, rather than read it again and again.
        step = verdict.step
        verdict = rearm(step, step, now, until, cfg.rules, sweeper.outages())
        if verdict.next is Next.REARM and verdict.step is not None and verdict.due is not None:
            arm(interval, verdict.step, verdict.due, timer.sweep_id, until)
            return
    if verdict.next is Next.DROP:
        # Finished, gone or alive at its due moment: it never was a zombie.
        run.log.debug(
            "timer.dropped",
            step_id=step.step_id,
            organization_id=step.organization_id,
            reason=(verdict.reason or SkipReason.ALIVE).value,
        )
        return
    entry: StepEntry = run.new_entry(step.step_id, step.organization_id)
    run.confirmed += 1
    refused = blast_radius(run.confirmed, cfg.max_steps, "in this listing interval")
    if refused is not None:
        # More zombies in this interval than sweep.max_steps: no more writes in it;
        # the next listing sees them all and refuses them all if they are still there.
        run.halt(refused)
        return  # left pending: refused when the interval ends

    def judge(again: Step | None) -> Decision | SkipReason:
        return recheck(step, again, sweeper.platform_now(), cfg.rules, sweeper.outages())

    await run.handle(judge, entry, verdict.decision, deadline_at, reserved=True)
    # Its lag is precise marking's detection lag: it crossed its limit while a timer
    # watched it. A backlog written by a listing (at start, after a timer's re-read
    # failed, by a periodic sweep) is not: the histogram means one thing.
    entry.watched = True


def unchecked(run: _Run, step: Step, exc: Exception) -> None:
    """A timer's re-read gave no answer: nothing showed the step stale, so it is no
    zombie (no entry, no step.failed); the next listing reads it again. What stops
    every write (a refused token, a guard, a lost lease, the unforeseen) still stops them."""
    error = as_error(exc)
    if error.halts:
        run.halt(error)
    elif error.reason is not SkipReason.SHUTDOWN:  # stopping: the next listing takes it over
        run.counts["unchecked"] += 1
        run.log.debug(  # counted in sweep.finished; hundreds at once on a slow platform
            "timer.unchecked",
            step_id=step.step_id,
            organization_id=step.organization_id,
            error=str(exc),
        )


def interval_end(sweeper: Sweeper, interval: Interval) -> float:
    """The interval's end on the monotonic clock the deadlines use."""
    return sweeper.monotonic() + (interval.until - sweeper.clock()).total_seconds()


def arm(interval: Interval, step: Step, due: datetime, sweep_id: str, until: datetime) -> None:
    """Arm a timer due (on the platform's clock) before `until` (the interval's end, there)."""
    if due < until and interval.timers.arm(step, due, sweep_id):
        interval.wake.set()
