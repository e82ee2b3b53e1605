"""What one sweep did: counts per outcome, one entry per zombie, and the exit code it earns."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from sweeper.errors import (
    AlreadySettled,
    Guard,
    GuardRefused,
    Outcome,
    Reason,
    Result,
    SkipReason,
    SweeperError,
)
from sweeper.model import format_timestamp


class ExitCode(IntEnum):
    """The exit codes of `run --once` and `mark` (operations.md)."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    GUARD_REFUSED = 3
    CRASHED = 70
    UNAVAILABLE = 75
    TOKEN_REFUSED = 77
    CONFIG = 78


_EXIT_CODE_OF = {
    Result.REFUSED: ExitCode.GUARD_REFUSED,
    Result.TOKEN_REFUSED: ExitCode.TOKEN_REFUSED,
    Result.UNAVAILABLE: ExitCode.UNAVAILABLE,
    Result.INTERRUPTED: ExitCode.UNAVAILABLE,
    Result.INVALID_LISTING: ExitCode.UNAVAILABLE,
    Result.MISCONFIGURED: ExitCode.CONFIG,
    Result.CRASHED: ExitCode.CRASHED,
}


#: What the listing saw, counted as records go by (not zombie outcomes).
LISTING_COUNTS = (
    "listed",
    "invalid",
    "duplicate",
    "excluded",
    "not_running",
    "exempt",
    "not_stale",
    "armed",
    "unchecked",
    "zombies",
)
#: The zombie outcomes, as counted; derived from the entries, so they add up to `zombies`.
OUTCOME_COUNTS = (
    Outcome.MARKED.value,
    Outcome.WOULD_MARK.value,
    *(reason.counted_as for reason in SkipReason),
    Outcome.FAILED.value,
    Outcome.REFUSED.value,
    Outcome.NOT_ATTEMPTED.value,
)
#: Runaways (trigger max_runtime) counted apart: how many of the zombies were runaways,
#: and how many of those were marked. Both are part of the counts above too.
RUNAWAY_COUNTS = ("runaways", "runaways_marked")
#: Every count a sweep reports, zeros included.
OUTCOMES = LISTING_COUNTS + OUTCOME_COUNTS + RUNAWAY_COUNTS
#: `errorDetails.trigger` of a runaway (policy.Trigger.MAX_RUNTIME).
RUNAWAY = "max_runtime"

StepKey = tuple[str, str]
"""A step's identity: (organizationId, stepId). The same id in two organizations is two steps."""


@dataclass(slots=True)
class StepEntry:
    """One zombie's fate, as the JSON report lists it."""

    stepId: str
    organizationId: str
    outcome: Outcome = Outcome.PENDING
    reason: Reason | None = None
    rule: str | None = None
    status: str | None = None
    errorCode: str | None = None
    idleSeconds: int | None = None
    httpStatus: int | None = None
    attempts: int | None = None
    #: For a marked step: seconds from crossing its limit to its write.
    lagSeconds: float | None = None
    #: True when a write was sent whose answer was lost: it may have been applied.
    unconfirmed: bool | None = None
    #: True when a precise-marking timer watched it cross its limit: its lag is
    #: detection lag (the histogram); a listing's backlog has lag but no watch.
    watched: bool | None = None
    #: `mark` without --force, a step left alone: the limit it is within (`2h`, `never`).
    limit: str | None = None
    #: What made it a zombie: `stale`, or `max_runtime` for a runaway (None by hand).
    trigger: str | None = None
    #: A runaway's: seconds since its startedAt when it was judged.
    runtimeSeconds: int | None = None

    @property
    def runaway(self) -> bool:
        return self.trigger == RUNAWAY

    @property
    def key(self) -> StepKey:
        return (self.organizationId, self.stepId)

    @property
    def count_name(self) -> str:
        """The name this entry is counted under (`skipped_<reason>` for a skip)."""
        if self.outcome is Outcome.SKIPPED:
            return SkipReason(str(self.reason)).counted_as  # a skip without its reason: a bug
        return self.outcome.value

    def settle(self, outcome: Outcome, reason: Reason | None = None) -> None:
        if self.outcome is not Outcome.PENDING:
            raise AlreadySettled(
                f"step {self.stepId!r}: {outcome.value} after {self.outcome.value}"
            )
        if outcome is Outcome.PENDING:
            raise ValueError("an entry cannot be settled as pending")
        self.outcome, self.reason = outcome, reason


@dataclass(slots=True)
class SweepReport:
    sweep_id: str
    started_at: datetime
    dry_run: bool
    manual: bool = False
    finished_at: datetime | None = None
    result: Result = Result.COMPLETED
    guard: Guard | None = None
    error: str | None = None
    counts: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(OUTCOMES, 0)))
    entries: list[StepEntry] = field(default_factory=list)

    def end(self, error: SweeperError) -> None:
        """The sweep ends with this error: its result, its message, the guard that fired."""
        self.result = error.result
        self.error = str(error)
        if isinstance(error, GuardRefused):
            self.guard = error.guard

    def settle_pending(self, outcome: Outcome, reason: Reason) -> int:
        """Give every entry still pending the same outcome; returns how many."""
        settled = 0
        for entry in self.entries:
            if entry.outcome is Outcome.PENDING:
                entry.settle(outcome, reason)
                settled += 1
        return settled

    def tally(self) -> None:
        """Count the zombie outcomes from the entries: the counts add up by construction."""
        for name in OUTCOME_COUNTS + RUNAWAY_COUNTS:
            self.counts[name] = 0
        self.counts["zombies"] = len(self.entries)
        for entry in self.entries:
            self.counts[entry.count_name] += 1
            if entry.runaway:
                self.counts["runaways"] += 1
                self.counts["runaways_marked"] += entry.outcome is Outcome.MARKED

    @property
    def exit_code(self) -> ExitCode:
        code = _EXIT_CODE_OF.get(self.result)
        if code is not None:
            return code
        if self.counts["failed"]:
            return ExitCode.SOME_FAILED
        if self.manual and not (self.counts["marked"] or self.counts["would_mark"]):
            return ExitCode.SOME_FAILED  # `mark` that did not mark
        return ExitCode.OK

    @property
    def succeeded(self) -> bool:
        """The sweep ran to its end (some steps may have failed): what readiness counts."""
        return self.result is Result.COMPLETED

    def summary(self) -> dict[str, Any]:
        return {
            "sweepId": self.sweep_id,
            "startedAt": format_timestamp(self.started_at),
            "finishedAt": format_timestamp(self.finished_at) if self.finished_at else None,
            "dryRun": self.dry_run,
            "result": self.result.value,
            "guard": self.guard,
            "error": self.error,
            "exitCode": int(self.exit_code),
            "counts": dict(self.counts),
        }

    def to_json(self) -> dict[str, Any]:
        entries = [{k: v for k, v in asdict(e).items() if v is not None} for e in self.entries]
        return {"summary": self.summary(), "steps": entries}


def write_json_atomically(path: Path, content: str) -> None:
    """Write beside the target, then rename: readers never see half a file."""
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    report: SweepReport, path: Path, scrub: Callable[[str], str] = lambda text: text
) -> None:
    """The report as JSON; `scrub` removes secrets (the platform's own messages may echo one)."""
    write_json_atomically(path, scrub(json.dumps(report.to_json(), indent=2)) + "\n")
