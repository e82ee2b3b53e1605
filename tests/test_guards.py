"""The guards as plain checks: blast radius, deadline and stop, clock skew."""

from __future__ import annotations

import email.utils
from datetime import timedelta
from typing import Any

import pytest

from sweeper.errors import ClockSkewRefused, GuardRefused, InvalidAnswer
from sweeper.guards import ClockCheck, check_blast_radius, why_not_start
from sweeper.policy import SkipReason
from tests.fakes import NOW, FakeClock


@pytest.mark.parametrize(
    ("zombies", "refused"), [(0, False), (499, False), (500, False), (501, True)]
)
def test_blast_radius(zombies: int, refused: bool) -> None:
    """More zombies than max_steps refuses; exactly max_steps does not."""
    if not refused:
        check_blast_radius(zombies, 500)
        return
    with pytest.raises(GuardRefused) as caught:
        check_blast_radius(zombies, 500)
    assert caught.value.guard == "max_steps"
    assert caught.value.figures == {"zombies": zombies, "max_steps": 500}
    assert str(caught.value) == f"{zombies} zombies found, more than sweep.max_steps"


def test_max_steps_zero_refuses_any_zombie() -> None:
    """max_steps = 0 lets a sweep report but never write."""
    check_blast_radius(0, 0)
    with pytest.raises(GuardRefused):
        check_blast_radius(1, 0)


@pytest.mark.parametrize(
    ("stopping", "now", "expected"),
    [
        (False, 99.0, None),
        (False, 100.0, SkipReason.DEADLINE),
        (False, 101.0, SkipReason.DEADLINE),
        (True, 50.0, SkipReason.SHUTDOWN),
        (True, 150.0, SkipReason.SHUTDOWN),
    ],
)
def test_why_not_start(stopping: bool, now: float, expected: SkipReason | None) -> None:
    """A stop request wins over the deadline; at the deadline no write starts."""
    assert why_not_start(stopping, now, deadline_at=100.0) is expected


def date(offset: timedelta) -> str:
    return email.utils.format_datetime(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("offset", "refused"),
    [
        (timedelta(0), False),
        (timedelta(seconds=121), False),  # within the limit plus the header's 1 s resolution
        (timedelta(seconds=-121), False),
        (timedelta(seconds=122), True),
        (timedelta(seconds=-122), True),
        (timedelta(hours=1), True),
    ],
)
def test_clock_skew_both_ways(offset: timedelta, refused: bool) -> None:
    """Ahead or behind by more than max_clock_skew (+1 s for the header) refuses."""
    check = ClockCheck(timedelta(minutes=2), FakeClock())
    if not refused:
        check.observe(date(offset))
        return
    with pytest.raises(ClockSkewRefused) as caught:
        check.observe(date(offset))
    assert caught.value.guard == "clock_skew"
    assert caught.value.skew_seconds == offset.total_seconds()
    assert caught.value.figures == {
        "skew_seconds": offset.total_seconds(),
        "max_clock_skew_seconds": 120.0,
    }


@pytest.mark.parametrize("header", ["tomorrow", "Sat, 23 May 2026 12:00:00", "32 Foo 2026"])
def test_unreadable_date_is_an_invalid_answer(header: str) -> None:
    """A Date that is not an HTTP date with a zone cannot vouch for the clock."""
    with pytest.raises(InvalidAnswer) as caught:
        ClockCheck(timedelta(minutes=2), FakeClock()).observe(header)
    assert str(caught.value) == "the platform's Date header is not an HTTP date"


def test_missing_date_warns_once_per_sweep(logs: list[dict[str, Any]]) -> None:
    """No Date: one warning per sweep, and no refusal."""
    check = ClockCheck(timedelta(minutes=2), FakeClock())
    check.observe(None)
    check.observe("")
    assert check.warned_missing is True
    check.begin_sweep()
    assert check.warned_missing is False
    check.observe(None)
    assert (
        logs
        == [
            {
                "event": "platform.date_missing",
                "detail": "clock skew cannot be checked",
                "log_level": "warning",
            },
        ]
        * 2
    )


