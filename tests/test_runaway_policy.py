"""Runaway steps, the pure part: decision tables and properties of the max_runtime trigger."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeper.model import Step, StepStatus
from sweeper.outages import NO_OUTAGES, OutageWindows
from sweeper.policy import (
    DEFAULT_ERROR_MESSAGE,
    DEFAULT_RUNAWAY_ERROR_CODE,
    Decision,
    Rule,
    Rules,
    SkipReason,
    Spared,
    Trigger,
    build_update,
    decide,
    decide_by_hand,
    manual_rule,
    recheck,
    within_limit,
)
from sweeper.timers import TICK, Next, due_at, listing_horizon, rearm
from tests.fakes import NOW, step

H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)


def rule(
    name: str = "default",
    stale_after: timedelta | None = 2 * H,
    max_runtime: timedelta | None = 24 * H,
    **match: list[str],
) -> Rule:
    return Rule(
        name=name,
        stale_after=stale_after,
        status=StepStatus.FAILED,
        error_code="ZOMBIE_STEP_TIMEOUT",
        error_message=DEFAULT_ERROR_MESSAGE,
        match={k: tuple(v) for k, v in match.items()},
        max_runtime=max_runtime,
    )


RUNAWAY_RULES = Rules((), rule())
#: A step type that never goes stale (no heartbeat) but must not run past 6h.
NO_HEARTBEAT = Rules((rule("batch", None, 6 * H, stepType=["batch"]),), rule())


@pytest.mark.parametrize(
    ("started", "heartbeat", "rules", "step_type", "expected"),
    [
        # past max_runtime, heartbeat fresh: a runaway, whatever its heartbeat
        (25 * H, 10 * S, RUNAWAY_RULES, None, Trigger.MAX_RUNTIME),
        (24 * H + S, None, RUNAWAY_RULES, None, Trigger.STALE),  # silent too: stale wins
        (25 * H, 3 * H, RUNAWAY_RULES, None, Trigger.STALE),  # both: stale wins
        (24 * H, 10 * S, RUNAWAY_RULES, None, Spared.NOT_STALE),  # exactly at the limit
        (24 * H + S, 10 * S, RUNAWAY_RULES, None, Trigger.MAX_RUNTIME),
        (23 * H, 10 * S, RUNAWAY_RULES, None, Spared.NOT_STALE),
        (3 * H, None, RUNAWAY_RULES, None, Trigger.STALE),  # a plain zombie is unchanged
        # a rule that never goes stale, with a max_runtime of its own
        (7 * H, None, NO_HEARTBEAT, "batch", Trigger.MAX_RUNTIME),
        (5 * H, None, NO_HEARTBEAT, "batch", Spared.NOT_STALE),
        (7 * H, None, NO_HEARTBEAT, "other", Trigger.STALE),
        (7 * H, 1 * M, NO_HEARTBEAT, "other", Spared.NOT_STALE),
        # never on both: exempt
        (99 * H, None, Rules((), rule(stale_after=None, max_runtime=None)), None, Spared.EXEMPT),
    ],
)
def test_runaway_decision_table(
    started: timedelta,
    heartbeat: timedelta | None,
    rules: Rules,
    step_type: str | None,
    expected: Trigger | Spared,
) -> None:
    """Past max_runtime is a runaway whatever the heartbeat; stale AND past it is stale."""
    verdict = decide(step(started=started, heartbeat=heartbeat, step_type=step_type), NOW, rules)
    if isinstance(expected, Spared):
        assert verdict is expected
    else:
        assert isinstance(verdict, Decision)
        assert verdict.trigger is expected


def test_a_runaway_carries_its_own_status_code_and_message() -> None:
    """runaway_status / runaway_error_code / runaway_message, with their placeholders."""
    r = Rule(
        "slow",
        2 * H,
        StepStatus.FAILED,
        "ZOMBIE",
        DEFAULT_ERROR_MESSAGE,
        max_runtime=24 * H,
        runaway_status=StepStatus.FAILED,
        runaway_error_code="TOO_LONG",
        runaway_message="{rule}: ran {runtime} of {max_runtime}, now {status}",
    )
    verdict = decide(step(started=30 * H, heartbeat=S), NOW, Rules((), r))
    assert isinstance(verdict, Decision)
    assert (verdict.status, verdict.error_code) == (StepStatus.FAILED, "TOO_LONG")
    assert verdict.error_message == "slow: ran 1d 6h of 1d, now FAILED"
    assert verdict.rule == "slow"
    assert verdict.stale_after == 2 * H
    assert verdict.runtime == 30 * H
    assert verdict.max_runtime == 24 * H
    assert verdict.crossed_at == NOW - 6 * H


def test_defaults_cancel_a_runaway_with_its_own_code() -> None:
    """By default a runaway becomes CANCELLED with STEP_MAX_RUNTIME_EXCEEDED."""
    verdict = decide(step(started=25 * H, heartbeat=S), NOW, RUNAWAY_RULES)
    assert isinstance(verdict, Decision)
    assert verdict.status is StepStatus.CANCELLED
    assert verdict.error_code == DEFAULT_RUNAWAY_ERROR_CODE
    assert "1d 1h" in verdict.error_message and "limit 1d" in verdict.error_message


def test_the_write_says_max_runtime_with_runtime_and_limit() -> None:
    """errorDetails.trigger = max_runtime, plus runtimeSeconds and maxRuntimeSeconds."""
    verdict = decide(step(started=25 * H, heartbeat=10 * S), NOW, RUNAWAY_RULES)
    assert isinstance(verdict, Decision)
    details = build_update(verdict, NOW, "sw", "host", "1").error_details
    assert details["trigger"] == "max_runtime"
    assert details["runtimeSeconds"] == 25 * 3600
    assert details["maxRuntimeSeconds"] == 24 * 3600
    assert details["idleSeconds"] == 10
    assert details["lastSignOfLifeField"] == "lastHeartbeatAt"
    assert "outageDiscountSeconds" not in details


def test_a_zombie_says_stale_and_no_runtime() -> None:
    """A stale zombie's errorDetails.trigger is stale, without the runaway fields."""
    verdict = decide(step(started=25 * H), NOW, RUNAWAY_RULES)
    assert isinstance(verdict, Decision)
    details = build_update(verdict, NOW, "sw", "host", "1").error_details
    assert details["trigger"] == "stale"
    assert "runtimeSeconds" not in details and "maxRuntimeSeconds" not in details


