"""Precise marking, the pure part: when each listed step crosses its limit, and the
heap of timers the daemon keeps between two listings.

No I/O, no clock, no asyncio: `now`, the rules and the outage windows are passed
in, so the daemon owns the waiting and this module owns the arithmetic.
"""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sweeper.errors import SkipReason
from sweeper.model import Step, StepStatus
from sweeper.outages import NO_OUTAGES, OutageWindows
from sweeper.policy import Decision, Rule, Rules, recheck

#: The resolution of datetime: a step is due one tick after its idle time reaches its limit,
#: because `policy.decide` marks only when idle time is strictly more than the limit.
TICK = timedelta(microseconds=1)
#: The latest moment a timer can hold; anything later is never due in this process's life.
LATEST = datetime.max.replace(tzinfo=UTC)
EARLIEST = datetime.min.replace(tzinfo=UTC)

Key = tuple[str, str]


def due_at(step: Step, rules: Rules, outages: OutageWindows = NO_OUTAGES) -> datetime | None:
    """The first moment at which `policy.decide` calls this step stale or a runaway.

    None for a step that is not RUNNING, one whose rule never marks, or one whose
    due moment lies past the end of the calendar (hostile timestamps).
    """
    if step.status != StepStatus.RUNNING:
        return None
    rule = rules.rule_for(step)
    moments = [
        moment
        for moment in (_stale_due(step, rule.stale_after, outages), _runaway_due(step, rule))
        if moment is not None
    ]
    return min(moments, default=None)


def _stale_due(step: Step, limit: timedelta | None, outages: OutageWindows) -> datetime | None:
    if limit is None:
        return None
    _, last_seen = step.last_sign_of_life
    try:
        return _cross(last_seen, limit, outages) + TICK
    except OverflowError:
        # Past datetime.max: no timer can wait that long, and the next listing sees it again.
        return None


def _runaway_due(step: Step, rule: Rule) -> datetime | None:
    """startedAt + max_runtime, one tick on: no outage discount, no sign of life moves it."""
    if rule.max_runtime is None:
        return None
    try:
        return step.started_at + rule.max_runtime + TICK
    except OverflowError:
        return None


def half_silent(
    step: Step, now: datetime, rules: Rules, outages: OutageWindows = NO_OUTAGES
) -> bool:
    """Has this step been silent past half its limit (outage time not counted)? The
    precise-mode guard counts such steps at the listing as zombies to come."""
    limit = rules.rule_for(step).stale_after
    if step.status != StepStatus.RUNNING or limit is None:
        return False
    _, last_seen = step.last_sign_of_life
    return now - last_seen - outages.overlap(last_seen, now) > limit / 2


def _cross(last_seen: datetime, limit: timedelta, outages: OutageWindows) -> datetime:
    """The last moment at which idle time is still exactly `limit` (decide still spares).

    Idle time grows one for one outside outage windows and stands still inside them
    (see `OutageWindows.overlap`), so walk the windows after `last_seen`, spending the
    limit on the gaps between them. The discount depends on the due moment itself, and
    this walk is the fixed point of `t = last_seen + limit + overlap(last_seen, t)`,
    taken at its latest: when idle time reaches the limit at a window's start, it stays
    there until the window's end, and decide spares the step all that time.
    """
    remaining = limit
    cursor = last_seen
    # Windows are sorted and disjoint, so their ends are sorted too: skip those before.
    first = bisect_right(outages.ends, last_seen)
    for start, end in zip(outages.starts[first:], outages.ends[first:], strict=True):
        gap = max(start, last_seen) - cursor
        if gap > remaining:
            break
        remaining -= gap
        cursor = end
    return cursor + remaining


def listing_horizon(
    now: datetime, interval: timedelta, rules: Rules, jitter: timedelta = timedelta(0)
) -> datetime:
    """The `startedBefore` of a listing that must include every RUNNING step that can
    cross its limit before the next listing.

    A step is due no earlier than startedAt + the smallest limit (a later sign of life
    and outages only delay it), and the next listing comes at most `interval + jitter`
    from now: pass the largest jitter the schedule may add, or steps due in that extra
    time are marked at the listing after, one interval late. Rounded up to the next
    millisecond because the wire format carries milliseconds and the filter is strict
    (startedAt < startedBefore); clamped to the calendar.
    """
    smallest = rules.smallest_limit  # a runaway is due no earlier than startedAt + max_runtime
    try:
        # One sum of durations, then one step on the calendar: `now + interval` alone
        # may pass datetime.max where the horizon does not.
        horizon = now + (interval + jitter - smallest)
    except OverflowError:
        horizon = LATEST if interval + jitter > smallest else EARLIEST
    extra = horizon.microsecond % 1000
    if extra:
        try:
            horizon += timedelta(microseconds=1000 - extra)
        except OverflowError:
            return LATEST
    return horizon


