"""Outage memory: an outage is the platform being away, not one failed request."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sweeper.outages import EARLIEST, MAX_WINDOWS, OutageLog, OutageWindows, watch_gap
from tests.fakes import NOW, FakeClock

S = timedelta(seconds=1)
M = timedelta(minutes=1)


def pairs(windows: OutageWindows) -> list[tuple[object, object]]:
    """The windows, less the one before the first answer (every log has it)."""
    return [w for w in zip(windows.starts, windows.ends, strict=True) if w[0] != EARLIEST]


def test_a_run_of_failures_is_forgiven_from_its_first_failure_to_its_last(
    clock: FakeClock,
) -> None:
    """Failures with no success between them: a window from the first to the last of them."""
    log = OutageLog(clock, gap=timedelta(minutes=8))
    log.observe("GET", "200")
    clock.advance(timedelta(minutes=5))
    log.observe("GET", "error")
    t_first = clock()
    clock.advance(timedelta(minutes=3))
    log.observe("GET", "503")
    assert pairs(log.windows()) == [(t_first, clock())]  # still open: runs until now
    t_last = clock()
    clock.advance(timedelta(minutes=1))
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(t_first, t_last)]
    clock.advance(timedelta(minutes=5))
    log.observe("PATCH", "404")  # an answer, even a refusal, is contact
    assert len(pairs(log.windows())) == 1


def test_a_single_failure_between_successes_discounts_nothing(clock: FakeClock) -> None:
    """One failed request between two answers is no evidence of an outage."""
    log = OutageLog(clock, gap=timedelta(minutes=8))
    log.observe("GET", "200")
    clock.advance(timedelta(minutes=5))
    log.observe("PATCH", "503")
    clock.advance(timedelta(minutes=5))
    log.observe("GET", "200")
    assert not pairs(log.windows())


def test_a_silence_longer_than_the_gap_is_unwatched_time(clock: FakeClock) -> None:
    """Nobody looked for longer than the gap: the platform may have been away."""
    log = OutageLog(clock, gap=M)
    log.observe("GET", "200")
    t_ok = clock()
    clock.advance(M)
    log.observe("GET", "200")  # exactly the gap: still watched
    assert not pairs(log.windows())
    t_ok = clock()
    clock.advance(M + S)
    assert pairs(log.windows()) == [(t_ok, clock())]  # open while nobody looks
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(t_ok, clock())]


def test_time_before_the_first_answer_is_unknown(clock: FakeClock) -> None:
    """A daemon that just started knows nothing of what came before: it forgives all of it
    but the last half of the smallest limit (a live worker has beaten again by then)."""
    log = OutageLog(clock, gap=M)  # the smallest limit is 8 minutes
    assert (log.windows().starts, log.windows().ends) == ((EARLIEST,), (clock(),))
    clock.advance(M)
    log.observe("GET", "503")  # still down: still unknown
    clock.advance(M)
    assert (log.windows().starts, log.windows().ends) == ((EARLIEST,), (clock(),))
    log.observe("GET", "200")
    windows = log.windows()
    assert (windows.starts, windows.ends) == ((EARLIEST,), (clock() - 4 * M,))
    month = timedelta(days=30)
    assert windows.overlap(clock() - month, clock()) == month - 4 * M


def test_the_gap_and_the_probe_follow_the_limits(clock: FakeClock) -> None:
    """An eighth of the smallest limit; the daemon probes after half of it, from the start."""
    assert watch_gap(timedelta(seconds=8)) == S
    assert watch_gap(timedelta(0)) is None
    assert watch_gap(None) is None
    log = OutageLog(clock, gap=watch_gap(timedelta(seconds=8)))
    assert log.probe_due() == clock() + S / 2
    clock.advance(S)
    log.observe("GET", "200")
    assert log.probe_due() == clock() + S / 2
    log.configure(None, None)
    assert log.probe_due() is None
    log.configure(M, None)
    assert log.probe_due() == clock() + M / 2


def test_windows_are_forgotten_after_keep(clock: FakeClock) -> None:
    """Old windows are dropped so memory stays bounded."""
    log = OutageLog(clock, gap=M, keep=timedelta(days=7))
    log.observe("GET", "200")
    clock.advance(S)
    log.observe("GET", "timeout")
    clock.advance(timedelta(seconds=30))
    log.observe("GET", "timeout")
    clock.advance(timedelta(seconds=30))
    log.observe("GET", "200")
    assert len(log.windows()) == 2  # before the first answer, and the run
    for _ in range(13_000):  # 7.5 days of answers every 50 s
        clock.advance(timedelta(seconds=50))
        log.observe("GET", "200")
    log.observe("GET", "timeout")
    clock.advance(timedelta(seconds=30))
    log.observe("GET", "timeout")
    log.observe("GET", "200")
    assert len(log.windows()) == 1  # forgotten as the new one closed


def test_a_window_touching_a_later_one_is_kept_with_it(clock: FakeClock) -> None:
    """One outage seen as several windows (unwatched, then failing) is remembered whole."""
    log = OutageLog(clock, gap=M, keep=timedelta(hours=1))
    log.observe("GET", "200")
    t_ok = clock()
    clock.advance(timedelta(hours=5))
    log.observe("GET", "503")  # nobody looked for 5 hours, and it is down
    for _ in range(5 * 60):
        clock.advance(timedelta(seconds=50))
        log.observe("GET", "503")
    t_last = clock()
    clock.advance(S)
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(t_ok, t_last)]


def test_memory_is_bounded_by_merging_the_closest_windows(clock: FakeClock) -> None:
    """Past MAX_WINDOWS, neighbours merge: fewer windows, never less time forgiven."""
    log = OutageLog(clock, gap=timedelta(minutes=10), max_windows=8)
    first = clock()
    log.observe("GET", "200")
    covered = timedelta(0)
    for n in range(50):
        log.observe("GET", "200")
        clock.advance(timedelta(minutes=1 + n % 7))
        log.observe("GET", "503")
        clock.advance(timedelta(minutes=1))
        log.observe("GET", "503")
        covered += timedelta(minutes=1)  # first failure -> last failure
        clock.advance(timedelta(minutes=1))
        log.observe("GET", "200")
        clock.advance(timedelta(minutes=n % 5))
    windows = log.windows()
    assert len(windows) == 8
    assert covered <= windows.overlap(first, clock()) < clock() - first
    assert MAX_WINDOWS == 1024


def test_a_platform_that_fails_a_quarter_of_requests_is_not_down(clock: FakeClock) -> None:
    """25% of answers 503, requests every 0.1-2 s for hours: only runs of failures count,
    a small part of the time."""
    rng = random.Random(7)
    log = OutageLog(clock, gap=timedelta(minutes=15))
    log.observe("GET", "200")
    start = clock()
    for _ in range(20_000):
        clock.advance(timedelta(seconds=rng.uniform(0.1, 2.0)))
        log.observe("PATCH", "503" if rng.random() < 0.25 else "200")
    assert log.windows().overlap(start, clock()) < (clock() - start) / 10


windows_strategy = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(1, 500)).map(
        lambda t: (NOW + timedelta(seconds=t[0]), NOW + timedelta(seconds=t[0] + t[1]))
    ),
    max_size=30,
)


@settings(deadline=None)  # no wall-time limit: it failed on the loaded machine
@given(windows_strategy, st.integers(-100, 11_000), st.integers(0, 11_000))
def test_overlap_by_prefix_sums_equals_the_plain_sum(
    windows: list[tuple[object, object]], since_s: int, length: int
) -> None:
    """The bisect-and-prefix-sum overlap equals summing each merged window's part by hand."""
    since = NOW + timedelta(seconds=since_s)
    now = since + timedelta(seconds=length)
    merged = OutageWindows.of(windows)  # type: ignore[arg-type]
    expected = timedelta(0)
    for start, end in pairs(merged):
        lo, hi = max(start, since), min(end, now)  # type: ignore[type-var]
        if hi > lo:  # type: ignore[operator]
            expected += hi - lo  # type: ignore[operator]
    assert merged.overlap(since, now) == expected
    # Merging never loses time: the merged windows cover at least the longest window.
    longest = max((e - s for s, e in windows), default=timedelta(0))  # type: ignore[operator]
    assert merged.overlap(NOW - timedelta(days=1), NOW + timedelta(days=1)) >= longest


