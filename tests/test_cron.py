"""schedule.cron fires when crontab would: the day-of-month/day-of-week OR rule; never-firing."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.cron import cron_trigger


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def fire_times(trigger: Any, start: datetime, count: int) -> list[datetime]:
    times: list[datetime] = []
    previous = None
    now = start
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        times.append(fire)
        previous, now = fire, fire + timedelta(seconds=1)
    return times


# Hand-computed from cron(5): "If both fields are restricted (i.e., don't start
# with *), the command will be run when either field matches the current time."
# Calendar: 2026-05-23 is a Saturday, 2026-06-16 a Tuesday, 2026-07-01 a Wednesday,
# 2026-08-01 a Saturday, 2026-09-01 a Tuesday, 2027-02-01 a Monday.
CRONTAB_TABLE = [
    (
        # The 1st, the 15th AND every Monday.
        "0 6 1,15 * 1",
        utc(2026, 6, 16),
        [
            utc(2026, 6, 22, 6),  # Monday
            utc(2026, 6, 29, 6),  # Monday
            utc(2026, 7, 1, 6),  # the 1st, a Wednesday
            utc(2026, 7, 6, 6),  # Monday
            utc(2026, 7, 13, 6),  # Monday
            utc(2026, 7, 15, 6),  # the 15th, a Wednesday
            utc(2026, 7, 20, 6),  # Monday
        ],
    ),
    (
        # Every Friday and every 13th, not only Friday the 13th.
        "0 0 13 * 5",
        utc(2026, 5, 23, 12),
        [
            utc(2026, 5, 29),  # Friday
            utc(2026, 6, 5),  # Friday
            utc(2026, 6, 12),  # Friday
            utc(2026, 6, 13),  # the 13th, a Saturday
            utc(2026, 6, 19),  # Friday
        ],
    ),
    (
        # Day names count as restricted too.
        "30 1 1 * sun",
        utc(2026, 5, 23, 12),
        [utc(2026, 5, 24, 1, 30), utc(2026, 5, 31, 1, 30), utc(2026, 6, 1, 1, 30)],
    ),
    (
        # A day-of-week starting with `*` is unrestricted in crontab's sense: both must fit.
        "0 0 1 * */2",
        utc(2026, 5, 23, 12),
        [utc(2026, 8, 1), utc(2026, 9, 1)],  # the 1st on a Sunday/Tuesday/Thursday/Saturday
    ),
    (
        # 31 February never exists, but February's Mondays do.
        "0 0 31 2 1",
        utc(2026, 5, 23, 12),
        [utc(2027, 2, 1), utc(2027, 2, 8), utc(2027, 2, 15)],
    ),
    (
        # Only day-of-month restricted: just those days.
        "0 6 1,15 * *",
        utc(2026, 6, 16),
        [utc(2026, 7, 1, 6), utc(2026, 7, 15, 6), utc(2026, 8, 1, 6)],
    ),
    (
        # Only day-of-week restricted: just those days.
        "0 6 * * 1",
        utc(2026, 6, 16),
        [utc(2026, 6, 22, 6), utc(2026, 6, 29, 6), utc(2026, 7, 6, 6)],
    ),
    ("0 0 29 2 *", utc(2026, 5, 23, 12), [utc(2028, 2, 29), utc(2032, 2, 29)]),
]


@pytest.mark.parametrize(("expr", "start", "expected"), CRONTAB_TABLE)
def test_fire_times_match_crontab(expr: str, start: datetime, expected: list[datetime]) -> None:
    """The next fire times are those crontab gives (hand-computed from cron(5))."""
    trigger = cron_trigger(expr, "UTC", now=start)
    assert fire_times(trigger, start, len(expected)) == expected


def _field_matches(field: str, value: int, low: int, high: int) -> bool:
    """A reference reading of one crontab field (numbers, ranges, lists, steps)."""
    for item in field.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = (int(part) for part in base.split("-"))
        else:
            first = int(base)
            last = high if step else first
        if first <= value <= last and (value - first) % int(step or 1) == 0:
            return True
    return False


def _crontab_day(expr: str, day: datetime) -> bool:
    """Vixie cron's day rule, written independently of sweeper.cron."""
    _, _, dom, month, dow = expr.split()
    weekday = (day.weekday() + 1) % 7  # Sunday = 0
    dom_ok = _field_matches(dom, day.day, 1, 31)
    dow_ok = _field_matches(dow, weekday, 0, 7) or (weekday == 0 and _field_matches(dow, 7, 0, 7))
    # One of them unrestricted: both must fit; both restricted: either fits.
    one_is_star = dom.startswith("*") or dow.startswith("*")
    day_ok = (dom_ok and dow_ok) if one_is_star else (dom_ok or dow_ok)
    return day_ok and _field_matches(month, day.month, 1, 12)


def _crontab_minutes(expr: str, day: datetime) -> list[datetime]:
    minute, hour = expr.split()[:2]
    return [
        day + timedelta(hours=h, minutes=m)
        for h in range(24)
        if _field_matches(hour, h, 0, 23)
        for m in range(60)
        if _field_matches(minute, m, 0, 59)
    ]


@pytest.mark.parametrize(
    "expr",
    [
        "0 6 1,15 * 1",
        "15 */6 10-20 * 0",
        "0 0 1 * 1-5",
        "0 12 */10 * 6,7",
        "0 0 1 * */3",
        "*/30 3 * * 2",
        "0 0 5 1-6 3",
    ],
)
def test_fire_times_match_a_minute_by_minute_reference(expr: str) -> None:
    """Over 120 days, the fire times are exactly the minutes a reference crontab rule gives."""
    start = utc(2026, 1, 1)
    end = start + timedelta(days=120)
    trigger = cron_trigger(expr, "UTC", now=start)
    fired = []
    previous, now = None, start
    while (fire := trigger.get_next_fire_time(previous, now)) < end:
        fired.append(fire)
        previous, now = fire, fire + timedelta(seconds=1)
    expected = []
    day = start
    while day < end:
        if _crontab_day(expr, day):
            expected.extend(_crontab_minutes(expr, day))
        day += timedelta(days=1)
    assert fired == expected
    assert fired


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 */2"])
def test_an_expression_that_never_fires_is_refused(expr: str) -> None:
    """No such date: refused when the configuration is loaded, not when the daemon runs."""
    with pytest.raises(ValueError, match="never fires"):
        cron_trigger(expr, "UTC")


@pytest.mark.parametrize(
    "expr",
    ["0 0 32 * *", "61 * * * *", "0 0 * 13 *", "0 0 * * 8", "x y z w v", "0 0 0 * *", "* * * *"],
)
def test_malformed_expressions_are_value_errors(expr: str) -> None:
    """Out-of-range fields and wrong field counts are ValueErrors naming the problem."""
    with pytest.raises(ValueError, match="five-field cron expression"):
        cron_trigger(expr, "UTC")


def test_jitter_is_kept_on_the_combined_trigger() -> None:
    """With both day fields restricted, schedule.jitter still applies."""
    trigger = cron_trigger("0 6 1 * 1", "UTC", jitter=timedelta(seconds=30))
    assert trigger.jitter == 30


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet="0123456789*/-,?LW#monsunjan", min_size=1, max_size=8)
        | st.sampled_from(["*", "*/0", "*/99999999999999999999", "1-99999999999999999999"]),
        min_size=5,
        max_size=5,
    )
)
def test_any_expression_is_a_trigger_or_a_value_error(fields: list[str]) -> None:
    """No expression, however odd, raises anything but ValueError."""
    with contextlib.suppress(ValueError):
        cron_trigger(" ".join(fields), "UTC")