def test_a_mark_by_hand_has_no_trigger() -> None:
    """`sweeper mark` is an operator's decision: no trigger is claimed for it."""
    verdict = decide_by_hand(step(), NOW, manual_rule(StepStatus.FAILED, "X", None))
    assert isinstance(verdict, Decision)
    assert verdict.trigger is None
    assert "trigger" not in build_update(verdict, NOW, "s", "h", "v").error_details


def test_outage_grace_does_not_discount_runtime() -> None:
    """An outage delays a stale verdict, never a runaway's."""
    outage = OutageWindows.of([(NOW - 20 * H, NOW - 1 * H)])
    runaway = step(started=25 * H, heartbeat=S)
    verdict = decide(runaway, NOW, RUNAWAY_RULES, outage)
    assert isinstance(verdict, Decision)
    assert verdict.trigger is Trigger.MAX_RUNTIME
    assert verdict.runtime == 25 * H
    # silent for 3h, 19h of which were an outage: not stale, yet a runaway
    silent = step(started=25 * H, heartbeat=3 * H)
    verdict = decide(silent, NOW, RUNAWAY_RULES, outage)
    assert isinstance(verdict, Decision)
    assert verdict.trigger is Trigger.MAX_RUNTIME
    assert due_at(runaway, RUNAWAY_RULES, outage) == runaway.started_at + 24 * H + TICK


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (step(started=25 * H, heartbeat=1 * S), Trigger.MAX_RUNTIME),  # heartbeat moved
        (step(started=25 * H, heartbeat=1 * M), Trigger.MAX_RUNTIME),  # unchanged
        (step(started=25 * H, heartbeat=1 * S, updated=1 * S), Trigger.MAX_RUNTIME),
        (step(started=1 * M), SkipReason.ALIVE),  # started again
        (step(started=25 * H - S, heartbeat=1 * S), SkipReason.ALIVE),  # startedAt changed
        (step(started=25 * H, heartbeat=1 * S, status="SUCCEEDED"), SkipReason.FINISHED),
        (None, SkipReason.GONE),
        (step(started=25 * H, heartbeat=3 * H), Trigger.STALE),  # went silent: stale wins
    ],
)
def test_recheck_of_a_runaway(current: Step | None, expected: Trigger | SkipReason) -> None:
    """A runaway is left alone only when it finished or its startedAt changed."""
    listed = step(started=25 * H, heartbeat=1 * M)
    verdict = recheck(listed, current, NOW, RUNAWAY_RULES)
    if isinstance(expected, SkipReason):
        assert verdict is expected
    else:
        assert isinstance(verdict, Decision)
        assert verdict.trigger is expected