@settings(deadline=None)
@given(windows_strategy, st.integers(-100, 11_000), st.integers(-10, 600))
@example([(NOW, NOW + 10 * S)], 10, 10)  # touching the last one
@example([(NOW, NOW + 10 * S)], 5, 5)  # ending where the last one ends
@example([(NOW, NOW + 10 * S)], 0, 20)  # starting where the last one starts
def test_extending_equals_building_again(
    windows: list[tuple[datetime, datetime]], start_s: int, length: int
) -> None:
    """`extended` (its shortcuts for the usual case: a window after, or touching, the
    last one) gives exactly what building all the windows again gives, empty or
    backwards windows included."""
    window = (NOW + timedelta(seconds=start_s), NOW + timedelta(seconds=start_s + length))
    built = OutageWindows.of(windows)
    assert built.extended(window) == OutageWindows.of([*windows, window])


T = NOW + timedelta(hours=1)


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        ([(T, T)], []),
        ([(T, T + S), (T + 2 * S, T + 2 * S)], [(T, T + S)]),
        ([(T, T + S), (T + S, T + 2 * S)], [(T, T + 2 * S)]),
        ([(T + S, T + 2 * S), (T, T + S)], [(T, T + 2 * S)]),
        ([(T, T + 3 * S), (T + S, T + 2 * S)], [(T, T + 3 * S)]),
        ([(T + S, T)], []),
    ],
    ids=["empty", "empty-beside", "touching", "touching-unsorted", "nested", "backwards"],
)
def test_windows_are_sorted_merged_and_never_empty(
    windows: list[tuple[datetime, datetime]], expected: list[tuple[datetime, datetime]]
) -> None:
    """Empty or backwards windows are dropped; touching or nested ones become one window."""
    built = OutageWindows.of(windows)
    assert pairs(built) == expected
    assert bool(built) is bool(expected)
    assert len(built) == len(expected)


