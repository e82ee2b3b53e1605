"""The decision core, as tables: no clock, no I/O."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sweeper.devserver.state import COMPLETED_AT_PATTERN
from sweeper.model import StepStatus
from sweeper.outages import OutageWindows
from sweeper.policy import (
    DEFAULT_ERROR_MESSAGE,
    Decision,
    Rule,
    Rules,
    SkipReason,
    Spared,
    applied_by,
    build_update,
    decide,
    decide_by_hand,
    manual_rule,
    recheck,
    within_limit,
)
from tests.fakes import NOW, step

H = timedelta(hours=1)
M = timedelta(minutes=1)


def rule(name: str = "default", stale_after: timedelta | None = 2 * H, **match: list[str]) -> Rule:
    return Rule(
        name=name,
        stale_after=stale_after,
        status=StepStatus.FAILED if name == "default" else StepStatus.CANCELLED,
        error_code="ZOMBIE_STEP_TIMEOUT" if name == "default" else f"CODE_{name.upper()}",
        error_message=DEFAULT_ERROR_MESSAGE,
        match={k: tuple(v) for k, v in match.items()},
    )


DEFAULT = Rules((), rule())


@pytest.mark.parametrize(
    ("started", "updated", "heartbeat", "expected_field", "zombie"),
    [
        (5 * H, None, None, "startedAt", True),
        (5 * H, 1 * H, None, "updatedAt", False),
        (5 * H, 3 * H, None, "updatedAt", True),
        (5 * H, None, 30 * M, "lastHeartbeatAt", False),
        (5 * H, 4 * H, 3 * H, "lastHeartbeatAt", True),
        (5 * H, 1 * H, 3 * H, "updatedAt", False),
        (2 * H, None, None, "startedAt", False),  # exactly at the limit: not yet
        (2 * H + timedelta(seconds=1), None, None, "startedAt", True),
        (1 * H, None, None, "startedAt", False),
    ],
)
def test_last_sign_of_life_is_the_latest_known_time(
    started: timedelta,
    updated: timedelta | None,
    heartbeat: timedelta | None,
    expected_field: str,
    zombie: bool,
) -> None:
    """Idle time runs from the latest of startedAt, updatedAt and lastHeartbeatAt."""
    s = step(started=started, updated=updated, heartbeat=heartbeat)
    verdict = decide(s, NOW, DEFAULT)
    assert s.last_sign_of_life[0] == expected_field
    if zombie:
        assert isinstance(verdict, Decision)
        assert verdict.last_sign_of_life_field == expected_field
        assert verdict.idle == NOW - s.last_sign_of_life[1]
    else:
        assert verdict is Spared.NOT_STALE


RULES = Rules(
    (
        rule("cancelled", 30 * M, workflowRunStatus=["CANCELLED"]),
        rule("etl", 6 * H, stepType=["extract", "load*"], organizationId=["org-*"]),
        rule("frozen", None, stepType=["manual-*"]),
    ),
    rule(),
)


@pytest.mark.parametrize(
    ("fields", "started", "expected"),
    [
        ({"workflow_run_status": "CANCELLED"}, 1 * H, "cancelled"),
        ({"workflow_run_status": "CANCELLED", "step_type": "extract"}, 1 * H, "cancelled"),
        ({"step_type": "extract"}, 5 * H, Spared.NOT_STALE),
        ({"step_type": "extract"}, 7 * H, "etl"),
        ({"step_type": "loader"}, 7 * H, "etl"),
        ({"step_type": "Extract"}, 3 * H, "default"),  # globs are case-sensitive
        ({"step_type": "manual-approval"}, 100 * H, Spared.EXEMPT),
        ({}, 3 * H, "default"),
        ({"workflow_run_status": "RUNNING"}, 1 * H, Spared.NOT_STALE),
    ],
)
def test_first_matching_rule_decides(
    fields: dict[str, str], started: timedelta, expected: str | Spared
) -> None:
    """Rules apply in order; the first whose every field fits decides; `never` exempts."""
    verdict = decide(step(started=started, **fields), NOW, RULES)
    if isinstance(expected, Spared):
        assert verdict is expected
    else:
        assert isinstance(verdict, Decision)
        assert verdict.rule == expected


def test_a_field_the_step_lacks_never_matches() -> None:
    """A rule on stepType does not fit a step without stepType, even with pattern '*'."""
    rules = Rules((rule("any-type", 10 * M, stepType=["*"]),), rule())
    without = decide(step(started=1 * H), NOW, rules)
    with_type = decide(step(started=1 * H, step_type="x"), NOW, rules)
    assert without is Spared.NOT_STALE
    assert isinstance(with_type, Decision)
    assert with_type.rule == "any-type"


def test_decision_carries_the_rules_status_code_and_message() -> None:
    """The message template is filled with idle, limit, status and rule."""
    template_rule = Rule(
        "r", 30 * M, StepStatus.CANCELLED, "RUN_CANCELLED", "{rule}:{status}:{idle}:{stale_after}"
    )
    verdict = decide(step(started=90 * M), NOW, Rules((), template_rule))
    assert isinstance(verdict, Decision)
    assert (verdict.status, verdict.error_code) == (StepStatus.CANCELLED, "RUN_CANCELLED")
    assert verdict.error_message == "r:CANCELLED:1h 30m:30m"


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (None, SkipReason.GONE),
        (step(status="SUCCEEDED"), SkipReason.FINISHED),
        (step(status="FAILED"), SkipReason.FINISHED),
        (step(heartbeat=1 * M), SkipReason.ALIVE),
        (step(updated=3 * H), SkipReason.ALIVE),  # moved since the listing, still stale
        (step(), "decision"),
    ],
)
def test_recheck_leaves_changed_steps_alone(current: object, expected: object) -> None:
    """A step that finished, moved or vanished since the listing keeps its real state."""
    listed = step()
    verdict = recheck(listed, current, NOW, DEFAULT)  # type: ignore[arg-type]
    if expected == "decision":
        assert isinstance(verdict, Decision)
    else:
        assert verdict is expected


def test_recheck_spares_a_step_no_longer_stale_under_a_new_rule() -> None:
    """If the fresh read now matches a longer rule, the step is alive, not marked."""
    rules = Rules((rule("slow", 10 * H, stepType=["slow"]),), rule())
    listed = step(started=5 * H)
    assert recheck(listed, step(started=5 * H, step_type="slow"), NOW, rules) is SkipReason.ALIVE


def test_build_update_has_exactly_the_documented_fields() -> None:
    """errorDetails holds the documented keys; retryCount only when the platform gave one."""
    decision = decide(step(started=3 * H, retry_count=2), NOW, DEFAULT)
    assert isinstance(decision, Decision)
    update = build_update(decision, NOW, "sweep-1", "host-a", "9.9.9")
    assert update.organization_id == "org-a"
    assert (update.status, update.error_code) == (StepStatus.FAILED, "ZOMBIE_STEP_TIMEOUT")
    assert update.error_message == decision.error_message
    assert update.completed_at == "2026-05-23T12:00:00.000Z"
    assert update.error_details == {
        "sweepId": "sweep-1",
        "rule": "default",
        "idleSeconds": 3 * 3600,
        "staleAfterSeconds": 2 * 3600,
        "lastSignOfLifeField": "startedAt",
        "lastSignOfLifeAt": "2026-05-23T09:00:00.000Z",
        "retryCount": 2,
        "sweeperVersion": "9.9.9",
        "sweptBy": "host-a",
        "trigger": "stale",
    }
    no_retry = decide(step(started=3 * H), NOW, DEFAULT)
    assert isinstance(no_retry, Decision)
    assert "retryCount" not in build_update(no_retry, NOW, "s", "h", "v").error_details
    assert COMPLETED_AT_PATTERN.match(update.completed_at)


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        ([], timedelta(0)),
        ([(NOW - 2 * H, NOW - 1 * H)], 1 * H),
        ([(NOW - 10 * H, NOW - 1 * H)], 2 * H),  # clipped at the last sign of life
        ([(NOW - 10 * H, NOW - 5 * H)], timedelta(0)),  # before it: irrelevant
        ([(NOW - 1 * H, NOW + 1 * H)], 1 * H),  # an open window is clipped at now
        ([(NOW - 2 * H, NOW - 90 * M), (NOW - 30 * M, NOW - 20 * M)], 40 * M),
    ],
)
def test_outage_overlap_counts_only_time_since_the_last_sign_of_life(
    windows: list[tuple[object, object]], expected: timedelta
) -> None:
    """Only the part of each outage window inside (last sign of life, now] is discounted."""
    assert OutageWindows.of(windows).overlap(NOW - 3 * H, NOW) == expected  # type: ignore[arg-type]


def test_outage_time_does_not_count_toward_idle_time() -> None:
    """A step idle 3h of which 1h30 was a platform outage is not stale under a 2h limit."""
    s = step(started=3 * H)
    outage = OutageWindows.of([(NOW - 2 * H, NOW - 30 * M)])
    assert decide(s, NOW, DEFAULT, outage) is Spared.NOT_STALE
    longer = decide(step(started=4 * H), NOW, DEFAULT, outage)
    assert isinstance(longer, Decision)
    assert longer.idle == 4 * H - 90 * M
    update = build_update(longer, NOW, "s", "h", "v")
    assert update.error_details["outageDiscountSeconds"] == 90 * 60


@pytest.mark.parametrize(
    "heartbeat", [timedelta(seconds=5), timedelta(0), -timedelta(minutes=3)], ids=str
)
def test_manual_rule_marks_any_running_step(heartbeat: timedelta) -> None:
    """`sweeper mark` marks a RUNNING step whatever its heartbeat, even one ahead of our clock."""
    rule = manual_rule(StepStatus.CANCELLED, "BY_HAND", None)
    verdict = decide_by_hand(step(heartbeat=heartbeat), NOW, rule)
    assert isinstance(verdict, Decision)
    assert (verdict.rule, verdict.status, verdict.error_code) == (
        "manual",
        StepStatus.CANCELLED,
        "BY_HAND",
    )
    assert verdict.idle == max(heartbeat, timedelta(0))
    assert decide_by_hand(step(status="SUCCEEDED"), NOW, rule) is SkipReason.FINISHED
    assert decide_by_hand(None, NOW, rule) is SkipReason.GONE


@pytest.mark.parametrize(
    ("heartbeat", "stale_after", "verdict"),
    [
        (timedelta(seconds=55), timedelta(hours=2), SkipReason.ALIVE),
        (timedelta(hours=2), timedelta(hours=2), SkipReason.ALIVE),  # at the limit: not past
        (timedelta(hours=2, seconds=1), timedelta(hours=2), Decision),
        (timedelta(days=9), None, SkipReason.ALIVE),  # its rule says never
        (timedelta(seconds=2), timedelta(seconds=1), Decision),  # any time scale
    ],
    ids=str,
)
def test_by_hand_without_force_respects_the_limit(
    heartbeat: timedelta, stale_after: timedelta | None, verdict: object
) -> None:
    """`mark` without --force marks only a step past its configured limit."""
    limits = Rules((), rule("default", stale_after))
    silent = step(started=heartbeat, heartbeat=heartbeat)
    by_hand = manual_rule(StepStatus.FAILED, "MARKED_BY_HAND", None)
    got = decide_by_hand(silent, NOW, by_hand, limits)
    if verdict is Decision:
        assert isinstance(got, Decision)
        assert within_limit(silent, NOW, limits) is None
    else:
        assert got is verdict
        within = within_limit(silent, NOW, limits)
        assert within is not None
        assert (within.idle, within.stale_after) == (heartbeat, stale_after)


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED", "CANCELLED", "PENDING", "running"])
def test_only_running_steps_are_zombies(status: str) -> None:
    """A listed record that is not RUNNING is never marked, whatever the listing was asked."""
    assert decide(step(status=status, started=30 * H), NOW, DEFAULT) is Spared.NOT_RUNNING


def test_own_write_is_recognised_by_status_and_sweep_id() -> None:
    """A re-read showing this sweep's status and sweepId means the lost attempt was applied."""
    mine = step(status="FAILED", marked_by_sweep="sw1")
    assert applied_by(mine, "sw1", StepStatus.FAILED)
    assert not applied_by(mine, "sw2", StepStatus.FAILED)
    assert not applied_by(mine, "sw1", StepStatus.CANCELLED)
    assert not applied_by(step(status="FAILED"), "sw1", StepStatus.FAILED)
    assert not applied_by(None, "sw1", StepStatus.FAILED)