def test_a_listed_zombie_whose_heartbeat_moved_is_still_a_runaway_if_past_runtime() -> None:
    """The worker is alive after all, but wedged: past max_runtime it is a runaway."""
    listed = step(started=25 * H, heartbeat=3 * H)
    assert isinstance(decide(listed, NOW, RUNAWAY_RULES), Decision)
    verdict = recheck(listed, step(started=25 * H, heartbeat=S), NOW, RUNAWAY_RULES)
    assert isinstance(verdict, Decision)
    assert verdict.trigger is Trigger.MAX_RUNTIME
    young = Rules((), rule(max_runtime=30 * H))
    assert recheck(listed, step(started=25 * H, heartbeat=S), NOW, young) is SkipReason.ALIVE


@pytest.mark.parametrize(
    ("started", "heartbeat", "expected"),
    [
        (23 * H, 1 * M, NOW + 1 * H + TICK),  # runaway first
        (20 * H, 1 * M, NOW + 119 * M + TICK),  # stale first (if it stays silent)
        (20 * H, 119 * M, NOW + 1 * M + TICK),  # stale first
        (1 * H, None, NOW + 1 * H + TICK),  # stale: startedAt + 2h
    ],
)
def test_due_at_is_the_earlier_of_stale_and_runaway(
    started: timedelta, heartbeat: timedelta | None, expected: datetime
) -> None:
    """A precise timer is armed at the first moment decide would mark the step."""
    assert due_at(step(started=started, heartbeat=heartbeat), RUNAWAY_RULES) == expected


def test_a_runaway_under_a_rule_that_never_goes_stale_says_zero() -> None:
    """staleAfterSeconds is 0 when the deciding rule never goes stale (documented)."""
    verdict = decide(step(started=7 * H, step_type="batch"), NOW, NO_HEARTBEAT)
    assert isinstance(verdict, Decision)
    assert (verdict.rule, verdict.stale_after) == ("batch", timedelta(0))
    assert build_update(verdict, NOW, "s", "h", "v").error_details["staleAfterSeconds"] == 0


def test_due_at_for_a_rule_that_never_goes_stale() -> None:
    """startedAt + max_runtime alone when the rule never goes stale."""
    s = step(started=1 * H, step_type="batch")
    assert due_at(s, NO_HEARTBEAT) == s.started_at + 6 * H + TICK
    assert due_at(step(started=1 * H), Rules((), rule(stale_after=None, max_runtime=None))) is None


def test_the_listing_reaches_back_to_the_smallest_limit() -> None:
    """The listing filter is the smallest stale_after or max_runtime of any rule."""
    assert RUNAWAY_RULES.smallest_limit == 2 * H
    assert Rules((rule("batch", None, 30 * M, stepType=["b"]),), rule()).smallest_limit == 30 * M
    assert listing_horizon(NOW, 5 * M, NO_HEARTBEAT) == NOW + 5 * M - 2 * H
    assert Rules((), rule(max_runtime=None)).any_max_runtime is False
    assert NO_HEARTBEAT.any_max_runtime is True


