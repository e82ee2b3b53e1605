"""Building the policy's `Rules` from [sweep] and its [[sweep.rules]]: what `inherit` means.

Typed by the shape it reads (not the pydantic models), so the models may call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Literal, Protocol

from sweeper.model import StepStatus
from sweeper.policy import DEFAULT_RULE_NAME, Rule, Rules


def inherit(
    own: timedelta | Literal["inherit"] | None, default: timedelta | None
) -> timedelta | None:
    """A rule's own limit (None: never), or [sweep]'s where the rule says `inherit`."""
    return default if isinstance(own, str) else own


class RuleSection(Protocol):
    """One [[sweep.rules]] as configured: None or `inherit` take [sweep]'s value."""

    @property
    def name(self) -> str: ...
    @property
    def match(self) -> Mapping[str, Sequence[str]]: ...
    @property
    def stale_after(self) -> timedelta | Literal["inherit"] | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def error_code(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def max_runtime(self) -> timedelta | Literal["inherit"] | None: ...
    @property
    def runaway_status(self) -> str | None: ...
    @property
    def runaway_error_code(self) -> str | None: ...
    @property
    def runaway_message(self) -> str | None: ...


class SweepSection(Protocol):
    """[sweep] as configured: the default rule, and the rules that override it."""

    @property
    def stale_after(self) -> timedelta: ...
    @property
    def status(self) -> str: ...
    @property
    def error_code(self) -> str: ...
    @property
    def error_message(self) -> str: ...
    @property
    def max_runtime(self) -> timedelta | None: ...
    @property
    def runaway_status(self) -> str: ...
    @property
    def runaway_error_code(self) -> str: ...
    @property
    def runaway_message(self) -> str: ...
    @property
    def rules(self) -> Sequence[RuleSection]: ...


def build_rules(sweep: SweepSection) -> Rules:
    default = Rule(
        name=DEFAULT_RULE_NAME,
        stale_after=sweep.stale_after,
        status=StepStatus(sweep.status),
        error_code=sweep.error_code,
        error_message=sweep.error_message,
        max_runtime=sweep.max_runtime,
        runaway_status=StepStatus(sweep.runaway_status),
        runaway_error_code=sweep.runaway_error_code,
        runaway_message=sweep.runaway_message,
    )
    overrides = tuple(
        Rule(
            name=r.name,
            stale_after=inherit(r.stale_after, default.stale_after),
            status=StepStatus(r.status or default.status),
            error_code=r.error_code or default.error_code,
            error_message=r.error_message or default.error_message,
            match={k: tuple(v) for k, v in r.match.items()},
            max_runtime=inherit(r.max_runtime, default.max_runtime),
            runaway_status=StepStatus(r.runaway_status or default.runaway_status),
            runaway_error_code=r.runaway_error_code or default.runaway_error_code,
            runaway_message=r.runaway_message or default.runaway_message,
        )
        for r in sweep.rules
    )
    return Rules(overrides=overrides, default=default)