@dataclass(frozen=True, slots=True)
class Timer:
    """One armed timer: the step as listed, when it is due, and the listing that armed it."""

    step: Step
    due: datetime
    sweep_id: str

    @property
    def key(self) -> Key:
        return self.step.key


class TimerHeap:
    """Armed timers keyed by step identity, earliest due first; at most `max_steps` live.

    Re-arming or disarming leaves the old heap entry behind (lazy deletion): the
    `_live` map says which entry is current, and stale ones are dropped when they
    reach the top or when they outnumber the live ones.

    Capacity: `arm` returns False and changes nothing when a new key would exceed
    `max_steps` (re-arming a key already armed is always accepted); the daemon then
    keeps the step waiting for a place (`precise.Interval.waiting`).
    """

    def __init__(self, max_steps: int) -> None:
        if max_steps < 0:
            raise ValueError("max_steps must be 0 or more")
        self.max_steps = max_steps
        self._heap: list[tuple[datetime, int, Timer]] = []
        self._live: dict[Key, Timer] = {}
        # Ties on the due moment pop in arming order; the counter also keeps heapq
        # from ever comparing two Timers.
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def get(self, key: Key) -> Timer | None:
        return self._live.get(key)

    def arm(self, step: Step, due: datetime, sweep_id: str) -> bool:
        """Arm (or move) the timer of this step; False when the heap is full."""
        if step.key not in self._live and len(self._live) >= self.max_steps:
            return False
        timer = Timer(step, due, sweep_id)
        self._live[step.key] = timer
        heapq.heappush(self._heap, (due, next(self._order), timer))
        self._compact()
        return True

    def disarm(self, key: Key) -> Timer | None:
        """Forget the timer of this step; the one removed, or None if none was armed."""
        return self._live.pop(key, None)

    def pop_due(self, now: datetime) -> list[Timer]:
        """Remove and return every live timer due at or before `now`, earliest first."""
        fired: list[Timer] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if self._live.get(timer.key) is timer:
                del self._live[timer.key]
                fired.append(timer)
        return fired

    def next_due(self) -> datetime | None:
        """When the earliest live timer is due: how long the daemon may sleep."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        """Forget everything: each listing rebuilds the timers from scratch."""
        self._heap.clear()
        self._live.clear()

    def _drop_stale_top(self) -> None:
        while self._heap and self._live.get(self._heap[0][2].key) is not self._heap[0][2]:
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        # Bound memory under heavy re-arming: stale entries never exceed the live ones
        # by more than a constant, so the heap stays O(max_steps).
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [e for e in self._heap if self._live.get(e[2].key) is e[2]]
            heapq.heapify(self._heap)


class Next(StrEnum):
    """What to do with a step after its timer fired and it was read again."""

    WRITE = "write"
    REARM = "rearm"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Rearm:
    """The verdict after a timer fired: write `decision`, re-arm at `due` with `step` as
    the new baseline, or drop for `reason` (logged as `step.skipped`)."""

    next: Next
    decision: Decision | None = None
    step: Step | None = None
    due: datetime | None = None
    reason: SkipReason | None = None


def rearm(
    listed_step: Step,
    current_step: Step | None,
    now: datetime,
    next_listing_at: datetime,
    rules: Rules,
    outages: OutageWindows = NO_OUTAGES,
) -> Rearm:
    """Judge a fired timer's step from a fresh read, as a sweep does before its write.

    The write decision is `policy.recheck` itself, so a timer writes exactly when a
    sweep would. A sign of life that moved never writes: the worker was alive after
    the listing, so the step gets a new due moment from its new sign of life.
    """
    verdict = recheck(listed_step, current_step, now, rules, outages)
    if isinstance(verdict, Decision):
        return Rearm(Next.WRITE, decision=verdict)
    if verdict is not SkipReason.ALIVE or current_step is None:
        return Rearm(Next.DROP, reason=verdict)
    # Alive: it moved, or is not stale yet (an outage opened since it was armed, or the
    # timer fired early). Either way its own due moment says when to look again.
    due = due_at(current_step, rules, outages)
    if due is None or due >= next_listing_at:
        return Rearm(Next.DROP, reason=SkipReason.ALIVE)
    if current_step.started_at != listed_step.started_at and due <= now:
        # It started again yet is already past its new moment: a sweep's re-read leaves
        # such a step alone, and so does a timer; the next listing judges it afresh.
        return Rearm(Next.DROP, reason=SkipReason.ALIVE)
    # A moved step may already be past its new due moment (a backdated sign of life):
    # it fires at once, is read again and, unmoved, is judged like any other.
    return Rearm(Next.REARM, step=current_step, due=due)