# -- properties -------------------------------------------------------------

ago = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
limits = st.timedeltas(min_value=S, max_value=timedelta(days=3))


@st.composite
def steps(draw: st.DrawFn) -> Step:
    started = draw(ago)
    beat = draw(st.none() | st.timedeltas(min_value=timedelta(0), max_value=started))
    return step(started=started, heartbeat=beat)


@st.composite
def runaway_rules(draw: st.DrawFn) -> Rules:
    stale_after = draw(st.none() | limits)
    max_runtime = draw(limits)
    if stale_after is not None:
        max_runtime = max(max_runtime, stale_after)  # as the settings require
    return Rules((), rule(stale_after=stale_after, max_runtime=max_runtime))


outages = st.lists(st.tuples(ago, ago).map(lambda w: (NOW - max(w), NOW - min(w))), max_size=3).map(
    OutageWindows.of
)


@given(steps(), runaway_rules(), outages)
def test_never_marks_a_step_younger_than_its_max_runtime_as_a_runaway(
    s: Step, rules: Rules, windows: OutageWindows
) -> None:
    """A runaway verdict needs a runtime past the limit; a young step can only be stale."""
    verdict = decide(s, NOW, rules, windows)
    limit = rules.default.max_runtime
    assert limit is not None
    if NOW - s.started_at <= limit:
        assert not (isinstance(verdict, Decision) and verdict.trigger is Trigger.MAX_RUNTIME)
    else:
        assert isinstance(verdict, Decision)  # past it, always marked one way or the other


@given(steps(), runaway_rules(), outages)
def test_stale_wins_over_runaway(s: Step, rules: Rules, windows: OutageWindows) -> None:
    """A step that is stale is a zombie (trigger stale), whatever its runtime."""
    no_runaway = Rules((), rule(stale_after=rules.default.stale_after, max_runtime=None))
    stale = decide(s, NOW, no_runaway, windows)
    verdict = decide(s, NOW, rules, windows)
    if isinstance(stale, Decision):
        assert isinstance(verdict, Decision)
        assert verdict.trigger is Trigger.STALE
        assert verdict.idle == stale.idle


@given(
    steps(), runaway_rules(), st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
)
def test_a_moved_heartbeat_never_saves_a_runaway(s: Step, rules: Rules, moved: timedelta) -> None:
    """A runaway re-read with a later heartbeat (startedAt unchanged) is still marked."""
    verdict = decide(s, NOW, rules)
    if not (isinstance(verdict, Decision) and verdict.trigger is Trigger.MAX_RUNTIME):
        return
    beat = min(NOW, s.last_sign_of_life[1] + moved)
    current = step(started=NOW - s.started_at, heartbeat=NOW - beat)
    again = recheck(s, current, NOW, rules)
    assert isinstance(again, Decision)
    assert again.trigger is Trigger.MAX_RUNTIME


@given(
    steps(),
    runaway_rules(),
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=30)),
)
def test_a_changed_started_at_saves_a_runaway(s: Step, rules: Rules, shift: timedelta) -> None:
    """A runaway whose startedAt changed (it started again) is never marked a runaway."""
    current = step(
        started=NOW - s.started_at - shift if NOW - s.started_at > shift else timedelta(0),
        heartbeat=timedelta(0),
    )
    if current.started_at == s.started_at:
        return
    again = recheck(s, current, NOW, rules)
    assert not isinstance(again, Decision)


def _old_decide(s: Step, now: datetime, rules: Rules, windows: OutageWindows) -> object:
    """The decision before max_runtime existed (the reference for `never`)."""
    if s.status != StepStatus.RUNNING:
        return Spared.NOT_RUNNING
    r = rules.rule_for(s)
    if r.stale_after is None:
        return Spared.EXEMPT
    _, last = s.last_sign_of_life
    idle = now - last - windows.overlap(last, now)
    return Spared.NOT_STALE if idle <= r.stale_after else ("stale", idle)