def test_the_clock_offset_is_the_tightest_lower_bound_and_follows_a_step_back() -> None:
    """Each Date gives a lower bound of the platform's clock minus ours: the highest is
    kept (our idea of its clock moves on, never stands still within a second); one lower
    by more than a Date's resolution is the platform's clock going back: taken."""
    from datetime import UTC, datetime, timedelta

    from sweeper.guards import DRIFT, ClockCheck

    now = [datetime(2026, 5, 1, 12, 0, 0, 400_000, tzinfo=UTC)]
    check = ClockCheck(timedelta(minutes=2), lambda: now[0])
    assert check.offset == timedelta(0)  # nothing known: no correction
    check.check("Fri, 01 May 2026 11:58:20 GMT")  # 100 s behind, read 0.4 s late
    assert check.offset == timedelta(seconds=-100.4)
    now[0] += timedelta(seconds=0.7)  # the Date has flipped to the next second
    check.check("Fri, 01 May 2026 11:58:21 GMT")
    assert check.offset == timedelta(seconds=-100.1)  # tighter
    now[0] += timedelta(seconds=0.5)
    check.check("Fri, 01 May 2026 11:58:21 GMT")  # same second, later: a looser bound
    # Kept, less its age times the drift rate (the platform's clock may run slow).
    assert check.offset == timedelta(seconds=-100.1) - timedelta(seconds=0.5) * DRIFT
    now[0] += timedelta(seconds=1)
    check.check("Fri, 01 May 2026 11:58:12 GMT")  # its clock went back 10 s
    assert check.offset == timedelta(seconds=-110.6)


@pytest.mark.parametrize("rate", [-1e-3, 1e-3], ids=["slower", "faster"])
@pytest.mark.parametrize("limit_s", [1, 4, 12, 60, 86_400])
def test_a_drifting_platform_clock_never_puts_the_estimate_ahead(limit_s: int, rate: float) -> None:
    """The platform's clock 0.1 % slow (or fast), an answer every sixteenth of a limit
    (the prober's cadence) for 2,000 answers: an old Date bound loses precision with age
    at ClockCheck's drift rate, so our idea of the platform's clock is never ahead of
    it (idle time never overstated), and stays within a Date's second and the drift's
    share of a cadence behind it."""
    from datetime import UTC, datetime, timedelta

    from sweeper.guards import DRIFT, ClockCheck, http_date

    start = datetime(2026, 5, 1, 12, 0, 0, 10_000, tzinfo=UTC)
    ours = [start]
    check = ClockCheck(timedelta(minutes=2), lambda: ours[0])
    every = timedelta(seconds=limit_s) / 16
    skew = timedelta(seconds=-110 if rate > 0 else 110)
    ahead = behind = timedelta(0)
    for _ in range(2_000):
        ours[0] += every
        truth = ours[0] + skew + (ours[0] - start) * rate
        if abs(truth - ours[0]) > timedelta(minutes=2):
            break
        date = email.utils.format_datetime(truth.replace(microsecond=0), usegmt=True)
        assert http_date(date) is not None
        check.observe(date)
        estimate = ours[0] + check.offset
        ahead = max(ahead, estimate - truth)
        behind = max(behind, truth - estimate)
    assert ahead <= timedelta(0)
    assert behind <= timedelta(seconds=1) + every * DRIFT * 2


def test_a_bound_lower_by_exactly_the_resolution_is_not_a_step_back() -> None:
    """Only a bound lower by MORE than the Date's resolution is the platform's clock
    going back: one exactly a second lower is a looser bound, and the better one stays."""
    from datetime import UTC, datetime, timedelta

    from sweeper.guards import ClockCheck

    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    check = ClockCheck(timedelta(minutes=2), lambda: now)
    check.learn_offset(timedelta(seconds=5))
    check.learn_offset(timedelta(seconds=4))  # exactly a second lower: kept the better
    assert check.offset == timedelta(seconds=5)
    check.learn_offset(timedelta(seconds=3.9))  # more than a second lower: it went back
    assert check.offset == timedelta(seconds=3.9)


def test_a_reload_carries_what_was_known_of_the_platform_clock() -> None:
    """The same platform after a reload: the new check knows the old one's best bound,
    aged from when it was seen, not from the reload."""
    from datetime import UTC, datetime, timedelta

    from sweeper.guards import DRIFT, ClockCheck

    now = [datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)]
    old = ClockCheck(timedelta(minutes=2), lambda: now[0])
    old.learn_offset(timedelta(seconds=-100))
    now[0] += timedelta(seconds=10)
    new = ClockCheck(timedelta(minutes=2), lambda: now[0])
    assert new.offset == timedelta(0)
    new.carry(old)
    assert new.offset == old.offset == timedelta(seconds=-100) - timedelta(seconds=10) * DRIFT
    empty = ClockCheck(timedelta(minutes=2), lambda: now[0])
    new.carry(empty)  # nothing known there: nothing known here
    assert new.offset == timedelta(0)