def test_smallest_stale_after_ignores_exempt_rules() -> None:
    """The listing filter uses the smallest real limit of all rules."""
    assert RULES.smallest_stale_after == 30 * M
    assert Rules((rule("never", None, stepType=["x"]),), rule()).smallest_stale_after == 2 * H


def test_recheck_applies_the_outage_discount_too() -> None:
    """The re-read decision discounts outages like the listing's did."""
    s = step(started=3 * H)
    outage = OutageWindows.of([(NOW - 2 * H, NOW - 30 * M)])
    assert recheck(s, s, NOW, DEFAULT, outage) is SkipReason.ALIVE
    assert isinstance(recheck(s, s, NOW, DEFAULT), Decision)


def test_manual_decision_has_no_limit_and_names_its_sign_of_life() -> None:
    """`sweeper mark`: stale_after is zero (not None, not a day), and the sign of life is named."""
    by_hand = manual_rule(StepStatus.FAILED, "BY_HAND", "after {idle}, limit {stale_after}")
    assert by_hand.stale_after == timedelta(0)
    verdict = decide_by_hand(step(heartbeat=3 * M), NOW, by_hand)
    assert isinstance(verdict, Decision)
    assert (verdict.stale_after, verdict.error_message) == (timedelta(0), "after 3m, limit 0s")
    assert verdict.last_sign_of_life_field == "lastHeartbeatAt"
    details = build_update(verdict, NOW, "s", "h", "v").error_details
    assert (details["staleAfterSeconds"], details["lastSignOfLifeField"]) == (0, "lastHeartbeatAt")
