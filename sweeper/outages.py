"""Outage grace: remember when the platform was away, or unwatched, and forgive that time.

While the platform is down, workers cannot record heartbeats either, so their
steps look idle without being dead; the decision does not count that time toward
a step's idle time (see policy.decide).

Everything is relative to the limits in force (operations.md, "Outage grace"):
no absolute duration says what an outage is. The daemon's requests are samples
of the platform: each success says it was up at that moment, each failure that
it was away. Two kinds of time are forgiven:

- a run of failures with no success between them, from its first failure to its
  last: a single failed request between successes forgives nothing;
- time the daemon did not watch: a silence between two samples longer than
  `gap` (an eighth of the smallest limit), and the time before the first answer
  (an outage may have begun before the daemon started; nothing says it did not)
  but its last half limit (see `_head_start`).

The daemon keeps silences shorter than `gap` by probing when it has been quiet
for half of it (`probe_due`), so a real outage is seen within `gap` of its start
and its end, and at most 2 * gap = limit / 4 of it goes unforgiven: a worker that
beats every limit / 6 and retries within limit / 2 stays within its limit.

Windows are kept sorted, merged and bounded, with prefix sums, so the discount
for one step costs two binary searches however many windows there are.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sweeper.answers import TRANSIENT_STATUSES

Window = tuple[datetime, datetime]

#: Answers that mean "the platform was not there", as the client reports them: no
#: answer at all, or one of the statuses worth trying again.
UNREACHABLE = frozenset({"error", "timeout", *(str(s) for s in TRANSIENT_STATUSES)})
#: At most this many windows are kept; beyond it the two closest are merged.
MAX_WINDOWS = 1024
#: The longest silence between two samples that still counts as watching, as a
#: fraction of the smallest limit; the daemon probes after half of it.
GAP_FRACTION = 8
#: Before the first sample: nothing is known, back to the beginning of time.
EARLIEST = datetime.min.replace(tzinfo=UTC)


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

    def extended(self, window: Window) -> OutageWindows:
        """These windows and one more (the open one: usually after all the others)."""
        start, end = window
        if end <= start:
            return self
        if self.starts and start < self.starts[-1]:
            return OutageWindows.of([*zip(self.starts, self.ends, strict=True), window])
        if self.starts and start <= self.ends[-1]:
            if end <= self.ends[-1]:
                return self
            return OutageWindows(self.starts, (*self.ends[:-1], end), self.before)
        total = self.before[-1] + self.ends[-1] - self.starts[-1] if self.starts else timedelta(0)
        return OutageWindows((*self.starts, start), (*self.ends, end), (*self.before, total))


NO_OUTAGES = OutageWindows()


def watch_gap(smallest_limit: timedelta | None) -> timedelta | None:
    """The longest silence that still counts as watching, for these limits (None: any)."""
    if smallest_limit is None or smallest_limit <= timedelta(0):
        return None
    return smallest_limit / GAP_FRACTION


class OutageLog:
    """Feeds on every request's result (the client's observer hook); keeps the windows.

    `gap` is the longest silence between two samples that still counts as watching
    (None: any silence does; the one-shot run, which has no grace); `keep` is how
    long a closed window is remembered (it matters only while a step that went
    silent before its end can still be judged: the largest limit, and more).
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        gap: timedelta | None = None,
        keep: timedelta | None = None,
        max_windows: int = MAX_WINDOWS,
    ) -> None:
        self._clock = clock
        self.gap = gap
        self.keep = keep
        self._max_windows = max_windows
        self.forget()

    def forget(self) -> None:
        """Know nothing again, as at the start: another platform (a new api.base_url)."""
        self._started = self._clock()
        self._last_sample = EARLIEST
        self._first_success: datetime | None = None  # nothing is known before it
        self._failing_since: datetime | None = None
        self._last_failure: datetime | None = None
        self._closed: list[Window] = []
        self._snapshot = NO_OUTAGES

    def configure(self, gap: timedelta | None, keep: timedelta | None) -> None:
        """New limits (a reload): the gap and the memory follow them from now on."""
        self.gap, self.keep = gap, keep

    def observe(self, method: str, status: str) -> None:
        now = self._clock()
        if self._first_success is None:
            # Nothing is known before the first answer: forgive all of it but the last
            # half limit (below). A failure meanwhile only says it is not over yet.
            if status not in UNREACHABLE:
                self._first_success = now
                self._close((EARLIEST, now - self._head_start()))
            self._last_sample = max(self._last_sample, now)
            return
        if self._silent(now):
            self._close((self._last_sample, now))  # nobody watched: it may have been away
        if status in UNREACHABLE:
            if self._failing_since is None:
                self._failing_since = now
            self._last_failure = now
        elif self._failing_since is not None and self._last_failure is not None:
            self._close((self._failing_since, self._last_failure))
            self._failing_since = self._last_failure = None
        self._last_sample = max(self._last_sample, now)

    def _head_start(self) -> timedelta:
        """How much of the time before the first answer counts after all: half the
        smallest limit. Whatever outage came before, it had ended by that answer, and
        a worker that retries within half its limit has beaten again half a limit
        later; a step silent until then is judged from the answer on, less this."""
        return self.gap * GAP_FRACTION / 2 if self.gap is not None else timedelta(0)

    def _silent(self, now: datetime) -> bool:
        return self.gap is not None and now - self._last_sample > self.gap

    def _close(self, window: Window) -> None:
        if window[1] <= window[0]:
            return
        snapshot = OutageWindows.of([*self._closed, window])
        if self.keep is not None:
            # Merged first: a window that touches a later one is the same outage, and a
            # worker silent since its start is forgiven until that outage ends.
            try:
                horizon = window[1] - self.keep
            except OverflowError:
                horizon = EARLIEST
            pairs = zip(snapshot.starts, snapshot.ends, strict=True)
            snapshot = OutageWindows.of(w for w in pairs if w[1] >= horizon)
        while len(snapshot) > self._max_windows:
            snapshot = _merge_closest(snapshot)
        self._closed = list(zip(snapshot.starts, snapshot.ends, strict=True))
        self._snapshot = snapshot

    def windows(self) -> OutageWindows:
        """Closed windows, plus what is open now: a run of failures, or a silence."""
        now = self._clock()
        snapshot = self._snapshot
        if self._first_success is None:
            return snapshot.extended((EARLIEST, now))
        if self._failing_since is not None:
            snapshot = snapshot.extended((self._failing_since, now))
        if self._silent(now):
            snapshot = snapshot.extended((self._last_sample, now))
        return snapshot

    def probe_due(self) -> datetime | None:
        """When the daemon should sample the platform if nothing else does before:
        half a gap after the last sample (None: no gap, no need)."""
        if self.gap is None:
            return None
        last = self._started if self._last_sample == EARLIEST else self._last_sample
        return last + self.gap / 2


def _merge_closest(windows: OutageWindows) -> OutageWindows:
    """One window fewer: the two separated by the shortest gap become one (discounts more)."""
    gaps = [windows.starts[i + 1] - windows.ends[i] for i in range(len(windows) - 1)]
    i = gaps.index(min(gaps))
    pairs = list(zip(windows.starts, windows.ends, strict=True))
    pairs[i : i + 2] = [(pairs[i][0], pairs[i + 1][1])]
    return OutageWindows.of(pairs)
