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
from sweeper.api import Clock, InvalidRecord, PlatformClient
from sweeper.durations import format_duration, humanize
from sweeper.errors import (
    GuardRefused,
    Interrupted,
    ListingOverran,
    Outcome,
    Result,
    SkipReason,
    SweeperError,
    as_error,
)
from sweeper.guards import check_blast_radius
from sweeper.model import Step, StepStatus
from sweeper.outages import NO_OUTAGES, OutageWindows
from sweeper.policy import (
    Decision,
    NotStale,
    Rule,
    Rules,
    Spared,
    decide,
    decide_by_hand,
    recheck,
    within_limit,
)
from sweeper.precise import Interval, run_timers
from sweeper.report import StepEntry, StepKey, SweepReport
from sweeper.timers import Timer, due_at, half_silent, listing_horizon
from sweeper.writes import Writes, fill

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
    #: Where the token came from, for a refusal's message (never the token).
    token_source: str = "the configured token"

    def admits(self, organization_id: str) -> bool:
        if self.organizations and organization_id not in self.organizations:
            return False
        return organization_id not in self.exclude_organizations


def new_sweep_id() -> str:
    return uuid.uuid4().hex[:16]


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

    def on_platform(self, moment: datetime) -> datetime:
        """A moment of our clock on the platform's, as far as its Date answers show: never
        later than the platform's own (their one-second resolution counts against us), so
        idle time is never overstated by a clock skew (guards.ClockCheck.offset)."""
        check = self.client.clock_check
        return moment + (check.offset if check is not None else timedelta(0))

    def platform_now(self) -> datetime:
        """Now on the platform's clock: what step timestamps are compared with."""
        return self.on_platform(self.clock())

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
        self,
        step_id: str,
        organization_id: str,
        rule: Rule,
        report: SweepReport | None = None,
        force: bool = False,
    ) -> SweepReport:
        """Mark one step by hand: read it, and write it if it is still RUNNING and past
        its configured limit (any RUNNING step with `force`)."""
        report = report or self.new_report(manual=True)
        report.manual = True

        async def mark_one(run: _Run) -> None:
            await run.mark_one(step_id, organization_id, rule, force)

        await _Run(self, report).execute(mark_one)
        return report