@pytest.mark.parametrize(
    ("since", "now", "expected"),
    [
        (T + S, T + 3 * S, 2 * S),
        (T + 3 * S, T + S, timedelta(0)),
        (T + 2 * S, T + 2 * S, timedelta(0)),
        (T - S, T + 10 * S, 4 * S),
    ],
    ids=["inside", "backwards", "empty-interval", "around"],
)
def test_overlap_is_never_negative(since: datetime, now: datetime, expected: timedelta) -> None:
    """The overlap of (since, now] with the outages; zero when now is not after since."""
    assert OutageWindows.of([(T, T + 4 * S)]).overlap(since, now) == expected


def outage(log: OutageLog, clock: FakeClock, length: timedelta) -> None:
    """One outage: a good answer, failures for `length`, then a good answer again."""
    log.observe("GET", "200")
    log.observe("GET", "503")
    clock.advance(length)
    log.observe("GET", "503")
    log.observe("GET", "200")


def test_a_window_ending_exactly_at_the_horizon_is_kept(clock: FakeClock) -> None:
    """`keep` is inclusive: a window that ended exactly `keep` of unforgiven time before
    the new one's end stays."""
    log = OutageLog(clock, keep=timedelta(days=1))
    outage(log, clock, S)
    old_end = clock()
    clock.advance(timedelta(days=1) - S)
    outage(log, clock, S)
    assert clock() - old_end == timedelta(days=1)
    assert len(log.windows()) == 2
    clock.advance(S)
    outage(log, clock, S)
    # Measured in time not forgiven since its end: still exactly `keep` (adv15b).
    assert len(log.windows()) == 3
    clock.advance(S)
    outage(log, clock, S)
    assert len(log.windows()) == 3  # the first one is now past the horizon


