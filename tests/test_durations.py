"""Durations as operators write them, and their round trip."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeper.durations import (
    MAX_DURATION,
    format_duration,
    humanize,
    parse_duration,
    parse_positive_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("45", 45),
        (" 10 m ", 600),
        ("1.5h", 5400),
        (30, 30),
        (2.5, 2.5),
        ("0s", 0),
        ("3650d", 3650 * 86400),
        (3650 * 86400, 3650 * 86400),
    ],
)
def test_parse(text: object, seconds: float) -> None:
    """Units s, m, h, d, or plain seconds."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "5x", "m5", "-5m", "five", "1h30m", True, None, [], "nan", -1])
def test_parse_rejects(bad: object) -> None:
    """Anything else is refused with a message that does not echo the value."""
    with pytest.raises(ValueError, match="not a duration") as caught:
        parse_duration(bad)
    if isinstance(bad, str) and bad:
        assert repr(bad) not in str(caught.value)


@pytest.mark.parametrize(
    "huge",
    ["3651d", "3000000000d", "1000000d", "9" * 400, 10**400, 10**12, float("inf"), 3651 * 86400],
)
def test_parse_refuses_more_than_3650_days(huge: object) -> None:
    """Past 3650d is a clean error, never an OverflowError."""
    with pytest.raises(ValueError, match="too long: at most 3650d"):
        parse_duration(huge)


def test_max_duration_is_3650_days() -> None:
    """The limit operations.md states."""
    assert timedelta(days=3650) == MAX_DURATION


@pytest.mark.parametrize("zero", ["0s", "0", 0, 0.0, "0.0000001s", 1e-9, "0d"])
def test_positive_duration_refuses_zero(zero: object) -> None:
    """Where zero means nothing sensible, it is refused (also what rounds to zero)."""
    assert parse_duration(zero) == timedelta(0)
    with pytest.raises(ValueError, match="must be longer than 0s"):
        parse_positive_duration(zero)


@given(
    st.one_of(
        st.text(),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.lists(st.integers()),
        st.timedeltas(),
    )
)
def test_parse_never_raises_anything_but_value_error(value: object) -> None:
    """Whatever the value, parse_duration returns a duration or raises ValueError."""
    try:
        parsed = parse_duration(value)
    except ValueError:
        return
    assert timedelta(0) <= parsed <= MAX_DURATION


@given(st.integers(min_value=0, max_value=10**7))
def test_format_round_trips_whole_seconds(seconds: int) -> None:
    """parse(format(d)) == d for every whole number of seconds."""
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@given(st.floats(min_value=0, max_value=10**6, allow_nan=False).map(lambda f: round(f, 3)))
def test_format_round_trips_fractions(seconds: float) -> None:
    """Fractions of a second survive the round trip too."""
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45, "45s"), (300, "5m"), (5400, "1h 30m"), (90061, "1d 1h")],
)
def test_humanize(seconds: int, text: str) -> None:
    """Messages show at most two units."""
    assert humanize(timedelta(seconds=seconds)) == text
