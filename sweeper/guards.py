"""The guards that can refuse a sweep or stop its writes: blast radius, clock skew, deadline.

Pure checks on values passed in; the one piece of state is ClockCheck's
warn-once flag for a missing Date header.
"""

from __future__ import annotations

import email.utils
import functools
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from sweeper.errors import ClockSkewRefused, Guard, GuardRefused, InvalidAnswer, SkipReason

#: The Date header has whole seconds: its truncation is not skew.
DATE_RESOLUTION = timedelta(seconds=1)
#: How fast an old Date bound loses precision (dimensionless: seconds per second), as
#: NTP widens an old sample's error: twice the 0.1 % the tests drift by, four times
#: NTP's 500 ppm tolerance for a sane clock. A platform clock drifting slower than this
#: can never put our estimate ahead of it; the cost is that idle time may be counted
#: this much slow (a zombie marked up to 0.2 % of its limit later).
DRIFT = 2e-3

log = structlog.get_logger("sweeper.guards")


def blast_radius(zombies: int, max_steps: int, where: str = "found") -> GuardRefused | None:
    """More zombies than max_steps means something else is wrong: write none (or no
    more, when a precise-marking timer confirms one too many in its interval)."""
    if zombies <= max_steps:
        return None
    return GuardRefused(
        Guard.MAX_STEPS,
        f"{zombies} zombies {where}, more than sweep.max_steps",
        zombies=zombies,
        max_steps=max_steps,
    )


def check_blast_radius(zombies: int, max_steps: int) -> None:
    """Raise what `blast_radius` finds."""
    refused = blast_radius(zombies, max_steps)
    if refused is not None:
        raise refused


def why_not_start(stopping: bool, now: float, deadline_at: float) -> SkipReason | None:
    """Why a write may not start now: a stop was requested, or the deadline passed.

    (A guard that fired is the sweep's own state: it checks that beside this.)
    """
    if stopping:
        return SkipReason.SHUTDOWN
    if now >= deadline_at:
        return SkipReason.DEADLINE
    return None


@functools.lru_cache(maxsize=8)
def http_date(text: str) -> datetime | None:
    """An HTTP Date header as an aware time; None when it is not one. Answers within
    the same second carry the same text: each is parsed once (a hot path)."""
    try:
        theirs = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return theirs if theirs.tzinfo is not None else None


class ClockCheck:
    """Compares every answer's Date header with our clock, ahead or behind."""

    def __init__(
        self,
        max_skew: timedelta,
        clock: Callable[[], datetime],
        *,
        resolution: timedelta = DATE_RESOLUTION,
        drift: float = DRIFT,
    ) -> None:
        self.max_skew = max_skew
        self.clock = clock
        self.resolution = resolution
        self.drift = drift
        self.warned_missing = False
        #: The best bound of the offset and when (our clock) it was seen; None: none yet.
        self._best: tuple[timedelta, datetime] | None = None

    def begin_sweep(self) -> None:
        """Each sweep warns afresh about a missing Date header."""
        self.warned_missing = False

    def check(self, date_header: str | None) -> ClockSkewRefused | InvalidAnswer | None:
        """What is wrong with this answer's Date, as an error to raise; None if nothing.

        Returned rather than raised: the caller decides, since an applied write
        must still be reported as applied.
        """
        if not date_header:
            if not self.warned_missing:
                self.warned_missing = True
                log.warning("platform.date_missing", detail="clock skew cannot be checked")
            return None
        theirs = http_date(date_header)
        if theirs is None:
            return InvalidAnswer("the platform's Date header is not an HTTP date")
        # Two aware datetimes (years 1 to 9999) never differ by more than a timedelta holds.
        skew = theirs - self.clock()
        if abs(skew) > self.max_skew + DATE_RESOLUTION:
            return ClockSkewRefused(skew.total_seconds(), self.max_skew.total_seconds())
        self.learn_offset(skew)
        return None

    @property
    def offset(self) -> timedelta:
        """The platform's clock minus ours, at most: its Date is whole seconds, truncated,
        and was stamped before we read it. Step timestamps are judged against our clock
        plus this, so a skew the check accepts never adds to idle time.

        The best bound seen, less `drift` times its age: the platform's clock may run
        slower than ours, and an old bound would then run ahead of it (NTP widens an
        old sample's error the same way)."""
        if self._best is None:
            return timedelta(0)
        bound, seen_at = self._best
        return bound - max(self.clock() - seen_at, timedelta(0)) * self.drift

    def carry(self, other: ClockCheck) -> None:
        """Know what `other` knows of the platform's clock (the same platform, reloaded)."""
        self._best = other._best

    def learn_offset(self, bound: timedelta) -> None:
        """Keep the tightest lower bound of the offset: each answer gives one (its Date
        less our clock). The highest (aged) is kept, so that our idea of the platform's
        clock moves on with ours instead of standing still within a Date's second; one
        lower by more than the Date's resolution means the platform's clock went back."""
        offset = self.offset
        if self._best is None or bound > offset or bound < offset - self.resolution:
            self._best = (bound, self.clock())

    def observe(self, date_header: str | None) -> None:
        """Raise what `check` finds."""
        problem = self.check(date_header)
        if problem is not None:
            raise problem
