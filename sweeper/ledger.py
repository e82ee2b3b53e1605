"""The ledger of one sweep: its zombies' entries, the halt latch, and the settling
that gives each zombie exactly one outcome and the sweep one end.

Every fate is decided here from what the error carries (`sweeper.errors`): the
writer, the listing and the precise-marking timers hand their errors over, and
`finish` settles whatever is still pending in one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sweeper.errors import (
    FailReason,
    GuardRefused,
    MarkReason,
    Outcome,
    Reason,
    Result,
    SkipReason,
    SweeperError,
    as_error,
)
from sweeper.policy import Decision
from sweeper.report import StepEntry, SweepReport


class Ledger:
    """The entries of one sweep and their settling (one outcome each)."""

    def __init__(self, report: SweepReport, log: Any, token_source: str) -> None:
        self.report = report
        self.counts = report.counts
        self.log = log
        #: Where the token came from, for a refusal's message (never the token).
        self.token_source = token_source
        #: Set once, by the first error that stops every write (its `halts`).
        self.halted: SweeperError | None = None
        #: The error that ended the sweep, if one did.
        self.ended_by: SweeperError | None = None
        #: Called once when the latch closes (precise marking stops napping).
        self.on_halt: Callable[[], None] = lambda: None

    @property
    def sweep_id(self) -> str:
        return self.report.sweep_id

    def new_entry(self, step_id: str, organization_id: str) -> StepEntry:
        """A zombie of this sweep from now on: its one report entry."""
        entry = StepEntry(stepId=step_id, organizationId=organization_id)
        self.report.entries.append(entry)
        return entry

    # -- the sweep's end -----------------------------------------------------

    def end(self, error: SweeperError) -> None:
        """The sweep ends with this error: its result, and the one event that says so."""
        self.ended_by = error
        self.report.end(error)
        if isinstance(error, GuardRefused):
            self.log.error("sweep.refused", **error.log_fields())
            return
        refused = error.result is Result.TOKEN_REFUSED
        # Where the refused token came from (never the token).
        detail = {"token_source": self.token_source} if refused else {}
        self.log.error("sweep.aborted", **error.log_fields(), **detail)

    def halt(self, error: SweeperError) -> None:
        """Stop every write not yet sent; the first error wins."""
        if self.halted is not None:
            return
        self.halted = error
        self.on_halt()
        self.end(error)

    def finish(self, *, stopped: bool, finished_at: datetime, duration_ms: int) -> None:
        """Settle every zombie still pending, count, and say how the sweep ended."""
        report = self.report
        if stopped and report.result is Result.COMPLETED:
            report.result = Result.INTERRUPTED
        # What stopped every write says the fate of the zombies still pending; else
        # they were not attempted because the sweep ended as it did.
        stopper = self.halted or self.ended_by
        if stopper is not None and stopper.halts:
            leftover, reason = stopper.outcome, stopper.reason
        else:
            leftover, reason = Outcome.NOT_ATTEMPTED, report.result
        for entry in report.entries:
            if entry.outcome is Outcome.PENDING and entry.attempts:
                # Sent before the sweep stopped: never "refused" or "not attempted".
                self.fail_unknown(entry, reason, "the sweep stopped before an answer came")
        report.settle_pending(leftover, reason)
        report.tally()
        report.finished_at = finished_at
        self.log.info(
            "sweep.finished",
            result=report.result.value,
            exit_code=int(report.exit_code),
            duration_ms=duration_ms,
            **self.counts,
        )

    # -- one zombie ----------------------------------------------------------

    def settle(self, entry: StepEntry, exc: Exception) -> None:
        """The one place where an error becomes a zombie's outcome: the fate it carries.
        An entry already settled raises it again (a bug: the sweep ends crashed)."""
        if entry.outcome is not Outcome.PENDING:
            raise exc
        error = as_error(exc)
        if error.halts:
            # This write and every one not yet sent: settled by `finish` (after an
            # earlier attempt whose fate is unknown, failed).
            self.halt(error)
        elif error.outcome is Outcome.SKIPPED:
            self.skip(entry, SkipReason(error.reason))
        else:
            self.fail(entry, FailReason(error.reason), error)

    def marked(
        self,
        entry: StepEntry,
        decision: Decision,
        outcome: Outcome,
        now: datetime,
        reason: MarkReason | None = None,
    ) -> None:
        """Marked (or would be, in a dry run); `now` on the platform's clock, for the lag."""
        entry.settle(outcome, reason)
        if outcome is Outcome.MARKED and not self.report.manual:
            # Detection lag: from the moment the step crossed its limit to its write.
            lag = now - decision.crossed_at
            entry.lagSeconds = round(lag.total_seconds(), 3)
        self.log.info(
            "step.marked" if outcome is Outcome.MARKED else "step.would_mark",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            status=decision.status.value,
            error_code=decision.error_code,
            rule=decision.rule,
            idle_seconds=int(decision.idle.total_seconds()),
            # A dry run sends nothing: no `attempts=None` for a person to puzzle over.
            **({"attempts": entry.attempts} if entry.attempts is not None else {}),
            **_trigger_fields(decision),
            **({"detail": reason.value} if reason else {}),
        )

    def skip(self, entry: StepEntry, reason: SkipReason) -> None:
        if entry.unconfirmed:
            # A write went out whose answer was lost: "skipped" would claim none did.
            self.fail_unknown(entry, reason, "an earlier write's answer was lost")
            return
        entry.settle(Outcome.SKIPPED, reason)
        # Stop and deadline skips can be hundreds at once: counted in sweep.finished.
        quiet = reason in (SkipReason.SHUTDOWN, SkipReason.DEADLINE)
        (self.log.debug if quiet else self.log.info)(
            "step.skipped",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            reason=reason.value,
            rule=entry.rule,
        )

    def fail_unknown(self, entry: StepEntry, reason: Reason, error: str) -> None:
        """A write went out and no answer told whether it was applied: failed."""
        self.failed(entry, reason, f"{error}; it may have been applied")

    def fail(self, entry: StepEntry, reason: FailReason, exc: SweeperError) -> None:
        entry.httpStatus = exc.http_status
        entry.attempts = entry.attempts or exc.attempts
        self.failed(entry, reason, str(exc))

    def failed(self, entry: StepEntry, reason: Reason, error: str) -> None:
        """Settle a zombie as failed and say why: the one `step.failed`."""
        entry.settle(Outcome.FAILED, reason)
        self.log.warning(
            "step.failed",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            reason=reason.value,
            http_status=entry.httpStatus,
            attempts=entry.attempts,
            error=error,
        )


def fill(entry: StepEntry, decision: Decision) -> None:
    """What the report says of a zombie's decision."""
    entry.rule = decision.rule
    entry.status = decision.status.value
    entry.errorCode = decision.error_code
    entry.idleSeconds = int(decision.idle.total_seconds())
    entry.trigger = None if decision.trigger is None else decision.trigger.value
    entry.runtimeSeconds = (
        None if decision.runtime is None else int(decision.runtime.total_seconds())
    )


def _trigger_fields(decision: Decision) -> dict[str, Any]:
    """What made the step a zombie, for `step.marked`: `trigger`, and a runaway's runtime."""
    fields: dict[str, Any] = {}
    if decision.trigger is not None:
        fields["trigger"] = decision.trigger.value
    if decision.runtime is not None and decision.max_runtime is not None:
        fields["runtime_seconds"] = int(decision.runtime.total_seconds())
        fields["max_runtime_seconds"] = int(decision.max_runtime.total_seconds())
    return fields
