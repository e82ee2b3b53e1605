"""The pure decision core: is this step a zombie, and what should it become?

Everything here is a function of its arguments: no I/O, no clock, no settings
object. `now` and the outage windows are passed in, so tests are plain tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

from sweeper.durations import humanize
from sweeper.errors import SkipReason
from sweeper.model import Step, StepStatus, format_timestamp
from sweeper.outages import NO_OUTAGES, OutageWindows

DEFAULT_RULE_NAME = "default"
DEFAULT_ERROR_CODE = "ZOMBIE_STEP_TIMEOUT"
DEFAULT_ERROR_MESSAGE = (
    "No sign of life from this step for {idle} (limit {stale_after}): "
    "marked {status} by the zombie-step sweeper (rule {rule})."
)
MANUAL_RULE_NAME = "manual"
#: `sweeper mark`'s error code unless --error-code: says a person marked it, not the sweep.
MANUAL_ERROR_CODE = "MARKED_BY_HAND"
MANUAL_ERROR_MESSAGE = (
    "Marked {status} by hand with the zombie-step sweeper after {idle} without a sign of life."
)
#: The placeholders an error message template may use.
MESSAGE_FIELDS = ("idle", "stale_after", "status", "rule")
DEFAULT_RUNAWAY_ERROR_CODE = "STEP_MAX_RUNTIME_EXCEEDED"
DEFAULT_RUNAWAY_MESSAGE = (
    "This step has been running for {runtime} (limit {max_runtime}) and still shows signs "
    "of life: marked {status} as a runaway by the zombie-step sweeper (rule {rule})."
)
#: The placeholders a runaway message template may use.
RUNAWAY_MESSAGE_FIELDS = ("runtime", "max_runtime", "status", "rule")


class Trigger(StrEnum):
    """What made a step a zombie (`errorDetails.trigger`, the `trigger` of `step.marked`)."""

    STALE = "stale"
    MAX_RUNTIME = "max_runtime"


@dataclass(frozen=True, slots=True)
class Rule:
    """What makes a matching step a zombie and what it becomes.

    `stale_after=None` means never: matching steps are never marked as stale.
    `max_runtime=None` (the default) means never: no step is a runaway.
    """

    name: str
    stale_after: timedelta | None
    status: StepStatus
    error_code: str
    error_message: str
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_runtime: timedelta | None = None
    runaway_status: StepStatus = StepStatus.CANCELLED
    runaway_error_code: str = DEFAULT_RUNAWAY_ERROR_CODE
    runaway_message: str = DEFAULT_RUNAWAY_MESSAGE

    def fits(self, step: Step) -> bool:
        """Every listed field must fit one of its globs; a field the step lacks never fits."""
        for wire_name, patterns in self.match.items():
            value = step.field(wire_name)
            if value is None or not any(fnmatchcase(value, p) for p in patterns):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Rules:
    """Ordered overrides, then the default rule built from `[sweep]`."""

    overrides: tuple[Rule, ...]
    default: Rule

    def rule_for(self, step: Step) -> Rule:
        for rule in self.overrides:
            if rule.fits(step):
                return rule
        return self.default

    @property
    def limits(self) -> list[timedelta]:
        """Every finite limit in force (rules that never mark have none)."""
        return [r.stale_after for r in (*self.overrides, self.default) if r.stale_after]

    @property
    def smallest_stale_after(self) -> timedelta:
        """The listing filter: no rule can call a step younger than this stale."""
        limits = [r.stale_after for r in (*self.overrides, self.default) if r.stale_after]
        return min(limits) if limits else self.default.stale_after or timedelta(0)

    @property
    def smallest_limit(self) -> timedelta:
        """The listing filter: no step younger than this is stale or a runaway.

        A rule's max_runtime is never shorter than its own stale_after (settings), so
        this is smallest_stale_after unless a rule that never goes stale has a shorter
        max_runtime: the listing of stale candidates already holds every runaway.
        """
        runtimes = [r.max_runtime for r in (*self.overrides, self.default) if r.max_runtime]
        return min([self.smallest_stale_after, *runtimes])

    @property
    def any_max_runtime(self) -> bool:
        return any(r.max_runtime is not None for r in (*self.overrides, self.default))


class Spared(StrEnum):
    """Why a listed step is not a zombie."""

    NOT_RUNNING = "not_running"
    NOT_STALE = "not_stale"
    EXEMPT = "exempt"


@dataclass(frozen=True, slots=True)
class Decision:
    """A step judged a zombie, with everything the write needs to say about it."""

    step: Step
    rule: str
    status: StepStatus
    error_code: str
    error_message: str
    idle: timedelta
    stale_after: timedelta
    last_sign_of_life_field: str
    last_sign_of_life_at: datetime
    outage_discount: timedelta = timedelta(0)
    #: None for a mark by hand (an operator's decision, no trigger).
    trigger: Trigger | None = Trigger.STALE
    #: A runaway's: how long it had run, and its rule's limit.
    runtime: timedelta | None = None
    max_runtime: timedelta | None = None

    @property
    def crossed_at(self) -> datetime:
        """The moment the step crossed the limit that decided it (detection lag)."""
        if self.trigger is Trigger.MAX_RUNTIME and self.max_runtime is not None:
            return self.step.started_at + self.max_runtime
        return self.last_sign_of_life_at + self.stale_after + self.outage_discount


@dataclass(frozen=True, slots=True)
class StepUpdate:
    """The fields the sweeper writes on a zombie; nothing else is ever sent."""

    organization_id: str
    status: StepStatus
    completed_at: str
    error_code: str
    error_message: str
    error_details: dict[str, Any]


def manual_rule(status: StepStatus, error_code: str, error_message: str | None) -> Rule:
    """The rule of `sweeper mark`: an operator decided, so any RUNNING step qualifies."""
    return Rule(
        name=MANUAL_RULE_NAME,
        stale_after=timedelta(0),
        status=status,
        error_code=error_code,
        error_message=error_message or MANUAL_ERROR_MESSAGE,
    )


def decide(
    step: Step, now: datetime, rules: Rules, outages: OutageWindows = NO_OUTAGES
) -> Decision | Spared:
    """Judge one step: a Decision to mark it, or why it is spared.

    Only a RUNNING step can be a zombie, whatever the listing was asked for.
    Idle time is measured from the step's last sign of life; time in which the
    platform itself was unreachable does not count (workers could not report).
    A step past its rule's max_runtime is a runaway whatever its heartbeat; one
    that is both stale and past it is a zombie (the cause that is certain).
    """
    if step.status != StepStatus.RUNNING:
        return Spared.NOT_RUNNING
    rule = rules.rule_for(step)
    if rule.stale_after is None and rule.max_runtime is None:
        return Spared.EXEMPT
    return stale(step, now, rule, outages) or runaway(step, now, rule) or Spared.NOT_STALE


def stale(
    step: Step, now: datetime, rule: Rule, outages: OutageWindows = NO_OUTAGES
) -> Decision | None:
    """A zombie by silence: idle (outages discounted) for longer than the rule's limit."""
    if rule.stale_after is None:
        return None
    field_name, last_seen = step.last_sign_of_life
    discount = outages.overlap(last_seen, now)
    idle = now - last_seen - discount
    if idle <= rule.stale_after:
        return None
    return _decision(step, rule, idle, field_name, last_seen, discount)


