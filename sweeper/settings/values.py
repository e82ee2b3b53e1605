"""The kinds of value a configuration key holds: how each is parsed, checked and printed."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, PlainSerializer

from sweeper.durations import format_duration, parse_duration, parse_positive_duration
from sweeper.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel
from sweeper.model import ERROR_CODE_MAX_LENGTH, FINAL_STATUSES, StepStatus

#: Every section: no unknown key, no value echoed in an error, defaults checked too.
STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)


def _is_never(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "never"


def _parse_stale_after(value: object) -> timedelta:
    if _is_never(value):
        raise ValueError('"never" is allowed only in a rule ([[sweep.rules]] stale_after)')
    return parse_positive_duration(value)


def _parse_rule_stale_after(value: object) -> timedelta | Literal["inherit"] | None:
    """A rule's own limit: a duration, `never` (None: exempt), or `inherit` from [sweep]."""
    if _is_never(value):
        return None
    if value == "inherit":
        return "inherit"
    return parse_positive_duration(value)


def _parse_max_runtime(value: object) -> timedelta | None:
    """`never` (None: no step is a runaway) or a duration longer than zero."""
    return None if value is None or _is_never(value) else parse_positive_duration(value)


def _print_rule_stale_after(value: timedelta | str | None) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    return "never" if value is None else value


def _choice(*allowed: str, fold: bool = False) -> BeforeValidator:
    """One of `allowed`, or an error that lists them (and never repeats the value)."""

    def check(value: object) -> str:
        text = value.lower() if fold and isinstance(value, str) else value
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return str(text)

    return BeforeValidator(check)


#: A duration from 0s (where zero has a meaning: no jitter, no wait) to 3650d.
Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
#: A duration where zero would mean nothing sensible: longer than 0s, at most 3650d.
PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(parse_positive_duration),
    PlainSerializer(format_duration, return_type=str),
]
StaleAfter = Annotated[
    timedelta,
    BeforeValidator(_parse_stale_after),
    PlainSerializer(format_duration, return_type=str),
]
RuleStaleAfter = Annotated[
    timedelta | Literal["inherit"] | None,
    BeforeValidator(_parse_rule_stale_after),
    PlainSerializer(_print_rule_stale_after, return_type=str),
]
MaxRuntime = Annotated[
    timedelta | None,
    BeforeValidator(_parse_max_runtime),
    PlainSerializer(_print_rule_stale_after, return_type=str),
]
#: A rule's max_runtime: a duration, `never`, or `inherit` (from [sweep], the default).
RuleMaxRuntime = Annotated[
    timedelta | Literal["inherit"] | None,
    BeforeValidator(lambda v: "inherit" if v == "inherit" else _parse_max_runtime(v)),
    PlainSerializer(_print_rule_stale_after, return_type=str),
]
FinalStatus = Annotated[Literal[StepStatus.FAILED, StepStatus.CANCELLED], _choice(*FINAL_STATUSES)]
ErrorCode = Annotated[str, Field(min_length=1, max_length=ERROR_CODE_MAX_LENGTH)]
LogFormatChoice = Annotated[LogFormat, _choice(*LOG_FORMATS)]
LogLevelChoice = Annotated[LogLevel, _choice(*LOG_LEVELS, fold=True)]