def test_extending_with_an_earlier_window_keeps_everything(clock: FakeClock) -> None:
    """A run of failures that began before a silence inside it: both are forgiven."""
    log = OutageLog(clock, gap=M)
    log.observe("GET", "200")
    clock.advance(S)
    log.observe("GET", "503")
    t_fail = clock()
    clock.advance(2 * M)
    log.observe("GET", "503")  # a silence inside the run, closed on its own
    clock.advance(S)
    assert pairs(log.windows()) == [(t_fail, clock())]
    windows = OutageWindows.of([(T, T + S), (T + 3 * S, T + 4 * S)])
    assert pairs(windows.extended((T + 2 * S, T + 5 * S))) == [(T, T + S), (T + 2 * S, T + 5 * S)]
    assert pairs(windows.extended((T + 3 * S, T + 3 * S))) == pairs(windows)
    assert pairs(windows.extended((T + 3 * S, T + 4 * S))) == pairs(windows)
    assert windows.extended((T + 6 * S, T + 7 * S)).overlap(T, T + 7 * S) == 3 * S


@pytest.mark.parametrize(
    ("gaps", "expected"),
    [
        ((1, 17), [(0, 3), (20, 21)]),
        ((9, 1), [(0, 1), (10, 13)]),
        ((5, 5), [(0, 7), (12, 13)]),
    ],
    ids=["first-gap-shortest", "last-gap-shortest", "tie-merges-the-first"],
)
def test_the_two_windows_with_the_shortest_gap_merge(
    clock: FakeClock, gaps: tuple[int, int], expected: list[tuple[int, int]]
) -> None:
    """Three one-minute windows, room for two: the pair separated by the shortest gap merges."""
    log = OutageLog(clock, max_windows=3)  # the one before the first answer, and two
    log.observe("GET", "200")
    clock.advance(timedelta(days=1))
    start = clock()
    for gap in (0, *gaps):
        clock.advance(gap * M)
        outage(log, clock, M)
    assert pairs(log.windows()) == [(start + a * M, start + b * M) for a, b in expected]


# -- samples on a steady clock, windows on the platform's (issue 15, B and C) ------------


class Platform:
    """The platform's clock as the daemon knows it: the steady clock plus an offset."""

    def __init__(self, clock: FakeClock, offset: timedelta = timedelta(0)) -> None:
        self.clock, self.offset = clock, offset

    def __call__(self) -> datetime:
        return self.clock() + self.offset


def test_samples_are_laid_on_the_platform_clock_as_known_now(clock: FakeClock) -> None:
    """B: the first answer came before the offset was known (0), then it turned out to be
    -100 s. Windows are laid with the offset known when asked, and the prober's due time
    is on the steady clock: it never sits in the platform's future."""
    platform = Platform(clock)
    log = OutageLog(clock, gap=S, platform=platform)
    log.observe("GET", "200")
    platform.offset = -100 * S  # learnt from the first Date
    assert log.probe_due() == clock() + S / 2
    clock.advance(S)
    log.observe("GET", "503")
    failed = platform()
    clock.advance(S)
    log.observe("GET", "503")
    assert pairs(log.windows()) == [(failed, platform())]
    clock.advance(S)
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(failed, failed + S)]
    platform.offset = -130 * S  # the platform's clock steps back: all of it moves with it
    assert pairs(log.windows()) == [(failed - 30 * S, failed - 29 * S)]


def test_a_platform_clock_stepping_back_never_blinds_the_prober(clock: FakeClock) -> None:
    """C: the platform's clock steps back 30 s: no sample is in the future of the steady
    clock, so a silence longer than the gap is seen at once."""
    platform = Platform(clock)
    log = OutageLog(clock, gap=S, platform=platform)
    log.observe("GET", "200")
    platform.offset = -30 * S
    log.observe("GET", "200")
    quiet = platform()
    assert log.probe_due() == clock() + S / 2
    clock.advance(5 * S)
    assert pairs(log.windows()) == [(quiet, platform())]


