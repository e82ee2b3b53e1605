"""One sweep: list every candidate, apply the guards, write with bounded concurrency, report.

The order is fixed and deliberate: every listing page is read (so the blast-radius
guard can count) before the first write; each write attempt follows its own
re-read of the step with nothing in between; no write starts after the
deadline, a stop request or a guard that fired. Every zombie ends in exactly one
Outcome, and whatever ends the sweep, even an error nobody foresaw, ends it
through one path (`_Run.execute`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from sweeper import __version__
from sweeper.api import Clock, InvalidRecord, PlatformClient, step_url
from sweeper.durations import format_duration
from sweeper.errors import (
    BodyRejected,
    GuardRefused,
    Interrupted,
    InvalidAnswer,
    InvalidListing,
    ListingNotFound,
    PlatformError,
    PlatformRefused,
    PlatformUnavailable,
    StepConflict,
    StepNotFound,
    TokenRefused,
    WriteAppliedUnderSkew,
    WriteUnanswered,
)
from sweeper.guards import check_blast_radius, why_not_start
from sweeper.model import Step
from sweeper.outages import NO_OUTAGES, OutageWindows
from sweeper.policy import (
    Decision,
    Rule,
    Rules,
    SkipReason,
    Spared,
    applied_by,
    build_update,
    decide,
    decide_by_hand,
    recheck,
)
from sweeper.precise import Interval, run_timers
from sweeper.report import Outcome, Result, StepEntry, StepKey, SweepReport
from sweeper.timers import Timer, due_at, listing_horizon

log = structlog.get_logger("sweeper.sweep")


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """The plain values one sweep needs, taken from the settings."""

    rules: Rules
    page_size: int = 200
    max_steps: int = 500
    recheck: bool = True
    deadline: timedelta = timedelta(minutes=4)
    organizations: frozenset[str] = frozenset()
    exclude_organizations: frozenset[str] = frozenset()
    dry_run: bool = False
    max_concurrency: int = 8
    host: str = "unknown"
    version: str = __version__

    def admits(self, organization_id: str) -> bool:
        if self.organizations and organization_id not in self.organizations:
            return False
        return organization_id not in self.exclude_organizations


def new_sweep_id() -> str:
    return uuid.uuid4().hex[:16]


class ListingOverran(Exception):
    """The listing did not end before sweep.deadline."""


#: How a step is judged again from a fresh read: a Decision to write, or why not.
Judge = Callable[[Step | None], Decision | SkipReason]
#: Sleep for so many seconds, or less if the event is set (or a stop comes).
Nap = Callable[[float, asyncio.Event], Awaitable[None]]


class Sweeper:
    """Runs sweeps against one platform client; the clock and stop signal come from outside."""

    def __init__(
        self,
        client: PlatformClient,
        config: SweepConfig,
        *,
        clock: Clock,
        stop: asyncio.Event | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        outages: Callable[[], OutageWindows] = lambda: NO_OUTAGES,
        nap: Nap | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        self.stop = stop or asyncio.Event()
        self.monotonic = monotonic
        self.outages = outages
        self.nap = nap or self._nap

    async def _nap(self, seconds: float, wake: asyncio.Event) -> None:
        """Sleep between timers; a stop or a re-armed timer ends it early."""
        stop, woken = (asyncio.ensure_future(e.wait()) for e in (self.stop, wake))
        try:
            await asyncio.wait({stop, woken}, timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            stop.cancel()
            woken.cancel()

    def new_report(self, *, manual: bool = False) -> SweepReport:
        return SweepReport(
            sweep_id=new_sweep_id(),
            started_at=self.clock(),
            dry_run=self.config.dry_run,
            manual=manual,
        )

    async def run(
        self, report: SweepReport | None = None, interval: Interval | None = None
    ) -> SweepReport:
        """One sweep. Pass the report in to keep it when the sweep is cancelled.

        With an `interval` (the daemon's precise marking), the listing also arms a
        timer for each step due before the interval ends, and the sweep lasts until
        then: its report counts everything done until the next listing.
        """
        report = report or self.new_report()
        await _Run(self, report, interval).execute(_Run.sweep)
        return report

    async def mark(
        self, step_id: str, organization_id: str, rule: Rule, report: SweepReport | None = None
    ) -> SweepReport:
        """Mark one step by hand: read it, and write it if it is still RUNNING."""
        report = report or self.new_report(manual=True)
        report.manual = True

        async def mark_one(run: _Run) -> None:
            await run.mark_one(step_id, organization_id, rule)

        await _Run(self, report).execute(mark_one)
        return report


class _Run:
    """The state of one sweep in progress."""

    def __init__(
        self, sweeper: Sweeper, report: SweepReport, interval: Interval | None = None
    ) -> None:
        self.s = sweeper
        self.interval = interval
        self.soon: list[Timer] = []  # precise mode: steps due before the interval ends
        self.client = sweeper.client
        self.cfg = sweeper.config
        self.report = report
        self.counts = report.counts
        self.deadline_at = sweeper.monotonic() + self.cfg.deadline.total_seconds()
        # Set once, by the first thing that stops every write: (result, reason).
        self.halted: tuple[Result, str] | None = None
        self.log = log.bind(sweep_id=report.sweep_id)

    async def execute(self, work: Callable[[_Run], Awaitable[None]]) -> None:
        """Run the work; whatever ends it, end the sweep through `finish`."""
        started = self.s.monotonic()
        self.client.begin_sweep()
        self.log_started()
        try:
            await work(self)
        except GuardRefused as exc:
            self.refuse(exc)
        except TokenRefused as exc:
            self.end(Result.TOKEN_REFUSED, exc)
        except Interrupted as exc:
            self.end(Result.INTERRUPTED, exc)
        except InvalidListing as exc:
            self.end(Result.INVALID_LISTING, exc)
        except ListingNotFound as exc:
            self.end(Result.MISCONFIGURED, exc)
        except ListingOverran as exc:
            self.end(Result.UNAVAILABLE, exc)
        except PlatformError as exc:
            self.end(Result.UNAVAILABLE, exc)
        except asyncio.CancelledError:
            # The stop grace ran out: writes still in flight have no known answer.
            self.end(Result.INTERRUPTED, Interrupted("stopped before the writes in flight ended"))
            raise
        except Exception as exc:  # fail closed: the unforeseen is a crash, never success
            self.crash(exc)
        finally:
            self.finish(started)

    def log_started(self) -> None:
        cfg, rules = self.cfg, self.cfg.rules
        self.log.info(
            "sweep.started",
            dry_run=cfg.dry_run,
            stale_after=_threshold(rules.default),
            rules={r.name: _threshold(r) for r in (*rules.overrides, rules.default)},
            max_steps=cfg.max_steps,
            deadline=format_duration(cfg.deadline),
            precise=self.interval is not None,
        )

    def finish(self, started: float) -> None:
        report = self.report
        if self.halted is not None and report.result is Result.COMPLETED:
            report.result = self.halted[0]
        if self.s.stop.is_set() and report.result is Result.COMPLETED:
            report.result = Result.INTERRUPTED
        reason = self.halted[1] if self.halted else report.guard or report.result.value
        for entry in report.entries:
            if entry.outcome is Outcome.PENDING and entry.attempts:
                # Sent before the sweep stopped, and no answer tells whether it was
                # applied: failed, never "refused" or "not attempted".
                entry.settle(Outcome.FAILED, reason)
                self.log.warning(
                    "step.failed",
                    step_id=entry.stepId,
                    organization_id=entry.organizationId,
                    reason=reason,
                    http_status=entry.httpStatus,
                    attempts=entry.attempts,
                    error="the sweep stopped before an answer said whether the write was applied",
                )
        leftover = Outcome.REFUSED if report.result is Result.REFUSED else Outcome.NOT_ATTEMPTED
        report.settle_pending(leftover, reason)
        report.tally()
        report.finished_at = self.s.clock()
        self.log.info(
            "sweep.finished",
            result=report.result.value,
            exit_code=int(report.exit_code),
            duration_ms=round((self.s.monotonic() - started) * 1000),
            **self.counts,
        )

    async def sweep(self) -> None:
        zombies = await self.collect()
        interval = self.interval
        if interval is None:
            check_blast_radius(len(zombies), self.cfg.max_steps)
            await self.write_all(zombies)
            return
        # Precise: the guard counts every zombie due in this listing interval.
        interval.timers.clear()
        check_blast_radius(len(zombies) + len(self.soon), self.cfg.max_steps)
        for timer in self.soon:
            interval.timers.arm(timer.step, timer.due, self.report.sweep_id)
        self.counts["armed"] = len(interval.timers)
        interval.on_armed(len(interval.timers))
        await asyncio.gather(self.write_all(zombies), run_timers(self, interval))

    def new_entry(self, step: Step) -> StepEntry:
        """A step a timer found due: a zombie of this listing from now on."""
        entry = StepEntry(stepId=step.step_id, organizationId=step.organization_id)
        self.report.entries.append(entry)
        return entry

    async def mark_one(self, step_id: str, organization_id: str, rule: Rule) -> None:
        entry = StepEntry(stepId=step_id, organizationId=organization_id)
        self.report.entries.append(entry)
        self.counts["listed"] += 1

        def judge(current: Step | None) -> Decision | SkipReason:
            return decide_by_hand(current, self.s.clock(), rule)

        current = await self.client.get_step(
            step_id, organization_id, then_write=not self.cfg.dry_run
        )
        await self.handle(judge, entry, judge(current))

    def end(self, result: Result, exc: BaseException) -> None:
        self.report.result = result
        self.report.error = str(exc)
        self.log.error("sweep.aborted", result=result.value, error=str(exc))

    def crash(self, exc: Exception) -> None:
        """An error nobody foresaw: logged with its traceback (never frame locals)."""
        self.report.result = Result.CRASHED
        self.report.error = f"{type(exc).__name__}: {exc}"
        self.log.error(
            "sweep.aborted", result=Result.CRASHED.value, error=self.report.error, exc_info=exc
        )

    def refuse(self, exc: GuardRefused) -> None:
        self.report.result = Result.REFUSED
        self.report.guard = exc.guard
        self.report.error = str(exc)
        self.log.error("sweep.refused", guard=exc.guard, error=str(exc), **exc.figures)

    def halt(self, result: Result, reason: str, exc: BaseException) -> None:
        """Stop every write not yet sent; the first reason wins."""
        if self.halted is not None:
            return
        self.halted = (result, reason)
        if isinstance(exc, GuardRefused):
            self.refuse(exc)
        elif isinstance(exc, Exception) and result is Result.CRASHED:
            self.crash(exc)
        else:
            self.end(result, exc)

    # -- listing -------------------------------------------------------------

    async def collect(self) -> dict[StepKey, Decision]:
        """Read every page, within the deadline; keep only the zombies."""
        remaining = self.deadline_at - self.s.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await self._collect()
        except TimeoutError:
            raise self.overran() from None

    def overran(self) -> ListingOverran:
        deadline = format_duration(self.cfg.deadline)
        return ListingOverran(f"the listing did not end within sweep.deadline ({deadline})")

    async def _collect(self) -> dict[StepKey, Decision]:
        cfg = self.cfg
        zombies: dict[StepKey, Decision] = {}
        seen: set[StepKey] = set()  # spared steps, by identity: exact, no hash to collide
        now = self.s.clock()
        started_before = now - cfg.rules.smallest_stale_after
        if self.interval is not None:
            # Young steps that will be due before the next listing are listed too.
            started_before = listing_horizon(now, self.interval.until - now, cfg.rules)
        async for page in self.client.list_running(started_before, cfg.page_size):
            now = self.s.clock()
            outages = self.s.outages()
            for record in page.records:
                self.counts["listed"] += 1
                try:
                    self.sort(record, now, outages, zombies, seen)
                except Exception as exc:  # one record never ends the sweep
                    self.invalid(record, f"record: {type(exc).__name__} while judging it")
            if self.s.monotonic() >= self.deadline_at:
                raise self.overran()
        return zombies

    def sort(
        self,
        record: Step | InvalidRecord,
        now: datetime,
        outages: OutageWindows,
        zombies: dict[StepKey, Decision],
        seen: set[StepKey],
    ) -> None:
        if isinstance(record, InvalidRecord):
            self.invalid(record, record.problems)
            return
        key = record.key
        if key in zombies or key in seen:
            self.counts["duplicate"] += 1
            return
        if not self.cfg.admits(record.organization_id):
            seen.add(key)
            self.counts["excluded"] += 1
            return
        verdict = decide(record, now, self.cfg.rules, outages)
        if isinstance(verdict, Spared):
            seen.add(key)
            self.counts[verdict.value] += 1
            if verdict is Spared.NOT_STALE and self.interval is not None:
                due = due_at(record, self.cfg.rules, outages)
                if due is not None and due < self.interval.until:
                    self.soon.append(Timer(record, due, self.report.sweep_id))
            return
        zombies[key] = verdict
        self.report.entries.append(_entry(verdict))

    def invalid(self, record: Step | InvalidRecord, problems: str) -> None:
        self.counts["invalid"] += 1
        self.log.warning(
            "record.invalid",
            step_id=record.step_id,
            organization_id=record.organization_id,
            problems=problems,
        )

    # -- writing -------------------------------------------------------------

    async def write_all(self, zombies: dict[StepKey, Decision]) -> None:
        entries = {e.key: e for e in self.report.entries}
        queue = iter(zombies.items())

        async def worker() -> None:
            for key, decision in queue:
                if self.halted is not None:
                    return  # the rest stay pending; `finish` settles them
                await self.write_one(decision, entries[key])

        workers = min(self.cfg.max_concurrency, len(zombies))
        # Every worker runs to its end before the sweep does, whatever one of them raised.
        results = await asyncio.gather(*(worker() for _ in range(workers)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def write_one(self, decision: Decision, entry: StepEntry) -> None:
        listed = decision.step

        def judge(current: Step | None) -> Decision | SkipReason:
            return recheck(listed, current, self.s.clock(), self.cfg.rules, self.s.outages())

        verdict: Decision | SkipReason | None = None if self.cfg.recheck else decision
        await self.handle(judge, entry, verdict)

    def why_not_start(self, deadline_at: float | None = None) -> SkipReason | None:
        deadline = self.deadline_at if deadline_at is None else deadline_at
        return why_not_start(self.s.stop.is_set(), self.s.monotonic(), deadline)

    async def handle(
        self,
        judge: Judge,
        entry: StepEntry,
        verdict: Decision | SkipReason | None,
        deadline_at: float | None = None,
    ) -> None:
        """Settle one zombie. `verdict` is the first attempt's judgement (None: re-read
        first); `deadline_at` replaces the sweep's deadline (a timer's own)."""
        try:
            await self.attempt_writes(judge, entry, verdict, deadline_at)
        except Exception as exc:
            self.settle_failure(entry, exc)

    async def attempt_writes(
        self,
        judge: Judge,
        entry: StepEntry,
        verdict: Decision | SkipReason | None,
        deadline_at: float | None,
    ) -> None:
        """Re-read, judge, write; after an unanswered write, wait and do it all again."""
        client, sweep_id = self.client, self.report.sweep_id
        step_id, org = entry.stepId, entry.organizationId
        attempts, resolve_only = 0, False
        decision: Decision | None = None
        while True:
            if self.halted is not None:
                return  # pending; settled with the halt's outcome
            reason = self.why_not_start(deadline_at)
            if reason is not None:
                self.skip(entry, reason)
                return
            if verdict is None:
                current = await client.get_step(step_id, org, then_write=not self.cfg.dry_run)
                if decision is not None and applied_by(current, sweep_id, decision.status):
                    # An earlier attempt was applied though its answer was lost.
                    self.settle(entry, decision, Outcome.MARKED, "applied_earlier")
                    return
                verdict = SkipReason.CONFLICT if resolve_only else judge(current)
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
            try:
                await client.patch_step(step_id, update)
            except TokenRefused as exc:
                self.halt(Result.TOKEN_REFUSED, "token_refused", exc)
                if exc.attempts:  # sent and refused; else never sent: not_attempted
                    self.fail(entry, "token_refused", exc)
                return
            except WriteAppliedUnderSkew as exc:
                self.settle(entry, decision, Outcome.MARKED)
                self.halt(Result.REFUSED, exc.guard, exc)
                return
            except WriteUnanswered as exc:
                if attempts >= client.max_attempts or not await self.wait_to_retry(
                    entry, exc, attempts, deadline_at
                ):
                    raise
                continue
            except StepConflict:
                if attempts == 1:
                    raise
                resolve_only = True  # a 409 on a retry: was the lost attempt ours?
                continue
            self.settle(entry, decision, Outcome.MARKED)
            return

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
        """The one place where an error becomes a zombie's outcome."""
        if entry.outcome is not Outcome.PENDING:
            raise exc
        match exc:
            case StepNotFound():
                self.skip(entry, SkipReason.GONE)
            case StepConflict():
                self.skip(entry, SkipReason.CONFLICT)
            case Interrupted():
                self.skip(entry, SkipReason.SHUTDOWN)
            case TokenRefused():
                # On a re-read: not written (not_attempted), or, after an earlier attempt
                # whose fate is unknown, failed (see finish).
                self.halt(Result.TOKEN_REFUSED, "token_refused", exc)
            case GuardRefused():
                self.halt(Result.REFUSED, exc.guard, exc)
            case BodyRejected():
                self.fail(entry, "rejected", exc)
            case PlatformUnavailable():
                self.fail(entry, "unavailable", exc)
            case InvalidAnswer():
                self.fail(entry, "invalid_answer", exc)
            case PlatformRefused():
                self.fail(entry, "rejected", exc)
            case _:
                self.halt(Result.CRASHED, "crashed", exc)

    # -- outcomes ------------------------------------------------------------

    def settle(
        self, entry: StepEntry, decision: Decision, outcome: Outcome, reason: str | None = None
    ) -> None:
        entry.settle(outcome, reason)
        if outcome is Outcome.MARKED and not self.report.manual:
            # Detection lag: from the moment the step crossed its limit to its write.
            due = decision.last_sign_of_life_at + decision.stale_after + decision.outage_discount
            entry.lagSeconds = round((self.s.clock() - due).total_seconds(), 3)
        self.log.info(
            "step.marked" if outcome is Outcome.MARKED else "step.would_mark",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            status=decision.status.value,
            error_code=decision.error_code,
            rule=decision.rule,
            idle_seconds=int(decision.idle.total_seconds()),
            attempts=entry.attempts,
            **({"detail": reason} if reason else {}),
        )

    def skip(self, entry: StepEntry, reason: SkipReason) -> None:
        entry.settle(Outcome.SKIPPED, reason.value)
        # Stop and deadline skips can be hundreds at once: counted in sweep.finished.
        quiet = reason in (SkipReason.SHUTDOWN, SkipReason.DEADLINE)
        (self.log.debug if quiet else self.log.info)(
            "step.skipped",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            reason=reason.value,
            rule=entry.rule,
        )

    def fail(self, entry: StepEntry, reason: str, exc: PlatformError) -> None:
        entry.settle(Outcome.FAILED, reason)
        entry.httpStatus = exc.http_status
        entry.attempts = entry.attempts or exc.attempts
        self.log.warning(
            "step.failed",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            reason=reason,
            http_status=exc.http_status,
            attempts=entry.attempts,
            error=str(exc),
        )


def _threshold(rule: Rule) -> str:
    return format_duration(rule.stale_after) if rule.stale_after else "never"


def _entry(decision: Decision) -> StepEntry:
    entry = StepEntry(stepId=decision.step.step_id, organizationId=decision.step.organization_id)
    fill(entry, decision)
    return entry


def fill(entry: StepEntry, decision: Decision) -> None:
    """What the report says of a zombie's decision."""
    entry.rule = decision.rule
    entry.status = decision.status.value
    entry.errorCode = decision.error_code
    entry.idleSeconds = int(decision.idle.total_seconds())
