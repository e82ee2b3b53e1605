"""One sweep: list every candidate, apply the guards, write with bounded concurrency, report.

The order is fixed and deliberate: every listing page is read (so the blast-radius
guard can count) before the first write; each write attempt follows its own
re-read of the step with nothing in between; no write starts after the
deadline, a stop request or a guard that fired. Every zombie ends in exactly one
Outcome, and whatever ends the sweep, even an error nobody foresaw, ends it
through one path (`_Sweep.execute`). The zombies' fates are the ledger's
(`sweeper.ledger`), their writes the writer's (`sweeper.writer`).
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
from sweeper.api import Clock, PlatformClient
from sweeper.durations import format_duration, humanize
from sweeper.errors import Interrupted, ListingOverran, SkipReason, as_error
from sweeper.guards import ClockCheck, check_blast_radius
from sweeper.ledger import Ledger, fill
from sweeper.model import Step, StepStatus
from sweeper.outages import NO_OUTAGES, OutageWindows
from sweeper.pages import InvalidRecord
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
from sweeper.precise import Interval, Nap, Watch
from sweeper.refusals import TokenRefusals
from sweeper.report import StepEntry, StepKey, SweepReport
from sweeper.stepset import StepSet
from sweeper.writer import Clocks, Writer

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
        clock_check: ClockCheck | None = None,
        refusals: TokenRefusals | None = None,
    ) -> None:
        self.client = client
        #: The platform's clock as its answers show it (the client checks each answer
        #: with it): the sweeps' state, carried across reloads by the daemon.
        self.clock_check = clock_check
        #: The tokens refused (the client asks before each request); a refusal is
        #: tried again once old enough, when a sweep begins.
        self.refusals = refusals
        self.config = config
        self.clock = clock
        self.stop = stop or asyncio.Event()
        self.monotonic = monotonic
        self.outages = outages
        self.nap = nap or self._nap
        self.clocks = Clocks(clock, monotonic, self._offset)

    def _offset(self) -> timedelta:
        check = self.clock_check
        return check.offset if check is not None else timedelta(0)

    def begin_sweep(self) -> None:
        """Each sweep warns afresh about a missing Date, and tries again a token refused
        long enough ago (refusals.TOKEN_RETRY_SECONDS); never in the middle of one."""
        if self.refusals is not None:
            self.refusals.expire()
        if self.clock_check is not None:
            self.clock_check.begin_sweep()

    def on_platform(self, moment: datetime) -> datetime:
        """A moment of our clock on the platform's (writer.Clocks.on_platform)."""
        return self.clocks.on_platform(moment)

    def platform_now(self) -> datetime:
        """Now on the platform's clock: what step timestamps are compared with."""
        return self.clocks.platform_now()

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
        run = _Sweep(self, report, interval)
        await run.execute(run.sweep)
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

        run = _Sweep(self, report)
        await run.execute(lambda: run.mark_one(step_id, organization_id, rule, force))
        return report


class Unwatched:
    """A sweep without precise marking: what `precise.Watch` does in that mode, with no
    timers (the listing alone finds the zombies, the guard counts them)."""

    precise = False

    def __init__(self, rules: Rules, max_steps: int) -> None:
        self.rules = rules
        self.max_steps = max_steps

    def horizon(self, now: datetime) -> datetime:
        """The listing's startedBefore: no step younger is stale or a runaway."""
        return now - self.rules.smallest_limit

    def saw_alive(self, step: Step, now: datetime, outages: OutageWindows) -> None:
        """A step not stale yet: nothing to arm."""

    def begin(self, zombies: int) -> None:
        check_blast_radius(zombies, self.max_steps)

    async def run(self) -> None:
        """No timers to fire: the sweep ends with its listing's writes."""