def test_a_platform_clock_stepping_forward_forgives_the_time_it_skipped(
    clock: FakeClock,
) -> None:
    """The platform's clock jumps 30 s ahead: heartbeats stamped before look 30 s older,
    and that time passed for no worker. A rise within the Date's resolution is forgiven
    too: it may be a step as well as our estimate getting tighter (adv15b, finding 1)."""
    platform = Platform(clock)
    log = OutageLog(clock, gap=M, platform=platform)
    log.observe("GET", "200")
    beat = platform()
    clock.advance(S)
    platform.offset = S / 2  # within the resolution: a step, or a tighter estimate
    log.observe("GET", "200")
    tightened = platform()
    assert pairs(log.windows()) == [(tightened - S / 2, tightened)]
    clock.advance(S)
    platform.offset = 30 * S + S / 2  # a step forward of 30 s
    log.observe("GET", "200")
    stepped = platform()
    assert pairs(log.windows()) == [
        (tightened - S / 2, tightened),
        (stepped - 30 * S, stepped),
    ]
    clock.advance(S)
    assert log.windows().overlap(beat, platform()) == 30 * S + S / 2
    # Then back by as much: the beat from before looks more recent, never older.
    platform.offset = S / 2
    log.observe("GET", "200")
    idle = platform() - beat - log.windows().overlap(beat, platform())
    assert timedelta(0) <= idle <= clock() - NOW


def test_forward_steps_are_forgotten_with_the_windows(clock: FakeClock) -> None:
    """A step of the platform's clock is kept while it may still matter (`keep`), and
    never more than max_windows of them."""
    platform = Platform(clock)
    log = OutageLog(clock, keep=timedelta(hours=1), max_windows=3, platform=platform)
    log.observe("GET", "200")
    for _ in range(5):
        clock.advance(S)
        platform.offset += 10 * S
        log.observe("GET", "200")
    assert len(pairs(log.windows())) == 3  # the time each of the last three skipped
    clock.advance(timedelta(hours=2))
    outage(log, clock, S)
    assert len(pairs(log.windows())) == 1  # the outage just closed, the steps forgotten


def test_forward_steps_beyond_max_windows_are_merged_never_dropped(clock: FakeClock) -> None:
    """Every forward move is a step now, so there can be many: beyond max_windows the two
    oldest become one, and a beat from before them all is still forgiven every one."""
    platform = Platform(clock)
    log = OutageLog(clock, keep=timedelta(hours=1), max_windows=3, platform=platform)
    log.observe("GET", "200")
    beat = platform()
    for _ in range(5):
        clock.advance(S)
        platform.offset += 10 * S
        log.observe("GET", "200")
    assert log.windows().overlap(beat, platform()) == 50 * S


def test_the_smallest_forward_step_is_merged_into_the_next(clock: FakeClock) -> None:
    """Beyond max_windows, the smallest step (never the last) joins the next one at its
    moment: a beat between them is forgiven it as well (more, never less), and a beat
    after every step is forgiven none."""
    platform = Platform(clock)
    log = OutageLog(clock, keep=timedelta(hours=1), max_windows=3, platform=platform)
    log.observe("GET", "200")
    beats = []
    for step in (10 * S, S, 20 * S, 5 * S):
        beats.append(platform())
        clock.advance(M)
        platform.offset += step
        log.observe("GET", "200")
    clock.advance(M)
    now = platform()
    windows = log.windows()
    # The 1 s step (the second) joined the 20 s one: the beat between the 1 s and the
    # 20 s steps is forgiven 21 s + 5 s; every other beat exactly what followed it.
    assert [windows.overlap(b, now) for b in beats] == [36 * S, 26 * S, 26 * S, 5 * S]
    assert windows.overlap(platform() - S, now) == timedelta(0)


# -- requests as samples from when they are sent (G) -------------------------------------


def test_a_request_in_flight_watches_for_half_a_gap_then_is_late(clock: FakeClock) -> None:
    """In flight, a request watches the platform for half a gap; unanswered by then it is
    late: a failure at that moment, and from then on it watches nothing."""
    log = OutageLog(clock, gap=S)
    log.observe("GET", "200")
    quick = log.sent()
    clock.advance(S / 3)
    log.answered(quick, reachable=True)  # a slow answer, within half a gap: no failure
    assert not pairs(log.windows())
    hung = log.sent()
    clock.advance(S / 2)
    assert pairs(log.windows()) == [(hung, clock())]  # late: a failure, a run still open
    log.observe("GET", "200")
    assert not pairs(log.windows())  # a single failure between answers: nothing
    hung = log.sent()
    clock.advance(5 * S)  # late at S/2, then nobody watched for longer than the gap
    assert pairs(log.windows()) == [(hung, clock())]
    log.answered(hung, reachable=False)  # its failure was counted when it became late
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(hung + S / 2, clock())]


