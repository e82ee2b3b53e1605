"""Outage memory: an outage is the platform being away, not one failed request."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeper.outages import MAX_WINDOWS, OUTAGE_MIN, OutageLog, OutageWindows
from tests.helpers import NOW, FakeClock

S = timedelta(seconds=1)
M = timedelta(minutes=1)


def pairs(windows: OutageWindows) -> list[tuple[object, object]]:
    return list(zip(windows.starts, windows.ends, strict=True))


def test_a_long_outage_opens_at_last_contact_and_closes_at_recovery(clock: FakeClock) -> None:
    """Failures lasting OUTAGE_MIN or more: a window from the last good answer to the next."""
    log = OutageLog(clock)
    log.observe("GET", "200")
    t_ok = clock()
    clock.advance(timedelta(minutes=5))
    log.observe("GET", "error")
    clock.advance(OUTAGE_MIN - S)
    log.observe("GET", "503")
    assert not log.windows()  # not yet an outage
    clock.advance(S)
    assert pairs(log.windows()) == [(t_ok, clock())]  # still open: runs until now
    clock.advance(timedelta(minutes=20))
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(t_ok, clock())]
    clock.advance(timedelta(minutes=5))
    log.observe("PATCH", "404")  # an answer, even a refusal, is contact
    assert len(log.windows()) == 1


def test_a_blip_discounts_nothing(clock: FakeClock) -> None:
    """Failures that end within OUTAGE_MIN are a blip that workers retry through."""
    log = OutageLog(clock)
    log.observe("GET", "200")
    clock.advance(timedelta(minutes=5))
    log.observe("PATCH", "503")
    clock.advance(OUTAGE_MIN - S)
    log.observe("GET", "200")
    assert not log.windows()


def test_windows_are_forgotten_after_a_week(clock: FakeClock) -> None:
    """Old windows are dropped so memory stays bounded."""
    log = OutageLog(clock)
    log.observe("GET", "timeout")
    clock.advance(timedelta(hours=1))
    log.observe("GET", "200")
    assert len(log.windows()) == 1
    clock.advance(timedelta(days=8))
    log.observe("GET", "timeout")
    clock.advance(timedelta(hours=1))
    log.observe("GET", "200")
    assert len(log.windows()) == 1


def test_memory_is_bounded_by_merging_the_closest_windows(clock: FakeClock) -> None:
    """Past MAX_WINDOWS, neighbours merge: fewer windows, never less time forgiven."""
    log = OutageLog(clock, max_windows=8)
    first = clock()
    covered = timedelta(0)
    for n in range(50):
        log.observe("GET", "200")
        clock.advance(timedelta(minutes=1 + n % 7))
        log.observe("GET", "503")
        clock.advance(timedelta(minutes=1))
        log.observe("GET", "200")
        covered += timedelta(minutes=2 + n % 7)  # last contact -> recovery
        clock.advance(timedelta(minutes=n % 5))
    windows = log.windows()
    assert len(windows) == 8
    assert covered <= windows.overlap(first, clock()) < clock() - first
    assert MAX_WINDOWS == 1024


def test_a_platform_that_fails_a_quarter_of_requests_is_not_down(clock: FakeClock) -> None:
    """25% of answers 503, requests every 0.1-2 s for hours: no outage, no discount."""
    rng = random.Random(7)
    log = OutageLog(clock)
    start = clock()
    for _ in range(20_000):
        clock.advance(timedelta(seconds=rng.uniform(0.1, 2.0)))
        log.observe("PATCH", "503" if rng.random() < 0.25 else "200")
    assert log.windows().overlap(start, clock()) < S


windows_strategy = st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(1, 500)).map(
        lambda t: (NOW + timedelta(seconds=t[0]), NOW + timedelta(seconds=t[0] + t[1]))
    ),
    max_size=30,
)


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


def test_failures_lasting_exactly_outage_min_are_an_outage(clock: FakeClock) -> None:
    """OUTAGE_MIN is inclusive: failures lasting exactly that long open a window."""
    log = OutageLog(clock)
    log.observe("GET", "200")
    t_ok = clock()
    log.observe("GET", "503")
    clock.advance(OUTAGE_MIN)
    log.observe("GET", "200")
    assert pairs(log.windows()) == [(t_ok, clock())]


def outage(log: OutageLog, clock: FakeClock, length: timedelta) -> None:
    """One outage: a good answer, failures for `length`, then a good answer again."""
    log.observe("GET", "200")
    log.observe("GET", "503")
    clock.advance(length)
    log.observe("GET", "200")


def test_a_window_ending_exactly_at_the_horizon_is_kept(clock: FakeClock) -> None:
    """`keep` is inclusive: a window that ended exactly `keep` before the new one's end stays."""
    log = OutageLog(clock, keep=timedelta(days=1), minimum=S)
    outage(log, clock, S)
    old_end = clock()
    clock.advance(timedelta(days=1) - S)
    outage(log, clock, S)
    assert clock() - old_end == timedelta(days=1)
    assert len(log.windows()) == 2
    clock.advance(S)
    outage(log, clock, S)
    assert len(log.windows()) == 2  # the first one is now past the horizon


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
    log = OutageLog(clock, minimum=S, max_windows=2)
    start = clock()
    for gap in (0, *gaps):
        clock.advance(gap * M)
        outage(log, clock, M)
    assert pairs(log.windows()) == [(start + a * M, start + b * M) for a, b in expected]
