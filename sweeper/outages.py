"""Outage grace: remember when the platform was away, and how long of it to forgive.

While the platform is down, workers cannot record heartbeats either, so their
steps look idle without being dead; the decision does not count that time toward
a step's idle time (see policy.decide).

An outage is the platform being away, not one failed request: failures that
end within OUTAGE_MIN of the first one (a blip that workers retry their
heartbeats through) discount nothing. A longer run of failures opens a window
at the last successful contact before it (the outage may have begun any time
after) and closes it at the first success after it; erring that way only ever
delays a mark.

Windows are kept sorted, merged and bounded, with prefix sums, so the discount
for one step costs two binary searches however many windows there are.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

Window = tuple[datetime, datetime]

#: Answers that mean "the platform was not there", as the client reports them.
UNREACHABLE = frozenset({"error", "timeout", "408", "429", "500", "502", "503", "504"})
#: Failures shorter than this are a blip, not an outage (see the README, "Outage grace").
OUTAGE_MIN = timedelta(seconds=30)
#: At most this many windows are kept; beyond it the two closest are merged.
MAX_WINDOWS = 1024


@dataclass(frozen=True, slots=True)
class OutageWindows:
    """Sorted, disjoint windows with the outage time before each one's start (pure)."""

    starts: tuple[datetime, ...] = ()
    ends: tuple[datetime, ...] = ()
    before: tuple[timedelta, ...] = field(default=())

    @classmethod
    def of(cls, windows: Iterable[Window]) -> OutageWindows:
        merged: list[list[datetime]] = []
        for start, end in sorted(w for w in windows if w[1] > w[0]):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        before: list[timedelta] = []
        total = timedelta(0)
        for start, end in merged:
            before.append(total)
            total += end - start
        return cls(tuple(w[0] for w in merged), tuple(w[1] for w in merged), tuple(before))

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def covered(self, moment: datetime) -> timedelta:
        """Total outage time before `moment`."""
        i = bisect_right(self.starts, moment)
        if i == 0:
            return timedelta(0)
        start, end = self.starts[i - 1], self.ends[i - 1]
        return self.before[i - 1] + min(end, moment) - start

    def overlap(self, since: datetime, now: datetime) -> timedelta:
        """How much of (since, now] fell inside an outage."""
        if not self.starts or now <= since:
            return timedelta(0)
        return self.covered(now) - self.covered(since)


NO_OUTAGES = OutageWindows()


class OutageLog:
    """Feeds on every request's result (the client's observer hook); keeps the windows."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        keep: timedelta = timedelta(days=7),
        minimum: timedelta = OUTAGE_MIN,
        max_windows: int = MAX_WINDOWS,
    ) -> None:
        self._clock = clock
        self._keep = keep
        self._minimum = minimum
        self._max_windows = max_windows
        self._last_contact: datetime | None = None
        self._failing_since: datetime | None = None
        self._closed: list[Window] = []
        self._snapshot = NO_OUTAGES

    def observe(self, method: str, status: str) -> None:
        now = self._clock()
        if status in UNREACHABLE:
            if self._failing_since is None:
                self._failing_since = now
            return
        if self._failing_since is not None:
            if now - self._failing_since >= self._minimum:
                self._close((self._last_contact or self._failing_since, now))
            self._failing_since = None
        self._last_contact = now

    def _close(self, window: Window) -> None:
        horizon = window[1] - self._keep
        windows = [w for w in self._closed if w[1] >= horizon]
        windows.append(window)
        snapshot = OutageWindows.of(windows)
        while len(snapshot) > self._max_windows:
            snapshot = _merge_closest(snapshot)
        self._closed = list(zip(snapshot.starts, snapshot.ends, strict=True))
        self._snapshot = snapshot

    def windows(self) -> OutageWindows:
        """Closed windows, plus the open one (until now) once it has lasted OUTAGE_MIN."""
        if self._failing_since is None:
            return self._snapshot
        now = self._clock()
        if now - self._failing_since < self._minimum:
            return self._snapshot
        return OutageWindows.of([*self._closed, (self._last_contact or self._failing_since, now)])


def _merge_closest(windows: OutageWindows) -> OutageWindows:
    """One window fewer: the two separated by the shortest gap become one (discounts more)."""
    gaps = [windows.starts[i + 1] - windows.ends[i] for i in range(len(windows) - 1)]
    i = gaps.index(min(gaps))
    pairs = list(zip(windows.starts, windows.ends, strict=True))
    pairs[i : i + 2] = [(pairs[i][0], pairs[i + 1][1])]
    return OutageWindows.of(pairs)