def test_a_single_timeout_between_answers_forgives_nothing(clock: FakeClock) -> None:
    """G: one request hangs 10 s (more than a tenth of the 1 min limit) while the daemon's
    probes keep answering: nothing is forgiven. A late answer that does come counts."""
    log = OutageLog(clock, gap=M / 8)
    log.observe("GET", "200")
    start = clock()
    hung = log.sent()
    for _ in range(4):  # the prober does not wait for it
        clock.advance(M / 16)
        probe = log.sent()
        log.answered(probe, reachable=True)
    clock.advance(10 * S - 4 * M / 16)
    log.answered(hung, reachable=False)
    clock.advance(S)
    log.observe("GET", "200")
    assert log.windows().overlap(start, clock()) == timedelta(0)
    slow = log.sent()
    clock.advance(M / 16 + S)
    log.answered(slow, reachable=True)  # late, but answered: a single failure
    clock.advance(S)
    log.observe("GET", "200")
    assert log.windows().overlap(start, clock()) == timedelta(0)


def test_a_run_counts_from_its_first_send_but_never_before_the_last_answer(
    clock: FakeClock,
) -> None:
    """Two failures with no answer between: forgiven from when the first was sent (the
    platform may have been away from then), but not before the platform last answered."""
    log = OutageLog(clock, gap=M)
    log.observe("GET", "200")
    first = log.sent()
    clock.advance(S)
    log.observe("GET", "200")  # answered while the first is in flight
    answered = clock()
    clock.advance(9 * S)
    log.answered(first, reachable=False)
    clock.advance(S)
    second = log.sent()
    clock.advance(S)
    log.answered(second, reachable=False)
    last = clock()
    clock.advance(S)
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(answered, last)]
    # Sent after the last answer: from its sending.
    third = log.sent()
    clock.advance(S)
    log.answered(third, reachable=False)
    log.observe("GET", "503")
    log.observe("GET", "200")
    assert pairs(log.windows())[-1] == (third, clock())


def test_a_long_outage_after_a_short_up_time_keeps_the_one_before(clock: FakeClock) -> None:
    """adv15b: an outage, 9 s up, then an outage longer than `keep`: a worker silent since
    before the first still needs it. `keep` counts time not forgiven, never the clock."""
    log = OutageLog(clock, keep=2 * M)
    log.observe("GET", "200")
    clock.advance(S)
    outage(log, clock, M)
    first_end = clock()
    clock.advance(9 * S)
    outage(log, clock, 3 * M)
    assert len(log.windows()) == 3  # before the first answer, and both outages
    assert log.windows().overlap(first_end - M, clock()) == 4 * M


def test_an_answer_to_a_request_sent_before_forget_is_no_sample(clock: FakeClock) -> None:
    """adv15b: a reload to another base_url forgets while a probe to the old one is in
    flight; its success is the old platform's, not the new one's first answer (which
    would end the new one's forgiven start half a limit after it, mid-outage)."""
    log = OutageLog(clock, gap=M / 8)
    log.observe("GET", "200")
    sent = log.sent()
    clock.advance(S)
    log.forget()
    clock.advance(S)
    log.answered(sent, reachable=True)
    clock.advance(5 * M)
    assert log.windows().overlap(clock() - 5 * M, clock()) == 5 * M  # still nothing known
    new = log.sent()  # the in-flight count was not spent by the old answer
    clock.advance(M)
    assert log.windows().overlap(clock() - M, clock()) == M
    log.answered(new, reachable=True)
    assert log.windows().overlap(clock() - M, clock()) == M / 2  # the head start


# -- edges that mutation testing found untested (bench/MUTATION.md) ----------------------


