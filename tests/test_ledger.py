"""What the ledger says of each zombie and of the sweep's end: every event with its level
and fields (operations.md "Log events"), and what each fate writes into the report."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from sweeper.errors import (
    BodyRejected,
    FailReason,
    MarkReason,
    Outcome,
    PlatformUnavailable,
    Result,
    SkipReason,
    TokenRefused,
)
from sweeper.ledger import Ledger, fill
from sweeper.model import StepStatus
from sweeper.policy import Decision, Trigger
from sweeper.report import SweepReport
from tests.fakes import NOW, step

IDLE = timedelta(seconds=400.7)
LIMIT = timedelta(seconds=300)


class Log:
    """Every event with its level."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append((level, event, fields))


def book(*, dry_run: bool = False, manual: bool = False) -> tuple[Ledger, Log]:
    log = Log()
    report = SweepReport(sweep_id="sw-1", started_at=NOW, dry_run=dry_run, manual=manual)
    return Ledger(report, log, "the token file"), log


def decision() -> Decision:
    return Decision(
        step=step("s1", org="org-a"),
        rule="etl",
        status=StepStatus.FAILED,
        error_code="ZOMBIE",
        error_message="no heartbeat",
        idle=IDLE,
        stale_after=LIMIT,
        last_sign_of_life_field="lastHeartbeatAt",
        last_sign_of_life_at=NOW - IDLE,
    )


MARKED_FIELDS = {
    "step_id": "s1",
    "organization_id": "org-a",
    "status": "FAILED",
    "error_code": "ZOMBIE",
    "rule": "etl",
    "idle_seconds": 400,
    "trigger": "stale",
}


def test_a_marked_step_is_logged_with_its_decision_and_its_lag() -> None:
    """`step.marked` with every field of the decision and the attempts it took; the lag
    from crossing the limit to the write, to the millisecond."""
    ledger, log = book()
    entry = ledger.new_entry("s1", "org-a")
    entry.attempts = 2
    written = NOW + timedelta(seconds=1.23456)
    ledger.marked(entry, decision(), Outcome.MARKED, written)
    assert (entry.outcome, entry.reason) == (Outcome.MARKED, None)
    assert entry.lagSeconds == 101.935  # 400.7 s idle, 300 s limit, 1.23456 s later
    assert log.events == [("info", "step.marked", {**MARKED_FIELDS, "attempts": 2})]


def test_a_mark_applied_earlier_says_so() -> None:
    """A write an earlier attempt applied: marked, with the reason in the entry and the event."""
    ledger, log = book()
    entry = ledger.new_entry("s1", "org-a")
    entry.attempts = 3
    ledger.marked(entry, decision(), Outcome.MARKED, NOW, MarkReason.APPLIED_EARLIER)
    assert (entry.outcome, entry.reason) == (Outcome.MARKED, MarkReason.APPLIED_EARLIER)
    assert log.events[0][2]["detail"] == "applied_earlier"


@pytest.mark.parametrize(("dry_run", "manual"), [(True, False), (False, True)])
def test_no_lag_without_a_write_decided_by_a_limit(dry_run: bool, manual: bool) -> None:
    """A dry run writes nothing (no lag, no `attempts`); a mark by hand has no limit
    crossed (no lag)."""
    ledger, log = book(dry_run=dry_run, manual=manual)
    entry = ledger.new_entry("s1", "org-a")
    outcome = Outcome.WOULD_MARK if dry_run else Outcome.MARKED
    if not dry_run:
        entry.attempts = 1
    ledger.marked(entry, decision(), outcome, NOW + timedelta(seconds=5))
    assert entry.lagSeconds is None
    event = "step.would_mark" if dry_run else "step.marked"
    fields = MARKED_FIELDS if dry_run else {**MARKED_FIELDS, "attempts": 1}
    assert log.events == [("info", event, fields)]


@pytest.mark.parametrize(
    ("reason", "level"),
    [
        (SkipReason.GONE, "info"),
        (SkipReason.CONFLICT, "info"),
        (SkipReason.SHUTDOWN, "debug"),
        (SkipReason.DEADLINE, "debug"),
    ],
)
def test_a_skipped_step_is_logged_with_its_reason_and_rule(reason: SkipReason, level: str) -> None:
    """`step.skipped` at info; stop and deadline skips (hundreds at once) at debug only."""
    ledger, log = book()
    entry = ledger.new_entry("s1", "org-a")
    entry.rule = "etl"
    ledger.skip(entry, reason)
    assert (entry.outcome, entry.reason) == (Outcome.SKIPPED, reason)
    fields = {"step_id": "s1", "organization_id": "org-a", "reason": reason.value, "rule": "etl"}
    assert log.events == [(level, "step.skipped", fields)]