class _Run(Writes):
    """The state of one sweep in progress."""

    def __init__(
        self, sweeper: Sweeper, report: SweepReport, interval: Interval | None = None
    ) -> None:
        self.s = sweeper
        self.interval = interval
        self.soon: list[Timer] = []  # precise mode: steps due before the interval ends
        self.confirmed = 0  # precise mode: zombies confirmed in this interval so far
        self.silent = 0  # precise mode: listed steps silent past half their limit
        self.client = sweeper.client
        self.cfg = sweeper.config
        self.report = report
        self.counts = report.counts
        self.deadline_at = sweeper.monotonic() + self.cfg.deadline.total_seconds()
        # Writes in flight at once, the listing's and precise-marking timers' together.
        self.slots = asyncio.Semaphore(self.cfg.max_concurrency)
        # Set once, by the first error that stops every write (its `halts`).
        self.halted: SweeperError | None = None
        # The error that ended the sweep, if one did.
        self.ended_by: SweeperError | None = None
        self.log = log.bind(sweep_id=report.sweep_id)

    async def execute(self, work: Callable[[_Run], Awaitable[None]]) -> None:
        """Run the work; whatever ends it, end the sweep through `finish`."""
        started = self.s.monotonic()
        self.client.begin_sweep()
        self.log_started()
        try:
            await work(self)
        except asyncio.CancelledError:
            # The stop grace ran out: writes still in flight have no known answer.
            self.end(Interrupted("stopped before the writes in flight ended"))
            raise
        except Exception as exc:  # fail closed: the unforeseen is a crash, never success
            self.end(as_error(exc))
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
            **_runtimes(rules),
        )

    def finish(self, started: float) -> None:
        report = self.report
        if self.s.stop.is_set() and report.result is Result.COMPLETED:
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
        # Precise: the guard counts the zombies due in this listing interval: those due
        # now, and those due later that have already been silent past half their limit
        # (operations.md, "Precise marking"). A healthy step (silent less than that) is
        # not counted: with a limit shorter than the interval every healthy step has a
        # due moment in it, and counting them would refuse every listing of a large
        # fleet. The zombies the timers then confirm are counted as they come, and no
        # interval marks more than max_steps (`precise.fire`).
        interval.timers.clear()
        check_blast_radius(len(zombies) + self.silent, self.cfg.max_steps)
        self.confirmed = len(zombies)
        for timer in sorted(self.soon, key=lambda t: t.due):
            if not interval.timers.arm(timer.step, timer.due, self.report.sweep_id):
                interval.waiting.append(timer)  # armed when a timer frees its place
        if interval.waiting:
            self.log.warning(
                "timers.full",
                armed=len(interval.timers),
                waiting=len(interval.waiting),
                max_steps=self.cfg.max_steps,
                detail="steps due later wait for a timer's place (at most sweep.max_steps)",
            )
        self.counts["armed"] = len(self.soon)
        interval.on_armed(len(interval.timers))
        # The zombies due now first (their writes hold the places in flight), then the
        # timers; one due meanwhile fires as soon as they are done.
        await self.write_all(zombies)
        await run_timers(self, interval)

    def new_entry(self, step_id: str, organization_id: str) -> StepEntry:
        """A zombie of this sweep from now on: its one report entry."""
        entry = StepEntry(stepId=step_id, organizationId=organization_id)
        self.report.entries.append(entry)
        return entry

    async def mark_one(self, step_id: str, organization_id: str, rule: Rule, force: bool) -> None:
        entry = self.new_entry(step_id, organization_id)
        self.counts["listed"] += 1
        limits = None if force else self.cfg.rules

        def judge(current: Step | None) -> Decision | SkipReason:
            # An operator decided: the idle time is only reported (within_limit, below,
            # judges on the platform's clock).
            return decide_by_hand(current, self.s.clock(), rule, limits)

        current = await self.client.get_step(
            step_id, organization_id, then_write=not self.cfg.dry_run
        )
        if limits is not None and current is not None and current.status == StepStatus.RUNNING:
            within = within_limit(current, self.s.platform_now(), limits)
            if within is not None:
                self.refuse_live(entry, within)
        await self.handle(judge, entry, judge(current), reserved=True)

    def refuse_live(self, entry: StepEntry, within: NotStale) -> None:
        """Say why `mark` leaves a step alone: its idle time, its limit and the way out."""
        entry.idleSeconds = int(within.idle.total_seconds())
        entry.rule = within.rule
        limit = "never" if within.stale_after is None else humanize(within.stale_after)
        entry.limit = limit
        self.log.warning(
            "mark.not_stale",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            idle_seconds=entry.idleSeconds,
            stale_after=limit,
            rule=within.rule,
            detail=f"idle {humanize(within.idle)}, within its limit {limit} (rule "
            f"{within.rule}): not marked; --force marks it anyway",
        )

    def end(self, error: SweeperError) -> None:
        """The sweep ends with this error: its result, and the one event that says so."""
        self.ended_by = error
        self.report.end(error)
        if isinstance(error, GuardRefused):
            self.log.error("sweep.refused", **error.log_fields())
            return
        refused = error.result is Result.TOKEN_REFUSED
        # Where the refused token came from (never the token).
        detail = {"token_source": self.cfg.token_source} if refused else {}
        self.log.error("sweep.aborted", **error.log_fields(), **detail)

    def halt(self, error: SweeperError) -> None:
        """Stop every write not yet sent; the first error wins."""
        if self.halted is not None:
            return
        self.halted = error
        if self.interval is not None:
            self.interval.wake.set()  # the timer loop stops napping and ends
        self.end(error)

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
        # Step timestamps are the platform's: they are compared with its clock.
        now = self.s.platform_now()
        started_before = now - cfg.rules.smallest_limit  # stale and runaway candidates
        if self.interval is not None:
            # Young steps that will be due before the next listing are listed too.
            until = self.s.on_platform(self.interval.until)
            started_before = listing_horizon(now, until - now, cfg.rules)
        pages = self.client.list_running(started_before, cfg.page_size, self.deadline_at)
        async for page in pages:
            now = self.s.platform_now()
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
                self.silent += half_silent(record, now, self.cfg.rules, outages)
                due = due_at(record, self.cfg.rules, outages)
                if due is not None and due < self.s.on_platform(self.interval.until):
                    self.soon.append(Timer(record, due, self.report.sweep_id))
            return
        zombies[key] = verdict
        fill(self.new_entry(record.step_id, record.organization_id), verdict)

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
                async with self.slots:
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
            return recheck(listed, current, self.s.platform_now(), self.cfg.rules, self.s.outages())

        verdict: Decision | SkipReason | None = None if self.cfg.recheck else decision
        await self.handle(judge, entry, verdict)


def _threshold(rule: Rule) -> str:
    return format_duration(rule.stale_after) if rule.stale_after else "never"


def _runtimes(rules: Rules) -> dict[str, dict[str, str]]:
    """`max_runtime` of each rule for sweep.started, only when a rule has one."""
    if not rules.any_max_runtime:
        return {}
    every = (*rules.overrides, rules.default)
    return {
        "max_runtime": {
            r.name: format_duration(r.max_runtime) if r.max_runtime else "never" for r in every
        }
    }