def test_a_silence_before_a_request_is_forgiven_when_it_is_sent(clock: FakeClock) -> None:
    """Nobody watched for longer than a gap, then a request goes out: the silence is
    unwatched time from its sending on, whatever its answer says later."""
    log = OutageLog(clock, gap=S)
    log.observe("GET", "200")
    quiet = clock()
    clock.advance(3 * S)
    sent = log.sent()
    clock.advance(S / 4)
    log.answered(sent, reachable=True)
    assert pairs(log.windows()) == [(quiet, sent)]


def test_a_request_still_in_flight_before_half_a_gap_is_watching(clock: FakeClock) -> None:
    """Just before half a gap a request in flight still watches (no failure yet); at half
    a gap it is late, and `probe_due` counts it so (the next probe half a gap on)."""
    log = OutageLog(clock, gap=S)
    log.observe("GET", "200")
    sent = log.sent()
    clock.advance(S * 2 / 5)
    assert not pairs(log.windows())
    clock.advance(S / 10)
    assert log.probe_due() == sent + S  # late at S/2: a sample then, the probe S/2 on
    assert pairs(log.windows()) == [(sent, clock())]


def test_forward_steps_are_learnt_from_requests_sent_and_answered(clock: FakeClock) -> None:
    """The platform's clock is learnt from every answer, also of a request counted from
    its sending, and of a late one that is answered after all."""
    platform = Platform(clock)
    log = OutageLog(clock, gap=S, platform=platform)
    log.observe("GET", "200")
    beat = platform()
    sent = log.sent()
    platform.offset = 10 * S
    log.answered(sent, reachable=True)
    assert log.windows().overlap(beat, platform()) == 10 * S
    late = log.sent()
    clock.advance(S)
    platform.offset = 30 * S
    log.answered(late, reachable=True)
    assert log.windows().overlap(beat, platform()) == 30 * S


def test_a_forward_step_is_kept_when_the_offset_comes_back(clock: FakeClock) -> None:
    """A step forward and then back to where it was: laid on the platform's clock as it is
    now, the beat from before is judged on the 2 s that passed (laying with no offset
    left is not 'the same clock': the step is still there, less the way back)."""
    platform = Platform(clock)
    log = OutageLog(clock, gap=M, platform=platform)
    log.observe("GET", "200")
    beat = platform()
    clock.advance(S)
    platform.offset = 10 * S
    log.observe("GET", "200")
    clock.advance(S)
    platform.offset = timedelta(0)
    log.observe("GET", "200")
    assert platform() - beat - log.windows().overlap(beat, platform()) == S


def test_windows_laid_before_and_after_every_change_are_fresh(clock: FakeClock) -> None:
    """The laid windows are cached per change: each outage closed and each step learnt
    shows at once, in any order, however often they are asked for."""
    platform = Platform(clock, offset=-5 * S)
    log = OutageLog(clock, platform=platform)
    beat = platform()
    log.observe("GET", "200")
    seen = [log.windows().overlap(beat, platform())]
    outage(log, clock, S)
    seen.append(log.windows().overlap(beat, platform()))
    outage(log, clock, S)
    seen.append(log.windows().overlap(beat, platform()))
    platform.offset += 10 * S
    log.observe("GET", "200")
    seen.append(log.windows().overlap(beat, platform()))
    outage(log, clock, S)
    seen.append(log.windows().overlap(beat, platform()))
    outage(log, clock, S)  # a window closed, then a step learnt, before anyone asks
    platform.offset += 10 * S
    log.observe("GET", "200")
    seen.append(log.windows().overlap(beat, platform()))
    platform.offset += 10 * S  # and the other way round
    log.observe("GET", "200")
    outage(log, clock, S)
    seen.append(log.windows().overlap(beat, platform()))
    assert seen == [timedelta(0), S, 2 * S, 12 * S, 13 * S, 24 * S, 35 * S]


