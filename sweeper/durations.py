"""Durations as operators write them (`90s`, `5m`, `2h`, `1d`, or seconds) and back."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.ASCII)
_TOO_LONG = 10**12  # seconds: anything beyond the limit, small enough for a float


#: The longest duration any setting or flag accepts.
MAX_DURATION = timedelta(days=3650)
_NOT_A_DURATION = "not a duration: write it like 90s, 5m, 2h, 1d or a number of seconds"


def parse_duration(value: object) -> timedelta:
    """Parse `90s`, `5m`, `2h`, `1d`, a number of seconds, or a timedelta; 0 to 3650d.

    Every refusal is a ValueError whose message never repeats the value.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(_NOT_A_DURATION)
    elif isinstance(value, int):
        # Compared as an integer first: float() of a huge one raises OverflowError.
        seconds = float(min(value, _TOO_LONG)) if value >= 0 else -1.0
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(_NOT_A_DURATION)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError("not a duration: it must be a non-negative time")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"too long: at most {format_duration(MAX_DURATION)}")
    return timedelta(seconds=seconds)


def parse_positive_duration(value: object) -> timedelta:
    """As parse_duration, for a setting where zero would mean nothing sensible."""
    duration = parse_duration(value)
    if duration <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return duration


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration, so that parse(format(d)) == d."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds!r}s"


def humanize(value: timedelta) -> str:
    """A rough, readable spelling for messages: `3h 12m`, `45s`."""
    total = int(value.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])