def runaway(step: Step, now: datetime, rule: Rule) -> Decision | None:
    """A runaway: started longer ago than the rule's max_runtime. No outage discount:
    an outage stops heartbeats from arriving, not the time a step has been running."""
    if rule.max_runtime is None:
        return None
    runtime = now - step.started_at
    if runtime <= rule.max_runtime:
        return None
    field_name, last_seen = step.last_sign_of_life
    message = rule.runaway_message.format(
        runtime=humanize(runtime),
        max_runtime=humanize(rule.max_runtime),
        status=rule.runaway_status.value,
        rule=rule.name,
    )
    return Decision(
        step=step,
        rule=rule.name,
        status=rule.runaway_status,
        error_code=rule.runaway_error_code,
        error_message=message,
        idle=max(now - last_seen, timedelta(0)),
        stale_after=rule.stale_after or timedelta(0),
        last_sign_of_life_field=field_name,
        last_sign_of_life_at=last_seen,
        trigger=Trigger.MAX_RUNTIME,
        runtime=runtime,
        max_runtime=rule.max_runtime,
    )


def _decision(
    step: Step,
    rule: Rule,
    idle: timedelta,
    field_name: str,
    last_seen: datetime,
    discount: timedelta = timedelta(0),
    trigger: Trigger | None = Trigger.STALE,
) -> Decision:
    message = rule.error_message.format(
        idle=humanize(idle),
        stale_after=humanize(rule.stale_after or timedelta(0)),
        status=rule.status.value,
        rule=rule.name,
    )
    return Decision(
        step=step,
        rule=rule.name,
        status=rule.status,
        error_code=rule.error_code,
        error_message=message,
        idle=idle,
        stale_after=rule.stale_after or timedelta(0),
        last_sign_of_life_field=field_name,
        last_sign_of_life_at=last_seen,
        outage_discount=discount,
        trigger=trigger,
    )