def test_a_skip_after_a_lost_answer_is_a_failure_that_may_have_been_applied() -> None:
    """A write went out whose answer was lost: "skipped" would claim none did."""
    ledger, log = book()
    entry = ledger.new_entry("s1", "org-a")
    entry.unconfirmed, entry.attempts, entry.httpStatus = True, 2, 503
    ledger.skip(entry, SkipReason.DEADLINE)
    assert (entry.outcome, entry.reason) == (Outcome.FAILED, SkipReason.DEADLINE)
    assert log.events == [
        (
            "warning",
            "step.failed",
            {
                "step_id": "s1",
                "organization_id": "org-a",
                "reason": "deadline",
                "http_status": 503,
                "attempts": 2,
                "error": "an earlier write's answer was lost; it may have been applied",
            },
        )
    ]


def test_a_failed_step_is_logged_with_what_the_platform_answered() -> None:
    ledger, log = book()
    entry = ledger.new_entry("s1", "org-a")
    ledger.settle(entry, BodyRejected("400: errorCode too long", http_status=400, attempts=3))
    assert (entry.outcome, entry.reason) == (Outcome.FAILED, FailReason.REJECTED)
    assert (entry.httpStatus, entry.attempts) == (400, 3)
    assert log.events == [
        (
            "warning",
            "step.failed",
            {
                "step_id": "s1",
                "organization_id": "org-a",
                "reason": "rejected",
                "http_status": 400,
                "attempts": 3,
                "error": "400: errorCode too long",
            },
        )
    ]


def test_the_sweep_ends_with_one_event_that_counts_every_outcome() -> None:
    """Stopped with a write sent and unanswered: that zombie failed (it may have been
    applied), the one never sent was not attempted; `sweep.finished` says the result,
    the exit code, the duration and every count."""
    ledger, log = book()
    sent, unsent = ledger.new_entry("s1", "org-a"), ledger.new_entry("s2", "org-a")
    sent.attempts = 1
    ledger.finish(stopped=True, finished_at=NOW, duration_ms=1234)
    assert ledger.report.result is Result.INTERRUPTED
    assert ledger.report.finished_at == NOW
    assert (sent.outcome, sent.reason) == (Outcome.FAILED, Result.INTERRUPTED)
    assert (unsent.outcome, unsent.reason) == (Outcome.NOT_ATTEMPTED, Result.INTERRUPTED)
    (failed_level, failed, failed_fields), (level, finished, fields) = log.events
    assert (failed_level, failed) == ("warning", "step.failed")
    assert failed_fields["error"] == (
        "the sweep stopped before an answer came; it may have been applied"
    )
    assert (level, finished) == ("info", "sweep.finished")
    assert fields == {
        "result": "interrupted",
        "exit_code": int(ledger.report.exit_code),
        "duration_ms": 1234,
        **ledger.counts,
    }
    assert fields["zombies"] == 2 and fields["failed"] == 1 and fields["not_attempted"] == 1


def test_only_a_token_refusal_says_where_the_token_came_from() -> None:
    """`sweep.aborted` names the token's source for a refused token only."""
    ledger, log = book()
    ledger.halt(PlatformUnavailable("connect failed"))
    assert log.events == [
        ("error", "sweep.aborted", {"result": "unavailable", "error": "connect failed"})
    ]
    ledger, log = book()
    ledger.halt(TokenRefused("401"))
    assert log.events[0][2]["token_source"] == "the token file"


def test_a_runaway_says_how_long_it_ran_and_its_limit() -> None:
    """A step marked for its runtime: `trigger` max_runtime, with the runtime and the
    rule's limit in whole seconds, in the event and in the report entry."""
    ledger, log = book()
    runaway = replace(
        decision(),
        trigger=Trigger.MAX_RUNTIME,
        runtime=timedelta(hours=5, seconds=0.9),
        max_runtime=timedelta(hours=4),
    )
    entry = ledger.new_entry("s1", "org-a")
    fill(entry, runaway)
    assert (entry.trigger, entry.runtimeSeconds, entry.idleSeconds) == ("max_runtime", 18000, 400)
    assert (entry.rule, entry.status, entry.errorCode) == ("etl", "FAILED", "ZOMBIE")
    entry.attempts = 1
    ledger.marked(entry, runaway, Outcome.MARKED, NOW)
    assert log.events == [
        (
            "info",
            "step.marked",
            {
                **MARKED_FIELDS,
                "attempts": 1,
                "trigger": "max_runtime",
                "runtime_seconds": 18000,
                "max_runtime_seconds": 14400,
            },
        )
    ]
    assert entry.lagSeconds == 3600.0  # crossed its limit an hour before now