@given(steps(), st.none() | limits, outages)
def test_never_changes_nothing(
    s: Step, stale_after: timedelta | None, windows: OutageWindows
) -> None:
    """With max_runtime never (the default) the verdict, due moment and filter are as before."""
    r = Rule("r", stale_after, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE, {"stepType": ("x",)})
    for rules in (Rules((r,), rule(max_runtime=None)), Rules((), rule(max_runtime=None))):
        verdict = decide(s, NOW, rules, windows)
        old = _old_decide(s, NOW, rules, windows)
        if isinstance(verdict, Decision):
            assert old == ("stale", verdict.idle)
            assert verdict.trigger is Trigger.STALE
        else:
            assert verdict is old
        assert rules.smallest_limit == rules.smallest_stale_after
    assert decide(s, NOW, Rules((), rule(max_runtime=None)), NO_OUTAGES) == decide(
        s,
        NOW,
        Rules(
            (),
            Rule("default", 2 * H, StepStatus.FAILED, "ZOMBIE_STEP_TIMEOUT", DEFAULT_ERROR_MESSAGE),
        ),
        NO_OUTAGES,
    )


@given(steps(), runaway_rules())
def test_due_at_is_the_first_moment_decide_marks(s: Step, rules: Rules) -> None:
    """A timer armed at due_at fires exactly when decide starts marking (no outages)."""
    due = due_at(s, rules)
    assert due is not None  # every rule here has a max_runtime
    assert not isinstance(decide(s, due - TICK, rules), Decision)
    assert isinstance(decide(s, due, rules), Decision)


def test_mark_without_force_takes_a_runaway_as_past_its_limit() -> None:
    """`sweeper mark` (no --force) refuses a live step, but not one past its max_runtime."""
    hand = manual_rule(StepStatus.FAILED, "X", None)
    runaway = step(started=25 * H, heartbeat=S)
    assert within_limit(runaway, NOW, RUNAWAY_RULES) is None
    assert isinstance(decide_by_hand(runaway, NOW, hand, RUNAWAY_RULES), Decision)
    young = step(started=23 * H, heartbeat=S)
    assert within_limit(young, NOW, RUNAWAY_RULES) is not None
    assert decide_by_hand(young, NOW, hand, RUNAWAY_RULES) is SkipReason.ALIVE


def test_a_runaway_moment_past_the_calendar_arms_nothing() -> None:
    """startedAt + max_runtime beyond datetime.max (a hostile record): no timer."""
    from datetime import UTC

    end = datetime.max.replace(tzinfo=UTC)
    hostile = Step("x", "org", "RUNNING", started_at=end - H, last_heartbeat_at=end - H)
    assert due_at(hostile, Rules((), rule(stale_after=None, max_runtime=24 * H))) is None


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (step(started=25 * H - S, heartbeat=1 * S), Next.DROP),  # changed, already past
        (step(started=30 * H, heartbeat=1 * S), Next.DROP),  # moved earlier, already past
        (step(started=24 * H - M, heartbeat=1 * S), Next.REARM),  # started again: new moment
        (step(started=25 * H, heartbeat=1 * S), Next.WRITE),  # unchanged: heartbeat moved
    ],
)
def test_a_fired_timer_writes_no_runaway_whose_started_at_changed(
    current: Step, expected: Next
) -> None:
    """A fired timer follows the re-read rule: a runaway whose startedAt changed is not
    written from that read, even when its new start is already past max_runtime (dropped,
    left to the next listing); one due later is re-armed from its new start."""
    listed = step(started=25 * H, heartbeat=1 * M)
    verdict = rearm(listed, current, NOW, NOW + 5 * M, RUNAWAY_RULES)
    assert verdict.next is expected
    if expected is Next.DROP:
        assert verdict.reason is SkipReason.ALIVE
