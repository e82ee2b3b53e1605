"""Durations as operators write them, and their round trip."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeper.durations import format_duration, humanize, parse_duration


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
