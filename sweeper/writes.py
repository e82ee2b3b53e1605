"""Writing one zombie: re-read, judge, write, retry, and settle its one outcome.

A mixin of the sweep in progress (`sweep._Run`): every write, a listing's or a
precise-marking timer's, goes through `handle`, and every error becomes an
outcome in one place (`settle_failure`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sweeper.api import step_url
from sweeper.errors import (
    DeadlineReached,
    FailReason,
    GuardRefused,
    InvalidAnswer,
    LeaseLost,
    MarkReason,
    Outcome,
    PlatformUnavailable,
    Reason,
    SkipReason,
    StepConflict,
    SweeperError,
    TokenRefused,
    WriteAppliedUnderSkew,
    WriteUnanswered,
    as_error,
)
from sweeper.guards import why_not_start
from sweeper.model import Step
from sweeper.policy import Decision, applied_by, build_update
from sweeper.report import StepEntry, SweepReport

if TYPE_CHECKING:
    from sweeper.api import PlatformClient
    from sweeper.sweep import SweepConfig, Sweeper

#: Answers that say a write was not processed at all (the platform refused to look at
#: it); any other failed attempt may have been applied.
NOT_PROCESSED = frozenset({408, 429, 503})

#: How a step is judged again from a fresh read: a Decision to write, or why not.
Judge = Callable[[Step | None], Decision | SkipReason]


class Writes:
    """The write path of a sweep in progress; `_Run` provides the state it reads."""

    s: Sweeper
    cfg: SweepConfig
    client: PlatformClient
    report: SweepReport
    log: Any
    deadline_at: float
    halted: SweeperError | None

    def halt(self, error: SweeperError) -> None:
        raise NotImplementedError  # pragma: no cover - _Run's

    def why_not_start(self, deadline_at: float | None = None) -> SkipReason | None:
        deadline = self.deadline_at if deadline_at is None else deadline_at
        return why_not_start(self.s.stop.is_set(), self.s.monotonic(), deadline)

    async def handle(
        self,
        judge: Judge,
        entry: StepEntry,
        verdict: Decision | SkipReason | None,
        deadline_at: float | None = None,
        reserved: bool = False,
    ) -> None:
        """Settle one zombie. `verdict` is the first attempt's judgement (None: re-read
        first; given after a re-read with `then_write`: `reserved`, its rate-limit slot
        is held); `deadline_at` replaces the sweep's deadline (a timer's own)."""
        try:
            await self.attempt_writes(judge, entry, verdict, deadline_at, reserved)
        except Exception as exc:
            self.settle_failure(entry, exc)

    async def attempt_writes(
        self,
        judge: Judge,
        entry: StepEntry,
        verdict: Decision | SkipReason | None,
        deadline_at: float | None,
        reserved: bool = False,
    ) -> None:
        """Re-read, judge, write; after an unanswered write, wait and do it all again."""
        client, sweep_id = self.client, self.report.sweep_id
        step_id, org = entry.stepId, entry.organizationId
        attempts, resolve_only = 0, False
        decision: Decision | None = None
        unsettled: Decision | None = None  # a write went out and no answer confirmed it
        while True:
            if self.halted is not None:
                if unsettled is not None:
                    await self.settled_by_reread(entry, unsettled)
                return  # or pending; settled with the halt's outcome
            reason = self.why_not_start(deadline_at)
            if reason is not None:
                if unsettled is None or not await self.settled_by_reread(entry, unsettled):
                    self.skip(entry, reason)
                return
            if verdict is None:
                try:
                    current = await client.get_step(
                        step_id,
                        org,
                        then_write=not self.cfg.dry_run,
                        give_up_at=self.deadline_at if deadline_at is None else deadline_at,
                    )
                except SweeperError:
                    if unsettled is not None and await self.settled_by_reread(entry, unsettled):
                        return
                    raise
                if decision is not None and applied_by(current, sweep_id, decision.status):
                    # An earlier attempt was applied though its answer was lost.
                    self.settle(entry, decision, Outcome.MARKED, MarkReason.APPLIED_EARLIER)
                    return
                verdict = SkipReason.CONFLICT if resolve_only else judge(current)
                reserved = True  # then_write: the write's rate-limit slot is held
            if isinstance(verdict, SkipReason):
                self.skip(entry, verdict)
                return
            decision, verdict = verdict, None
            fill(entry, decision)
            if self.cfg.dry_run:
                self.settle(entry, decision, Outcome.WOULD_MARK)
                return
            # Nothing awaits between the re-read above and the write below but these checks.
            if self.halted is not None:
                return
            reason = self.why_not_start(deadline_at)
            if reason is not None:
                self.skip(entry, reason)
                return
            update = build_update(
                decision, self.s.clock(), sweep_id, self.cfg.host, self.cfg.version
            )
            attempts += 1
            entry.attempts = attempts
            give_up_at = self.deadline_at if deadline_at is None else deadline_at
            try:
                await client.patch_step(step_id, update, reserved=reserved, give_up_at=give_up_at)
            except LeaseLost:
                entry.attempts = attempts - 1  # refused before it was sent
                raise
            except TokenRefused as exc:
                self.halt(exc)
                if exc.attempts:  # sent and refused; else never sent: not_attempted
                    self.fail(entry, FailReason.TOKEN_REFUSED, exc)
                return
            except WriteAppliedUnderSkew as exc:
                self.settle(entry, decision, Outcome.MARKED)
                self.halt(exc)
                return
            except GuardRefused as exc:
                # An answer that tripped a guard (its Date too far off) and confirmed
                # nothing: the guard stops the sweep, a settling re-read says if it landed.
                self.halt(exc)
                await self.settled_by_reread(entry, decision)
                return  # or pending, with its attempt: failed at the end
            except WriteUnanswered as exc:
                if exc.http_status not in NOT_PROCESSED:
                    entry.unconfirmed = True  # it may have been applied: never "skipped"
                unsettled = decision
                if attempts >= client.max_attempts or not await self.wait_to_retry(
                    entry, exc, attempts, deadline_at
                ):
                    if await self.settled_by_reread(entry, decision):
                        return
                    raise
                continue
            except (InvalidAnswer, PlatformUnavailable) as exc:
                # A 2xx that is no success, a Retry-After too long: it may have landed.
                # (DeadlineReached: not sent, its rate-limit slot came too late.)
                if not isinstance(exc, DeadlineReached) and await self.settled_by_reread(
                    entry, decision
                ):
                    return
                raise
            except StepConflict:
                if attempts == 1:
                    raise
                resolve_only = True  # a 409 on a retry: was the lost attempt ours?
                continue
            self.settle(entry, decision, Outcome.MARKED)
            return

    async def settled_by_reread(self, entry: StepEntry, decision: Decision) -> bool:
        """The last attempt's answer did not confirm the write (lost, transient, broken):
        one more re-read settles it. This sweep's own write is `marked`; anything else,
        or a re-read that fails too, leaves the outcome to the caller."""
        try:
            current = await self.client.settle_read(entry.stepId, entry.organizationId)
        except SweeperError:
            return False
        if not applied_by(current, self.report.sweep_id, decision.status):
            return False
        self.settle(entry, decision, Outcome.MARKED, MarkReason.APPLIED_EARLIER)
        return True

    async def wait_to_retry(
        self, entry: StepEntry, exc: WriteUnanswered, attempts: int, deadline_at: float | None
    ) -> bool:
        """Wait before the next attempt, unless that would cross the deadline or a stop."""
        wait = exc.retry_after or 0.0
        if self.s.monotonic() + wait >= (self.deadline_at if deadline_at is None else deadline_at):
            return False
        await self.client.wait_to_retry("PATCH", step_url(entry.stepId), exc, attempts)
        return not self.s.stop.is_set()

    def settle_failure(self, entry: StepEntry, exc: Exception) -> None:
        """The one place where an error becomes a zombie's outcome: the fate it carries."""
        if entry.outcome is not Outcome.PENDING:
            raise exc
        error = as_error(exc)
        if error.halts:
            # This write and every one not yet sent: settled when the sweep ends (after
            # an earlier attempt whose fate is unknown, failed; see finish).
            self.halt(error)
        elif error.outcome is Outcome.SKIPPED:
            self.skip(entry, SkipReason(error.reason))
        else:
            self.fail(entry, FailReason(error.reason), error)

    # -- outcomes ------------------------------------------------------------

    def settle(
        self,
        entry: StepEntry,
        decision: Decision,
        outcome: Outcome,
        reason: MarkReason | None = None,
    ) -> None:
        entry.settle(outcome, reason)
        if outcome is Outcome.MARKED and not self.report.manual:
            # Detection lag: from the moment the step crossed its limit to its write.
            lag = self.s.platform_now() - decision.crossed_at
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
