"""What one sweep did: counts per outcome, one entry per zombie, and the exit code it earns."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any

from sweeper.model import format_timestamp


class ExitCode(IntEnum):
    """The exit codes of `run --once` and `mark` (operations.md)."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    GUARD_REFUSED = 3
    UNAVAILABLE = 75
    TOKEN_REFUSED = 77
    CONFIG = 78


class Result(StrEnum):
    """How a sweep as a whole ended."""

    COMPLETED = "completed"
    REFUSED = "refused"
    TOKEN_REFUSED = "token_refused"
    UNAVAILABLE = "unavailable"
    INTERRUPTED = "interrupted"


#: Every outcome a sweep counts; all are reported, zeros included.
OUTCOMES = (
    "listed",
    "invalid",
    "duplicate",
    "excluded",
    "exempt",
    "not_stale",
    "zombies",
    "marked",
    "would_mark",
    "skipped_gone",
    "skipped_finished",
    "skipped_alive",
    "skipped_conflict",
    "skipped_deadline",
    "skipped_shutdown",
    "failed",
    "refused",
    "not_attempted",
)


@dataclass(slots=True)
class StepEntry:
    """One zombie's fate, as the JSON report lists it."""

    stepId: str
    organizationId: str
    outcome: str
    reason: str | None = None
    rule: str | None = None
    status: str | None = None
    errorCode: str | None = None
    idleSeconds: int | None = None
    httpStatus: int | None = None
    attempts: int | None = None


@dataclass(slots=True)
class SweepReport:
    sweep_id: str
    started_at: datetime
    dry_run: bool
    finished_at: datetime | None = None
    result: Result = Result.COMPLETED
    guard: str | None = None
    error: str | None = None
    counts: Counter[str] = field(default_factory=lambda: Counter(dict.fromkeys(OUTCOMES, 0)))
    entries: list[StepEntry] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.result is Result.TOKEN_REFUSED:
            return ExitCode.TOKEN_REFUSED
        if self.result is Result.REFUSED:
            return ExitCode.GUARD_REFUSED
        if self.result in (Result.UNAVAILABLE, Result.INTERRUPTED):
            return ExitCode.UNAVAILABLE
        if self.counts["failed"]:
            return ExitCode.SOME_FAILED
        return ExitCode.OK

    @property
    def succeeded(self) -> bool:
        """The sweep ran to its end (some steps may have failed): what readiness counts."""
        return self.exit_code in (ExitCode.OK, ExitCode.SOME_FAILED)

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
