"""`schedule.cron`: five-field crontab expressions as APScheduler 3 triggers, as crontab means them.

Two crontab rules that APScheduler 3 does not share: weekdays count from Sunday
(0 and 7 are Sunday), and when both day-of-month and day-of-week are restricted
(neither starts with `*`), a day matches when *either* does (cron(5)). An
expression that can never fire is refused here, so that it fails at load time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekday_number(text: str) -> int:
    if text.lower() in _WEEKDAYS:
        return _WEEKDAYS.index(text.lower())
    if not text.isascii() or not text.isdigit() or int(text) > 7:
        raise ValueError("a day of week is out of range 0-7 (or sun-sat)")
    return int(text) % 7


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field as APScheduler 3 day names.

    crontab counts 0 (and 7) as Sunday and steps from Sunday; APScheduler 3 counts
    0 as Monday, a known 3.x mistake. Expanding to names sidesteps both.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.split(","):
        base, _, step_text = item.partition("/")
        valid_step = step_text.isascii() and step_text.isdigit() and 0 < int(step_text) <= 7
        step = int(step_text) if valid_step else None
        if step_text and step is None:
            raise ValueError("a day of week step is not a number from 1 to 7")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            low, high = base.split("-", 1)
            first = _weekday_number(low)
            last = 7 if high == "7" else _weekday_number(high)
        else:
            first = _weekday_number(base)
            last = 6 if step else first
        if last < first:
            raise ValueError("a day of week range runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step or 1))
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def cron_trigger(
    expr: str,
    timezone: str,
    jitter: timedelta = timedelta(0),
    now: datetime | None = None,
) -> Any:
    """A trigger for a five-field crontab expression; ValueError if it is wrong or never fires.

    `now` is only where the "never fires" check starts looking (default: the clock).
    """
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"not a five-field cron expression (it has {len(fields)} fields)")
    minute, hour, day, month, weekday = fields
    common: dict[str, Any] = {"minute": minute, "hour": hour, "month": month, "timezone": timezone}
    seconds = int(jitter.total_seconds()) or None
    try:
        weekdays = crontab_weekdays(weekday)
        if day.startswith("*") or weekday.startswith("*"):
            # crontab: a day must fit both fields (one of them is unrestricted).
            trigger: Any = CronTrigger(day=day, day_of_week=weekdays, jitter=seconds, **common)
        else:
            # crontab: both restricted, a day fits when either field does.
            trigger = OrTrigger(
                [
                    CronTrigger(day=day, day_of_week="*", **common),
                    CronTrigger(day="*", day_of_week=weekdays, **common),
                ],
                jitter=seconds,
            )
        first = trigger.get_next_fire_time(None, now or datetime.now(UTC))
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise ValueError(f"not a five-field cron expression ({_reason(exc)})") from None
    if first is None:
        raise ValueError("never fires: no date matches it (such as 31 February)")
    return trigger


def _reason(exc: Exception) -> str:
    # APScheduler's messages quote the field's text, which is the operator's own
    # expression, not a secret; keep them short all the same.
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
