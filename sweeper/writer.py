"""The writer of one sweep: re-read, judge, write, retry; each zombie's fate goes to
the ledger. The listing and the precise-marking timers both call `Writer.write`.

It holds what every write shares: the platform client, the clocks, the stop, the
places in flight (sweep.max_concurrency) and the budget (sweep.deadline). The
lease gate sits in the client's request path, checked as late as possible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sweeper.answers import NOT_PROCESSED
from sweeper.api import Clock, PlatformClient, step_url
from sweeper.errors import (
    DeadlineReached,
    FailReason,
    GuardRefused,
    InvalidAnswer,
    LeaseLost,
    MarkReason,
    Outcome,
    PlatformUnavailable,
    SkipReason,
    StepConflict,
    SweeperError,
    TokenRefused,
    WriteAppliedUnderSkew,
    WriteUnanswered,
)
from sweeper.guards import why_not_start
from sweeper.ledger import Ledger, fill
from sweeper.model import Step
from sweeper.policy import Decision, applied_by, build_update
from sweeper.report import StepEntry

#: How a step is judged again from a fresh read: a Decision to write, or why not.
Judge = Callable[[Step | None], Decision | SkipReason]


class WriteConfig(Protocol):
    """What the writer reads of the sweep's configuration (sweep.SweepConfig)."""

    @property
    def dry_run(self) -> bool: ...
    @property
    def host(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def deadline(self) -> timedelta: ...
    @property
    def max_concurrency(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Clocks:
    """Our wall clock, our monotonic clock, and how far the platform's is ahead of ours."""

    wall: Clock
    monotonic: Callable[[], float]
    offset: Callable[[], timedelta]

    def on_platform(self, moment: datetime) -> datetime:
        """A moment of our clock on the platform's, as far as its Date answers show: never
        later than the platform's own (their one-second resolution counts against us), so
        idle time is never overstated by a clock skew (guards.ClockCheck.offset)."""
        return moment + self.offset()

    def platform_now(self) -> datetime:
        """Now on the platform's clock: what step timestamps are compared with."""
        return self.on_platform(self.wall())


class Writer:
    """Writes the zombies of one sweep, the listing's and the timers' alike."""

    def __init__(
        self,
        client: PlatformClient,
        ledger: Ledger,
        clocks: Clocks,
        stop: asyncio.Event,
        cfg: WriteConfig,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.clocks = clocks
        self.stop = stop
        self.cfg = cfg
        #: The sweep's budget: no write starts after it.
        self.deadline_at = clocks.monotonic() + cfg.deadline.total_seconds()
        #: Writes in flight at once, the listing's and precise-marking timers' together.
        self.slots = asyncio.Semaphore(cfg.max_concurrency)

    @property
    def halted(self) -> bool:
        return self.ledger.halted is not None

    def why_not_start(self, deadline_at: float | None = None) -> SkipReason | None:
        deadline = self.deadline_at if deadline_at is None else deadline_at
        return why_not_start(self.stop.is_set(), self.clocks.monotonic(), deadline)

    async def write(
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
            await self._attempts(judge, entry, verdict, deadline_at, reserved)
        except Exception as exc:  # whatever it is, its fate is the ledger's to say
            self.ledger.settle(entry, exc)

    async def _attempts(
        self,
        judge: Judge,
        entry: StepEntry,
        verdict: Decision | SkipReason | None,
        deadline_at: float | None,
        reserved: bool,
    ) -> None:
        """Re-read, judge, write; after an unanswered write, wait and do it all again."""
        client, ledger, sweep_id = self.client, self.ledger, self.ledger.sweep_id
        step_id, org = entry.stepId, entry.organizationId
        give_up_at = self.deadline_at if deadline_at is None else deadline_at
        attempts, resolve_only = 0, False
        decision: Decision | None = None
        unsettled: Decision | None = None  # a write went out and no answer confirmed it
        while True:
            if self.halted:
                if unsettled is not None:
                    await self.settled_by_reread(entry, unsettled)
                return  # or pending; settled with the halt's outcome
            reason = self.why_not_start(deadline_at)
            if reason is not None:
                if unsettled is None or not await self.settled_by_reread(entry, unsettled):
                    ledger.skip(entry, reason)
                return
            if verdict is None:
                try:
                    current = await client.get_step(
                        step_id, org, then_write=not self.cfg.dry_run, give_up_at=give_up_at
                    )
                except SweeperError:
                    if unsettled is not None and await self.settled_by_reread(entry, unsettled):
                        return
                    raise
                if decision is not None and applied_by(current, sweep_id, decision.status):
                    # An earlier attempt was applied though its answer was lost.
                    self._marked(entry, decision, MarkReason.APPLIED_EARLIER)
                    return
                verdict = SkipReason.CONFLICT if resolve_only else judge(current)
                reserved = True  # then_write: the write's rate-limit slot is held
            if isinstance(verdict, SkipReason):
                ledger.skip(entry, verdict)
                return
            decision, verdict = verdict, None
            fill(entry, decision)
            if self.cfg.dry_run:
                self._marked(entry, decision, outcome=Outcome.WOULD_MARK)
                return
            # Nothing awaits between the re-read above and the write below but these checks.
            if self.halted:
                return
            reason = self.why_not_start(deadline_at)
            if reason is not None:
                ledger.skip(entry, reason)
                return
            update = build_update(
                decision, self.clocks.wall(), sweep_id, self.cfg.host, self.cfg.version
            )
            attempts += 1
            entry.attempts = attempts
            try:
                await client.patch_step(step_id, update, reserved=reserved, give_up_at=give_up_at)
            except LeaseLost:
                entry.attempts = attempts - 1  # refused before it was sent
                raise
            except TokenRefused as exc:
                ledger.halt(exc)
                if exc.attempts:  # sent and refused; else never sent: not_attempted
                    ledger.fail(entry, FailReason.TOKEN_REFUSED, exc)
                return
            except WriteAppliedUnderSkew as exc:
                self._marked(entry, decision)
                ledger.halt(exc)
                return
            except GuardRefused as exc:
                # An answer that tripped a guard (its Date too far off) and confirmed
                # nothing: the guard stops the sweep, a settling re-read says if it landed.
                ledger.halt(exc)
                await self.settled_by_reread(entry, decision)
                return  # or pending, with its attempt: failed at the end
            except WriteUnanswered as exc:
                if exc.http_status not in NOT_PROCESSED:
                    entry.unconfirmed = True  # it may have been applied: never "skipped"
                unsettled = decision
                if attempts >= client.retry.max_attempts or not await self.wait_to_retry(
                    entry, exc, attempts, give_up_at
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
            self._marked(entry, decision)
            return

    def _marked(
        self,
        entry: StepEntry,
        decision: Decision,
        reason: MarkReason | None = None,
        outcome: Outcome = Outcome.MARKED,
    ) -> None:
        """Marked (or would be, in a dry run), at this moment on the platform's clock."""
        self.ledger.marked(entry, decision, outcome, self.clocks.platform_now(), reason)

    async def settled_by_reread(self, entry: StepEntry, decision: Decision) -> bool:
        """The last attempt's answer did not confirm the write (lost, transient, broken):
        one more re-read settles it. This sweep's own write is `marked`; anything else,
        or a re-read that fails too, leaves the outcome to the caller."""
        try:
            current = await self.client.settle_read(entry.stepId, entry.organizationId)
        except SweeperError:
            return False
        if not applied_by(current, self.ledger.sweep_id, decision.status):
            return False
        self._marked(entry, decision, MarkReason.APPLIED_EARLIER)
        return True

    async def wait_to_retry(
        self, entry: StepEntry, exc: WriteUnanswered, attempts: int, give_up_at: float
    ) -> bool:
        """Wait before the next attempt, unless that would cross the deadline or a stop."""
        wait = exc.retry_after or 0.0
        if self.clocks.monotonic() + wait >= give_up_at:
            return False
        await self.client.wait_to_retry("PATCH", step_url(entry.stepId), exc, attempts)
        return not self.stop.is_set()
