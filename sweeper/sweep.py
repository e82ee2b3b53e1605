"""One sweep: list every candidate, apply the guards, write with bounded concurrency, report.

The order is fixed and deliberate: every listing page is read (so the blast-radius
guard can count) before the first write; each zombie is read again just before it
is written; no write starts after the deadline or a stop request.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog

from sweeper import __version__
from sweeper.api import Clock, InvalidRecord, PlatformClient
from sweeper.durations import format_duration
from sweeper.errors import (
    BodyRejected,
    GuardRefused,
    Interrupted,
    InvalidAnswer,
    PlatformError,
    PlatformRefused,
    PlatformUnavailable,
    StepConflict,
    StepNotFound,
    TokenRefused,
)
from sweeper.guards import check_blast_radius, why_not_start
from sweeper.policy import (
    Decision,
    Rule,
    Rules,
    SkipReason,
    Spared,
    Window,
    build_update,
    decide,
    recheck,
)
from sweeper.report import Result, StepEntry, SweepReport

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
        outages: Callable[[], Sequence[Window]] = tuple,
    ) -> None:
        self.client = client
        self.config = config
        self.clock = clock
        self.stop = stop or asyncio.Event()
        self.monotonic = monotonic
        self.outages = outages

    def new_report(self) -> SweepReport:
        return SweepReport(
            sweep_id=new_sweep_id(), started_at=self.clock(), dry_run=self.config.dry_run
        )

    async def run(self, report: SweepReport | None = None) -> SweepReport:
        """One sweep. Pass the report in to keep it when the sweep is cancelled."""
        report = report or self.new_report()
        await _Run(self, report).execute(_Run.sweep)
        return report

    async def mark(
        self, step_id: str, organization_id: str, rule: Rule, report: SweepReport | None = None
    ) -> SweepReport:
        """Mark one step by hand: read it, and write it if it is still RUNNING."""
        report = report or self.new_report()

        async def mark_one(run: _Run) -> None:
            await run.mark_one(step_id, organization_id, rule)

        await _Run(self, report).execute(mark_one)
        return report


class _Run:
    """The state of one sweep in progress."""

    def __init__(self, sweeper: Sweeper, report: SweepReport) -> None:
        self.s = sweeper
        self.cfg = sweeper.config
        self.report = report
        self.counts = report.counts
        self.deadline_at = sweeper.monotonic() + self.cfg.deadline.total_seconds()
        self.halted: Result | None = None
        self.log = log.bind(sweep_id=report.sweep_id)

    async def execute(self, work: Callable[[_Run], Awaitable[None]]) -> None:
        started = self.s.monotonic()
        self.s.client.begin_sweep()
        cfg = self.cfg
        rules = cfg.rules
        self.log.info(
            "sweep.started",
            dry_run=cfg.dry_run,
            stale_after=format_duration(rules.default.stale_after or timedelta(0)),
            rules={
                r.name: format_duration(r.stale_after) if r.stale_after else "never"
                for r in (*rules.overrides, rules.default)
            },
            max_steps=cfg.max_steps,
            deadline=format_duration(cfg.deadline),
        )
        try:
            await work(self)
            if self.halted is not None:
                self.report.result = self.halted
        except GuardRefused as exc:
            self.refuse(exc)
        except TokenRefused as exc:
            self.end(Result.TOKEN_REFUSED, exc)
        except Interrupted as exc:
            self.end(Result.INTERRUPTED, exc)
        except PlatformError as exc:
            self.end(Result.UNAVAILABLE, exc)
        finally:
            if self.s.stop.is_set() and self.report.result is Result.COMPLETED:
                self.report.result = Result.INTERRUPTED
            self.report.finished_at = self.s.clock()
            self.log.info(
                "sweep.finished",
                result=self.report.result.value,
                exit_code=int(self.report.exit_code),
                duration_ms=round((self.s.monotonic() - started) * 1000),
                **self.counts,
            )

    async def sweep(self) -> None:
        zombies = await self.collect()
        self.counts["zombies"] = len(zombies)
        check_blast_radius(len(zombies), self.cfg.max_steps)
        await self.write_all(zombies)

    async def mark_one(self, step_id: str, organization_id: str, rule: Rule) -> None:
        current = await self.s.client.get_step(step_id, organization_id)
        self.counts["listed"] += 1
        # A manual mark needs no idle time, but the step must still be there and RUNNING.
        verdict = (
            SkipReason.GONE
            if current is None
            else recheck(current, current, self.s.clock(), Rules((), rule))
        )
        if isinstance(verdict, SkipReason):
            entry = StepEntry(stepId=step_id, organizationId=organization_id, outcome="pending")
            self.report.entries.append(entry)
            self.skip(entry, verdict)
            return
        self.counts["zombies"] += 1
        entry = _entry(verdict, "pending")
        self.report.entries.append(entry)
        await self.handle(verdict, entry, reread=False)

    def end(self, result: Result, exc: Exception) -> None:
        self.report.result = result
        self.report.error = str(exc)
        self.log.error("sweep.aborted", result=result.value, error=str(exc))

    def refuse(self, exc: GuardRefused) -> None:
        self.report.result = Result.REFUSED
        self.report.guard = exc.guard
        self.report.error = str(exc)
        self.log.error("sweep.refused", guard=exc.guard, error=str(exc), **exc.figures)
        for entry in self.report.entries:
            if entry.outcome == "pending":
                entry.outcome, entry.reason = "refused", exc.guard
                self.counts["refused"] += 1

    # -- listing -------------------------------------------------------------

    async def collect(self) -> dict[str, Decision]:
        """Read every page; keep only the zombies (memory stays flat for long listings)."""
        cfg = self.cfg
        zombies: dict[str, Decision] = {}
        seen: set[int] = set()  # hashes of spared ids: enough to count duplicates, cheap
        started_before = self.s.clock() - cfg.rules.smallest_stale_after
        async for page in self.s.client.list_running(started_before, cfg.page_size):
            now = self.s.clock()
            outages = self.s.outages()
            for record in page.records:
                self.counts["listed"] += 1
                if isinstance(record, InvalidRecord):
                    self.counts["invalid"] += 1
                    self.log.warning(
                        "record.invalid",
                        step_id=record.step_id,
                        organization_id=record.organization_id,
                        problems=record.problems,
                    )
                    continue
                key = hash(record.step_id)
                if record.step_id in zombies or key in seen:
                    self.counts["duplicate"] += 1
                    continue
                if not cfg.admits(record.organization_id):
                    seen.add(key)
                    self.counts["excluded"] += 1
                    continue
                verdict = decide(record, now, cfg.rules, outages)
                if isinstance(verdict, Spared):
                    seen.add(key)
                    self.counts[verdict.value] += 1
                    continue
                zombies[record.step_id] = verdict
                self.report.entries.append(_entry(verdict, "pending"))
        return zombies

    # -- writing -------------------------------------------------------------

    async def write_all(self, zombies: dict[str, Decision]) -> None:
        entries = {e.stepId: e for e in self.report.entries}
        queue = iter(zombies.values())
        workers = min(self.cfg.max_concurrency, len(zombies))
        await asyncio.gather(*(self.worker(queue, entries) for _ in range(workers)))
        if self.halted is not None:
            for entry in self.report.entries:
                if entry.outcome == "pending":
                    entry.outcome, entry.reason = "not_attempted", self.halted.value
                    self.counts["not_attempted"] += 1

    async def worker(self, queue: Iterator[Decision], entries: dict[str, StepEntry]) -> None:
        for decision in queue:
            if self.halted is not None:
                continue  # left pending; settled once below
            entry = entries[decision.step.step_id]
            reason = self.why_not_start()
            if reason is not None:
                self.skip(entry, reason)
                continue
            await self.handle(decision, entry)

    def why_not_start(self) -> SkipReason | None:
        return why_not_start(self.s.stop.is_set(), self.s.monotonic(), self.deadline_at)

    async def handle(self, decision: Decision, entry: StepEntry, *, reread: bool = True) -> None:
        step = decision.step
        client = self.s.client
        try:
            if reread and self.cfg.recheck:
                current = await client.get_step(step.step_id, step.organization_id)
                verdict = recheck(step, current, self.s.clock(), self.cfg.rules, self.s.outages())
                if isinstance(verdict, SkipReason):
                    self.skip(entry, verdict)
                    return
                decision = verdict
            if self.cfg.dry_run:
                self.settle(entry, decision, "would_mark")
                return
            reason = self.why_not_start()
            if reason is not None:
                self.skip(entry, reason)
                return
            update = build_update(
                decision, self.s.clock(), self.report.sweep_id, self.cfg.host, self.cfg.version
            )
            await client.patch_step(step.step_id, update)
            self.settle(entry, decision, "marked")
        except StepNotFound:
            self.skip(entry, SkipReason.GONE)
        except StepConflict:
            self.skip(entry, SkipReason.CONFLICT)
        except Interrupted:
            self.skip(entry, SkipReason.SHUTDOWN)
        except TokenRefused as exc:
            self.halt(Result.TOKEN_REFUSED, exc)
            self.fail(entry, "token_refused", exc)
        except GuardRefused as exc:
            # Clock skew seen mid-sweep: this write and every one after it are off.
            if self.halted is None:
                self.halted = Result.REFUSED
                self.refuse(exc)
        except BodyRejected as exc:
            self.fail(entry, "rejected", exc)
        except PlatformUnavailable as exc:
            self.fail(entry, "unavailable", exc)
        except InvalidAnswer as exc:
            self.fail(entry, "invalid_answer", exc)
        except PlatformRefused as exc:
            self.fail(entry, "rejected", exc)

    def halt(self, result: Result, exc: Exception) -> None:
        if self.halted is None:
            self.halted = result
            self.report.error = str(exc)
            self.log.error("sweep.aborted", result=result.value, error=str(exc))

    # -- outcomes ------------------------------------------------------------

    def settle(self, entry: StepEntry, decision: Decision, outcome: str) -> None:
        self.counts[outcome] += 1
        _fill(entry, decision, outcome)
        self.log.info(
            "step.marked" if outcome == "marked" else "step.would_mark",
            step_id=decision.step.step_id,
            organization_id=decision.step.organization_id,
            status=decision.status.value,
            error_code=decision.error_code,
            rule=decision.rule,
            idle_seconds=int(decision.idle.total_seconds()),
        )

    def skip(self, entry: StepEntry, reason: SkipReason) -> None:
        entry.outcome, entry.reason = "skipped", reason.value
        self.counts[f"skipped_{reason.value}"] += 1
        self.log.info(
            "step.skipped",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            reason=reason.value,
            rule=entry.rule,
        )

    def fail(self, entry: StepEntry, reason: str, exc: PlatformError) -> None:
        self.counts["failed"] += 1
        entry.outcome, entry.reason = "failed", reason
        entry.httpStatus, entry.attempts = exc.http_status, exc.attempts
        self.log.warning(
            "step.failed",
            step_id=entry.stepId,
            organization_id=entry.organizationId,
            reason=reason,
            http_status=exc.http_status,
            attempts=exc.attempts,
            error=str(exc),
        )


def _entry(decision: Decision, outcome: str) -> StepEntry:
    entry = StepEntry(
        stepId=decision.step.step_id, organizationId=decision.step.organization_id, outcome=outcome
    )
    _fill(entry, decision, outcome)
    return entry


def _fill(entry: StepEntry, decision: Decision, outcome: str) -> None:
    entry.outcome = outcome
    entry.rule = decision.rule
    entry.status = decision.status.value
    entry.errorCode = decision.error_code
    entry.idleSeconds = int(decision.idle.total_seconds())