def test_a_step_is_kept_while_keep_runs_though_no_window_is_older(clock: FakeClock) -> None:
    """A forward step, then within `keep` an outage that makes memory forget every window
    from before the step: the step is still forgiven to a beat from before it."""
    platform = Platform(clock)
    log = OutageLog(clock, keep=timedelta(hours=1), platform=platform)
    log.observe("GET", "200")
    clock.advance(timedelta(hours=2))  # the window before the first answer: old by now
    beat = platform()
    platform.offset = 10 * S
    log.observe("GET", "200")
    clock.advance(M)
    outage(log, clock, S)  # forgets the window before the first answer
    assert log.windows().overlap(beat, platform()) == 10 * S + S


def test_a_step_at_the_start_of_the_first_kept_window_is_kept(clock: FakeClock) -> None:
    """A failed answer (a gateway's) showing the platform's clock stepped forward starts a
    run at that very moment; when memory is pruned back to that run, the step stays."""
    platform = Platform(clock)
    log = OutageLog(clock, keep=S, platform=platform)
    log.observe("GET", "200")
    beat = platform()
    clock.advance(M)
    platform.offset = 10 * S
    log.answered(log.sent(), reachable=False)  # the step and the run's start, at once
    clock.advance(M)
    log.observe("GET", "503")
    log.observe("GET", "200")
    assert log.windows().overlap(beat, platform()) == 10 * S + M


def test_a_keep_longer_than_the_calendar_is_kept_for_ever(clock: FakeClock) -> None:
    """A `keep` reaching before year 1 (any limit, however absurd): nothing is forgotten
    and nothing fails."""
    platform = Platform(clock)
    log = OutageLog(clock, keep=timedelta.max, platform=platform)
    log.observe("GET", "200")
    beat = platform()
    clock.advance(M)
    platform.offset = 10 * S  # and a step forward, kept as well
    outage(log, clock, S)
    clock.advance(timedelta(days=3650))
    outage(log, clock, S)
    assert log.windows().overlap(beat, platform()) == 10 * S + 2 * S


def test_windows_laid_before_the_start_of_the_calendar_stop_there() -> None:
    """A platform clock behind ours near year 1: a window laid before the first moment a
    datetime holds starts there."""
    clock = FakeClock(EARLIEST + timedelta(hours=1))
    platform = Platform(clock)
    log = OutageLog(clock, platform=platform)
    log.observe("GET", "200")
    clock.advance(timedelta(hours=1))
    log.observe("GET", "503")
    clock.advance(timedelta(hours=2))
    log.observe("GET", "503")
    log.observe("GET", "200")
    platform.offset = -timedelta(hours=3)
    windows = log.windows()
    assert windows.pairs() == [(EARLIEST, EARLIEST + timedelta(hours=1))]


def test_memory_merges_the_closest_windows_among_many(clock: FakeClock) -> None:
    """Six windows, room for five: the two with the shortest gap between them (the first
    two) merge, and every other window stays as it was."""
    log = OutageLog(clock, max_windows=6)  # the one before the first answer, and five
    log.observe("GET", "200")
    clock.advance(timedelta(days=1))
    start = clock()
    for gap in (0, 1, 7, 8, 9, 10):
        clock.advance(gap * M)
        outage(log, clock, M)
    got = [((a - start) // M, (b - start) // M) for a, b in pairs(log.windows())]
    assert got == [(0, 3), (10, 11), (19, 20), (29, 30), (40, 41)]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ((S, 10 * S, 20 * S, 5 * S), [36 * S, 36 * S, 25 * S, 5 * S]),
        ((10 * S, 20 * S, S, 5 * S), [36 * S, 26 * S, 6 * S, 6 * S]),
    ],
    ids=["smallest-first", "smallest-before-the-last"],
)
def test_the_smallest_step_merges_wherever_it_is(
    clock: FakeClock, steps: tuple[timedelta, ...], expected: list[timedelta]
) -> None:
    """The smallest step joins the next one wherever it is (never the last one), and every
    other step stays where it was."""
    platform = Platform(clock)
    log = OutageLog(clock, keep=timedelta(hours=1), max_windows=3, platform=platform)
    log.observe("GET", "200")
    beats = []
    for step in steps:
        beats.append(platform())
        clock.advance(M)
        platform.offset += step
        log.observe("GET", "200")
    clock.advance(M)
    windows = log.windows()
    assert [windows.overlap(b, platform()) for b in beats] == expected
