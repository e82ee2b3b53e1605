"""Short tables for a person at a terminal: after `run --once`, `mark` and `check-config`.

Machines read the JSON events (`--log-format json`) and the `--report` file; these
tables are only printed when stdout is a terminal, and say nothing those do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sweeper.durations import humanize
from sweeper.errors import Outcome, SkipReason
from sweeper.model import FINAL_STATUSES
from sweeper.report import StepEntry, SweepReport

#: Steps listed one by one at most; the rest are counted (the report has them all).
MAX_ROWS = 15

_LISTING = (
    ("listed", "RUNNING steps listed"),
    ("not_stale", "alive (recent sign of life)"),
    ("exempt", "exempt by a rule"),
    ("excluded", "in excluded organizations"),
    ("not_running", "not RUNNING"),
    ("invalid", "invalid records skipped"),
    ("zombies", "zombies"),
    ("runaways", "of which runaways (past max_runtime)"),
)


def idle_text(seconds: float | None) -> str:
    return "" if seconds is None else humanize(timedelta(seconds=seconds))


def _what(entry: StepEntry) -> str:
    if entry.outcome in (Outcome.MARKED, Outcome.WOULD_MARK):
        verb = "marked" if entry.outcome is Outcome.MARKED else "would mark"
        return f"{verb} {entry.status}" + (" (runaway)" if entry.runaway else "")
    if entry.outcome is Outcome.SKIPPED:
        return f"left alone: {entry.reason}"
    return f"{entry.outcome.value.replace('_', ' ')}" + (
        f": {entry.reason}" if entry.reason else ""
    )


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned columns, indented under their heading line."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def sweep_summary(report: SweepReport, duration: timedelta | None = None) -> str:
    """What one sweep found and did, as the demo shows it."""
    counts = report.counts
    took = ""
    if duration is not None:
        seconds = duration.total_seconds()
        took = f" in {seconds:.1f}s" if seconds < 60 else f" in {humanize(duration)}"
    dry = " (dry run: nothing written)" if report.dry_run else ""
    lines = [f"sweep {report.sweep_id}: {report.result.value}{took}{dry}"]
    if report.error:
        lines.append(f"  {report.error}")
    lines += _table(
        [(label, str(counts[key])) for key, label in _LISTING if counts[key]] or [("listed", "0")]
    )
    outcomes: list[tuple[str, str]] = []
    for status in FINAL_STATUSES:
        for outcome, verb in ((Outcome.MARKED, "marked"), (Outcome.WOULD_MARK, "would mark")):
            n = sum(1 for e in report.entries if e.outcome is outcome and e.status == status)
            if n:
                outcomes.append((f"{verb} {status}", str(n)))
    for reason in SkipReason:
        if counts[reason.counted_as]:
            outcomes.append((f"left alone: {reason.text}", str(counts[reason.counted_as])))
    for key, text in (
        ("failed", "could not be marked"),
        ("refused", "not written: a guard refused"),
        ("not_attempted", "not attempted"),
    ):
        if counts[key]:
            outcomes.append((text, str(counts[key])))
    if outcomes:
        lines.append("of the zombies:")
        lines += _table(outcomes)
    if report.entries:
        rows = [("step", "organization", "outcome", "idle", "rule")]
        for entry in report.entries[:MAX_ROWS]:
            rows.append(
                (
                    entry.stepId,
                    entry.organizationId,
                    _what(entry),
                    idle_text(entry.idleSeconds),
                    entry.rule or "",
                )
            )
        lines += _table(rows)
        if len(report.entries) > MAX_ROWS:
            lines.append(
                f"  ... and {len(report.entries) - MAX_ROWS} more (--report PATH lists all)"
            )
    lines.append(f"exit code {int(report.exit_code)}")
    return "\n".join(lines)


def mark_summary(report: SweepReport, step_id: str, organization: str) -> str:
    """What `mark` did to its one step: a sentence, not a sweep's counts."""
    entry = report.entries[0] if report.entries else None
    head = f"step {step_id} (organization {organization}): "
    if entry is None:
        text = head + f"not marked ({report.result.value}: {report.error or 'see the log'})"
    elif entry.outcome in (Outcome.MARKED, Outcome.WOULD_MARK):
        idle = idle_text(entry.idleSeconds)
        text = head + f"{_what(entry)} with error code {entry.errorCode} (idle {idle})"
    elif entry.outcome is Outcome.SKIPPED and entry.reason is SkipReason.GONE:
        text = head + (
            "not found: no such step in this organization (a wrong --org, or a wrong id)"
        )
    elif entry.outcome is Outcome.SKIPPED and entry.limit is not None:
        text = head + (
            f"not marked: its last sign of life was {idle_text(entry.idleSeconds)} ago, within "
            f"its limit ({entry.limit}, rule {entry.rule}); --force marks it anyway"
        )
    elif entry.outcome is Outcome.SKIPPED and entry.reason is SkipReason.FINISHED:
        text = head + "not marked: it is no longer RUNNING (its result is kept)"
    else:
        text = head + f"not marked: {_what(entry)}"
    return f"{text}\nexit code {int(report.exit_code)}"


def settings_summary(shown: dict[str, Any], source: str, token_source: str) -> str:
    """The values in force, one per line, and where the configuration and token came from."""
    rows: list[tuple[str, str]] = []
    for section, values in shown.items():
        if section == "sweep" and isinstance(values, dict):
            values = {k: v for k, v in values.items() if k != "rules"}
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            rows.append((f"{section}.{key}", _value(value)))
    rules = shown.get("sweep", {}).get("rules") or []
    lines = [f"configuration: {source}", f"token: {token_source}"]
    lines += _table(rows)
    for rule in rules:
        limit = rule.get("stale_after")
        lines.append(
            f"  rule {rule.get('name')}: match {_value(rule.get('match'))}, "
            f"stale_after {_value(limit)}, status {_value(rule.get('status'))}"
            + (
                f", max_runtime {rule['max_runtime']}"
                if rule.get("max_runtime") != "inherit"
                else ""
            )
        )
    lines.append("valid")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    return str(value)