class _Sweep:
    """One sweep in progress: it lists and orchestrates; the ledger settles, the writer
    writes, and in precise mode the watch arms and fires the timers."""

    def __init__(
        self, sweeper: Sweeper, report: SweepReport, interval: Interval | None = None
    ) -> None:
        self.sweeper = sweeper
        self.stop = sweeper.stop
        self.outages = sweeper.outages
        self.client = sweeper.client
        self.cfg = sweeper.config
        self.clocks = sweeper.clocks
        self.report = report
        self.counts = report.counts
        self.log = log.bind(sweep_id=report.sweep_id)
        self.ledger = Ledger(report, self.log, self.cfg.token_source)
        self.writer = Writer(self.client, self.ledger, self.clocks, self.stop, self.cfg)
        self.watch: Watch | Unwatched = (
            Unwatched(self.cfg.rules, self.cfg.max_steps)
            if interval is None
            else Watch(interval, self.writer, self.cfg, self.outages, sweeper.nap)
        )

    async def execute(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run the work; whatever ends it, end the sweep through `Ledger.finish`."""
        started = self.clocks.monotonic()
        self.sweeper.begin_sweep()
        self.log_started()
        try:
            await work()
        except asyncio.CancelledError:
            # The stop grace ran out: writes still in flight have no known answer.
            self.ledger.end(Interrupted("stopped before the writes in flight ended"))
            raise
        except Exception as exc:  # fail closed: the unforeseen is a crash, never success
            self.ledger.end(as_error(exc))
        finally:
            self.ledger.finish(
                stopped=self.stop.is_set(),
                finished_at=self.clocks.wall(),
                duration_ms=round((self.clocks.monotonic() - started) * 1000),
            )

    def log_started(self) -> None:
        cfg, rules = self.cfg, self.cfg.rules
        self.log.info(
            "sweep.started",
            dry_run=cfg.dry_run,
            stale_after=_threshold(rules.default),
            rules={r.name: _threshold(r) for r in (*rules.overrides, rules.default)},
            max_steps=cfg.max_steps,
            deadline=format_duration(cfg.deadline),
            precise=self.watch.precise,
            **_runtimes(rules),
        )

    async def sweep(self) -> None:
        zombies = await self.collect()
        self.watch.begin(len(zombies))  # the blast-radius guard, and any timers
        # The zombies due now first (their writes hold the places in flight), then the
        # timers; one due meanwhile fires as soon as they are done.
        await self.write_all(zombies)
        await self.watch.run()

    async def mark_one(self, step_id: str, organization_id: str, rule: Rule, force: bool) -> None:
        entry = self.ledger.new_entry(step_id, organization_id)
        self.counts["listed"] += 1
        limits = None if force else self.cfg.rules

        def judge(current: Step | None) -> Decision | SkipReason:
            # An operator decided: the idle time is only reported (within_limit, below,
            # judges on the platform's clock).
            return decide_by_hand(current, self.clocks.wall(), rule, limits)

        current = await self.client.get_step(
            step_id, organization_id, then_write=not self.cfg.dry_run
        )
        if limits is not None and current is not None and current.status == StepStatus.RUNNING:
            within = within_limit(current, self.clocks.platform_now(), limits)
            if within is not None:
                self.refuse_live(entry, within)
        await self.writer.write(judge, entry, judge(current), reserved=True)

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

    # -- listing -------------------------------------------------------------

    async def collect(self) -> dict[StepKey, Decision]:
        """Read every page, within the deadline; keep only the zombies."""
        remaining = self.writer.deadline_at - self.clocks.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await self._collect()
        except TimeoutError:
            raise self.overran() from None

    def overran(self) -> ListingOverran:
        deadline = format_duration(self.cfg.deadline)
        return ListingOverran(f"the listing did not end within sweep.deadline ({deadline})")

    async def _collect(self) -> dict[StepKey, Decision]:
        cfg, deadline_at = self.cfg, self.writer.deadline_at
        zombies: dict[StepKey, Decision] = {}
        seen = StepSet()  # spared steps, by identity: exact, no hash to collide
        # Step timestamps are the platform's: they are compared with its clock.
        now = self.clocks.platform_now()
        started_before = self.watch.horizon(now)
        pages = self.client.list_running(started_before, cfg.page_size, deadline_at)
        async for page in pages:
            now = self.clocks.platform_now()
            outages = self.outages()
            for record in page.records:
                self.counts["listed"] += 1
                try:
                    self.sort(record, now, outages, zombies, seen)
                except Exception as exc:  # one record never ends the sweep
                    self.invalid(record, f"record: {type(exc).__name__} while judging it")
            del page  # not kept alive while the next page is read
            if self.clocks.monotonic() >= deadline_at:
                raise self.overran()
        return zombies

    def sort(
        self,
        record: Step | InvalidRecord,
        now: datetime,
        outages: OutageWindows,
        zombies: dict[StepKey, Decision],
        seen: StepSet,
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
            if verdict is Spared.NOT_STALE:
                self.watch.saw_alive(record, now, outages)
            return
        zombies[key] = verdict
        fill(self.ledger.new_entry(record.step_id, record.organization_id), verdict)

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
        writer = self.writer

        async def worker() -> None:
            for key, decision in queue:
                if writer.halted:
                    return  # the rest stay pending; `Ledger.finish` settles them
                async with writer.slots:
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
            now = self.clocks.platform_now()
            return recheck(listed, current, now, self.cfg.rules, self.outages())

        verdict: Decision | SkipReason | None = None if self.cfg.recheck else decision
        await self.writer.write(judge, entry, verdict)


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
