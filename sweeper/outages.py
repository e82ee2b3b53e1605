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

    def pairs(self) -> list[Window]:
        """The windows, as (start, end) pairs."""
        return list(zip(self.starts, self.ends, strict=True))

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
            return OutageWindows.of([*self.pairs(), window])
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
    """Feeds on every request (the client's `watch` hook); keeps the windows.

    Samples are stamped on `clock`, a steady clock (the daemon's monotonic clock as a
    datetime), so that no step of any wall clock, ours or the platform's, moves a
    sample into the future or the past. Windows are laid on the platform's clock
    (`platform`, what step timestamps are judged against) only when asked for, with
    the offset between the two known then (see `windows`).

    `gap` is the longest silence between two samples that still counts as watching
    (None: any silence does; the one-shot run, which has no grace); `keep` is how
    long a closed window is remembered (it matters only while a step that went
    silent before its end can still be judged: the largest limit, and more).
    Every forward move of the platform's clock less ours (as `platform` shows it at
    each answer) is forgiven as time no worker lived through: a step of the platform's
    clock within the Date's resolution cannot be told from our estimate of it getting
    tighter, and safety comes first (a zombie is marked up to that much later).
    """

    def __init__(
        self,
        clock: Callable[[], datetime],
        gap: timedelta | None = None,
        keep: timedelta | None = None,
        max_windows: int = MAX_WINDOWS,
        *,
        platform: Callable[[], datetime] | None = None,
    ) -> None:
        self._clock = clock
        self._platform = platform or clock
        self.gap = gap
        self.keep = keep
        self._max_windows = max_windows
        self.forget()

    def forget(self) -> None:
        """Know nothing again, as at the start: another platform (a new api.base_url)."""
        self._started = self._clock()
        self._last_sample = EARLIEST
        self._first_success: datetime | None = None  # nothing is known before it
        self._last_success = EARLIEST
        #: The run of failures going on: since when it is forgiven, its last failure,
        #: how many (None: the platform answered last).
        self._run: tuple[datetime, datetime, int] | None = None
        #: Requests sent and not answered: watching until half a gap after their
        #: sending, then late (a failure then, and no longer watching).
        self._waiting: list[datetime] = []
        self._late: list[datetime] = []
        self._closed: list[Window] = []
        self._snapshot = NO_OUTAGES
        #: The platform's clock less ours at the last answer, and its forward steps.
        self._offset: timedelta | None = None
        self._jumps: list[tuple[datetime, timedelta]] = []
        self._version = 0
        self._laid: tuple[int, timedelta, OutageWindows] | None = None

    def configure(self, gap: timedelta | None, keep: timedelta | None) -> None:
        """New limits (a reload): the gap and the memory follow them from now on."""
        self.gap, self.keep = gap, keep

    # -- samples ---------------------------------------------------------------

    def sent(self) -> datetime:
        """A request goes out: it is a sample, and the platform is watched while it is
        in flight, up to half a gap; unanswered by then it is late, which counts as a
        failure at that moment (`_expire`). Returns its stamp for `answered`."""
        now = self._clock()
        self._expire(now)
        if self._first_success is not None and self._silent(now):
            self._close((self._last_sample, now))  # nobody watched: it may have been away
        self._waiting.append(now)
        self._last_sample = max(self._last_sample, now)
        return now

    def answered(self, sent_at: datetime, reachable: bool) -> None:
        """The request sent at `sent_at` ended: with the platform's own answer
        (`reachable`), or with none (a failure, a timeout, a gateway's page). A late
        request's failure was counted when it became late; its answer still counts."""
        now = self._clock()
        self._expire(now)
        if sent_at in self._waiting:
            self._waiting.remove(sent_at)
            self._sample(now, sent_at, reachable, self._platform() - now)
        elif sent_at in self._late:
            self._late.remove(sent_at)
            if reachable:  # watched again from its answer on: a silence before it counts
                self._sample(now, now, reachable, self._platform() - now)

    def observe(self, method: str, status: str) -> None:
        """A request sent and answered at once, by status (UNREACHABLE: a failure)."""
        now = self._clock()
        self._expire(now)
        self._sample(now, now, status not in UNREACHABLE, self._platform() - now)

    def _expire(self, now: datetime) -> None:
        """Requests unanswered half a gap after their sending are late: a failure at
        that moment, in order with every other sample. A platform that does not answer
        is not there, as far as anyone can tell; a request that hangs watches nothing."""
        if self.gap is None:
            return
        while self._waiting and self._waiting[0] + self.gap / 2 <= now:
            sent_at = self._waiting.pop(0)
            self._late.append(sent_at)
            self._sample(sent_at + self.gap / 2, sent_at, False, None)

    def _sample(
        self, now: datetime, sent_at: datetime, reachable: bool, offset: timedelta | None
    ) -> None:
        if self._first_success is None:
            # Nothing is known before the first answer: forgive all of it but the last
            # half limit (below). A failure meanwhile only says it is not over yet.
            if reachable:
                self._first_success = self._last_success = now
                self._offset = offset
                self._close((EARLIEST, now - self._head_start()))
            self._last_sample = max(self._last_sample, now)
            return
        if offset is not None:
            self._learn_offset(now, offset)
        if self._silent(sent_at):
            self._close((self._last_sample, sent_at))  # nobody watched: it may have been away
        if not reachable:
            if self._run is None:
                # Away from when it was asked, but never before it last answered.
                since, count = max(sent_at, self._last_success), 0
            else:
                since, _, count = self._run
            self._run = (since, now, count + 1)
        else:
            if self._run is not None:
                since, last, count = self._run
                if count > 1:  # a single failure between answers forgives nothing
                    self._close((since, last))
                self._run = None
            self._last_success = max(self._last_success, now)
        self._last_sample = max(self._last_sample, now)

    def _learn_offset(self, now: datetime, offset: timedelta) -> None:
        """A forward move of the platform's clock less ours: the platform time it skipped
        never passed for any worker, so it is forgiven like an outage (`windows`). Every
        move counts, however small: one within the Date's resolution may be a step of
        the platform's clock as well as our estimate getting tighter, and nothing can
        tell them apart. A move back needs nothing: everything is laid on the platform's
        clock as it is now, which makes older heartbeats look more recent, never older."""
        if self._offset is not None and offset > self._offset:
            self._jumps.append((now, offset - self._offset))
            if len(self._jumps) > self._max_windows:
                self._jumps = _merge_smallest(self._jumps)
            self._version += 1
        self._offset = offset

    def _head_start(self) -> timedelta:
        """How much of the time before the first answer counts after all: half the
        smallest limit. Whatever outage came before, it had ended by that answer, and
        a worker that retries within half its limit has beaten again half a limit
        later; a step silent until then is judged from the answer on, less this."""
        return self.gap * GAP_FRACTION / 2 if self.gap is not None else timedelta(0)

    def _silent(self, now: datetime) -> bool:
        return self.gap is not None and not self._waiting and now - self._last_sample > self.gap

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
            # A window is forgotten once `keep` of time NOT forgiven has passed since its
            # end (any step silent since before it is a zombie without it), never by the
            # clock alone: a long outage after a short up-time must not erase the one
            # before it, which a worker silent since then still needs.
            latest, kept = window[1], snapshot
            snapshot = OutageWindows.of(
                w
                for w in snapshot.pairs()
                if latest - w[1] - kept.overlap(w[1], latest) <= self.keep
            )
            # A clock step is kept while it may still move a window kept, or is recent.
            first = snapshot.starts[0]  # never empty: the window just closed stays
            self._jumps = [j for j in self._jumps if j[0] >= min(horizon, first)]
        while len(snapshot) > self._max_windows:
            snapshot = _merge_closest(snapshot)
        self._closed = snapshot.pairs()
        self._snapshot = snapshot
        self._version += 1

    # -- what decisions see ----------------------------------------------------

    def windows(self) -> OutageWindows:
        """Closed windows, plus what is open now (a run of failures, a silence), laid
        on the platform's clock as known now.

        Each steady moment m is laid at m + (platform's clock less ours, now), less
        every forward step of the platform's clock after m: a heartbeat stamped then
        was stamped on the clock before those steps. The time each step skipped is a
        window of its own."""
        now = self._clock()
        self._expire(now)
        offset = self._platform() - now
        snapshot = self._snapshot
        if self._first_success is None:
            snapshot = snapshot.extended((EARLIEST, now))
        else:
            if self._run is not None:
                snapshot = snapshot.extended((self._run[0], now))
            if self._silent(now):
                snapshot = snapshot.extended((self._last_sample, now))
        if not self._jumps and not offset:
            return snapshot  # the same clock, as in the one-shot run and the tests
        if snapshot is self._snapshot:
            return self._laid_closed(offset)
        return self._lay(snapshot, offset)

    def _laid_closed(self, offset: timedelta) -> OutageWindows:
        """The closed windows laid on the platform's clock, computed once per change
        (a new offset only shifts them all alike)."""
        laid = self._laid
        if laid is None or laid[0] != self._version:
            laid = (self._version, offset, self._lay(self._snapshot, offset))
            self._laid = laid
        shift = offset - laid[1]
        if not shift:
            return laid[2]
        windows = laid[2]
        return OutageWindows(
            tuple(_shift(s, shift) for s in windows.starts),
            tuple(_shift(e, shift) for e in windows.ends),
            windows.before,
        )

    def _lay(self, steady: OutageWindows, offset: timedelta) -> OutageWindows:
        jumps = self._jumps
        after = [timedelta(0)] * (len(jumps) + 1)  # forward steps from index i on
        for i in range(len(jumps) - 1, -1, -1):
            after[i] = after[i + 1] + jumps[i][1]
        moments = [m for m, _ in jumps]

        def lay(moment: datetime) -> datetime:
            return _shift(moment, offset - after[bisect_right(moments, moment)])

        laid = [(lay(s), lay(e)) for s, e in steady.pairs()]
        for i, (moment, step) in enumerate(jumps):
            end = _shift(moment, offset - after[i + 1])
            laid.append((end - step, end))
        return OutageWindows.of(laid)

    def now(self) -> datetime:
        """This log's own (steady) clock, which `probe_due` is on."""
        return self._clock()

    def probe_due(self) -> datetime | None:
        """When (on `clock`) the daemon should sample the platform if nothing else does
        before: half a gap after the last sample (None: no gap, no need)."""
        if self.gap is None:
            return None
        self._expire(self._clock())
        last = self._started if self._last_sample == EARLIEST else self._last_sample
        return last + self.gap / 2