@dataclass(frozen=True, slots=True)
class NotStale:
    """Why `mark` without --force leaves a step alone: it is within its limit."""

    idle: timedelta
    stale_after: timedelta | None  # None: its rule says `never`
    rule: str


def within_limit(current: Step, now: datetime, rules: Rules) -> NotStale | None:
    """For `mark` without --force: is this RUNNING step still within its configured limit?"""
    rule = rules.rule_for(current)
    if runaway(current, now, rule) is not None:
        return None  # past its max_runtime: beyond its limit, whatever its heartbeat
    idle = max(now - current.last_sign_of_life[1], timedelta(0))
    if rule.stale_after is None or idle <= rule.stale_after:
        return NotStale(idle, rule.stale_after, rule.name)
    return None


def decide_by_hand(
    current: Step | None, now: datetime, rule: Rule, limits: Rules | None = None
) -> Decision | SkipReason:
    """`sweeper mark`: a RUNNING step that is there and past its configured limit
    (`limits`); with --force (`limits` None) any RUNNING step, however recent its
    last sign of life (a wedged step may still heartbeat)."""
    step = still_running(current)
    if isinstance(step, SkipReason):
        return step
    if limits is not None and within_limit(step, now, limits) is not None:
        return SkipReason.ALIVE
    field_name, last_seen = step.last_sign_of_life
    idle = max(now - last_seen, timedelta(0))
    return _decision(step, rule, idle, field_name, last_seen, trigger=None)


def still_running(current: Step | None) -> Step | SkipReason:
    """A fresh read of a zombie, if it is still there and RUNNING; else why the write
    leaves it alone (whatever the rules: its real state is kept)."""
    if current is None:
        return SkipReason.GONE
    if current.status != StepStatus.RUNNING:
        return SkipReason.FINISHED
    return current


def applied_by(current: Step | None, sweep_id: str, status: StepStatus) -> bool:
    """Does the step already show this sweep's write (an earlier attempt whose answer was lost)?"""
    return current is not None and current.status == status and current.marked_by_sweep == sweep_id


def recheck(
    listed: Step,
    current: Step | None,
    now: datetime,
    rules: Rules,
    outages: OutageWindows = NO_OUTAGES,
) -> Decision | SkipReason:
    """Judge a zombie again from a fresh read, right before writing it.

    A step that finished, moved, or is no longer stale keeps its real state. A
    runaway is left alone only when it finished or its startedAt changed (it started
    again): a heartbeat that moved does not save it, since a wedged worker beats on.
    """
    step = still_running(current)
    if isinstance(step, SkipReason):
        return step
    current = step
    rule = rules.rule_for(current)
    if current.last_sign_of_life[1] <= listed.last_sign_of_life[1]:
        verdict = stale(current, now, rule, outages)
        if verdict is not None:
            return verdict
    if current.started_at == listed.started_at:
        return runaway(current, now, rule) or SkipReason.ALIVE
    return SkipReason.ALIVE


def build_update(
    decision: Decision, completed_at: datetime, sweep_id: str, host: str, version: str
) -> StepUpdate:
    """The PATCH fields for a decided zombie, stamped at the moment of the write."""
    step = decision.step
    details: dict[str, Any] = {
        "sweepId": sweep_id,
        "rule": decision.rule,
        "idleSeconds": int(decision.idle.total_seconds()),
        "staleAfterSeconds": int(decision.stale_after.total_seconds()),
        "lastSignOfLifeField": decision.last_sign_of_life_field,
        "lastSignOfLifeAt": format_timestamp(decision.last_sign_of_life_at),
        "sweeperVersion": version,
        "sweptBy": host,
    }
    if step.retry_count is not None:
        details["retryCount"] = step.retry_count
    if decision.trigger is not None:
        details["trigger"] = decision.trigger.value
    if decision.runtime is not None and decision.max_runtime is not None:
        details["runtimeSeconds"] = int(decision.runtime.total_seconds())
        details["maxRuntimeSeconds"] = int(decision.max_runtime.total_seconds())
    if decision.outage_discount > timedelta(0):
        details["outageDiscountSeconds"] = int(decision.outage_discount.total_seconds())
    return StepUpdate(
        organization_id=step.organization_id,
        status=decision.status,
        completed_at=format_timestamp(completed_at),
        error_code=decision.error_code,
        error_message=decision.error_message,
        error_details=details,
    )
