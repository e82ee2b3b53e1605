"""Outage memory: an outage is the platform being away, not one failed request."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from sweeper.outages import MAX_WINDOWS, OUTAGE_MIN, OutageLog, OutageWindows
from tests.helpers import NOW, FakeClock

S = timedelta(seconds=1)


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