def _shift(moment: datetime, by: timedelta) -> datetime:
    """`moment + by`, the beginning of time staying where it is. Only a shift back can
    leave the calendar: nothing is laid after the platform's clock now."""
    if moment == EARLIEST:
        return moment
    try:
        return moment + by
    except OverflowError:
        return EARLIEST


def _merge_closest(windows: OutageWindows) -> OutageWindows:
    """One window fewer: the two separated by the shortest gap become one (discounts more)."""
    gaps = [windows.starts[i + 1] - windows.ends[i] for i in range(len(windows) - 1)]
    i = gaps.index(min(gaps))
    pairs = windows.pairs()
    pairs[i : i + 2] = [(pairs[i][0], pairs[i + 1][1])]
    return OutageWindows.of(pairs)


def _merge_smallest(jumps: list[tuple[datetime, timedelta]]) -> list[tuple[datetime, timedelta]]:
    """One step fewer: the smallest (but the last) joins the next one, at its moment. A
    heartbeat between the two is forgiven that much more, never less; the smallest keeps
    that error small however many there were."""
    i = min(range(len(jumps) - 1), key=lambda k: jumps[k][1])
    moment, step = jumps[i + 1]
    return [*jumps[:i], (moment, jumps[i][1] + step), *jumps[i + 2 :]]
