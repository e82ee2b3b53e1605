"""Each error carries its fate: what it does to the sweep and to the zombie whose write
it stops. The table the except ladders used to spell out, one row per class."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from sweeper.errors import (
    AlreadySettled,
    BodyRejected,
    ClockSkewRefused,
    ConfigError,
    Crashed,
    DeadlineReached,
    FailReason,
    Guard,
    GuardRefused,
    Interrupted,
    InvalidAnswer,
    InvalidListing,
    LeaseLost,
    ListingNotFound,
    ListingOverran,
    Outcome,
    PlatformRefused,
    PlatformUnavailable,
    Result,
    SkipReason,
    StepConflict,
    StepNotFound,
    SweeperError,
    TokenRefused,
    WriteAppliedUnderSkew,
    WriteUnanswered,
    as_error,
)
from sweeper.ledger import Ledger
from sweeper.report import OUTCOME_COUNTS, StepEntry, SweepReport
from tests.fakes import NOW

SKEW = ClockSkewRefused(90.0, 30.0)
ROWS: list[tuple[SweeperError, Result, Outcome, object, bool]] = [
    # error, the sweep's result, the zombie's outcome, its reason, stops every write
    (StepNotFound("404"), Result.UNAVAILABLE, Outcome.SKIPPED, SkipReason.GONE, False),
    (StepConflict("409"), Result.UNAVAILABLE, Outcome.SKIPPED, SkipReason.CONFLICT, False),
    (Interrupted("stop"), Result.INTERRUPTED, Outcome.SKIPPED, SkipReason.SHUTDOWN, False),
    (DeadlineReached("late"), Result.UNAVAILABLE, Outcome.SKIPPED, SkipReason.DEADLINE, False),
    (BodyRejected("400"), Result.UNAVAILABLE, Outcome.FAILED, FailReason.REJECTED, False),
    (PlatformRefused("302"), Result.UNAVAILABLE, Outcome.FAILED, FailReason.REJECTED, False),
    (PlatformUnavailable("5xx"), Result.UNAVAILABLE, Outcome.FAILED, FailReason.UNAVAILABLE, False),
    (
        WriteUnanswered("5xx", http_status=500, retry_after=None),
        Result.UNAVAILABLE,
        Outcome.FAILED,
        FailReason.UNAVAILABLE,
        False,
    ),
    (ListingOverran("slow"), Result.UNAVAILABLE, Outcome.FAILED, FailReason.UNAVAILABLE, False),
    (InvalidAnswer("bad"), Result.UNAVAILABLE, Outcome.FAILED, FailReason.INVALID_ANSWER, False),
    (
        InvalidListing("loop"),
        Result.INVALID_LISTING,
        Outcome.FAILED,
        FailReason.INVALID_ANSWER,
        False,
    ),
    (ListingNotFound("404"), Result.MISCONFIGURED, Outcome.FAILED, FailReason.REJECTED, False),
    (TokenRefused("401"), Result.TOKEN_REFUSED, Outcome.NOT_ATTEMPTED, Result.TOKEN_REFUSED, True),
    (LeaseLost("lease"), Result.INTERRUPTED, Outcome.NOT_ATTEMPTED, Guard.LEASE_LOST, True),
    (SKEW, Result.REFUSED, Outcome.REFUSED, Guard.CLOCK_SKEW, True),
    (WriteAppliedUnderSkew(SKEW, {}), Result.REFUSED, Outcome.REFUSED, Guard.CLOCK_SKEW, True),
    (GuardRefused(Guard.MAX_STEPS, "many"), Result.REFUSED, Outcome.REFUSED, Guard.MAX_STEPS, True),
    (Crashed(RuntimeError("bug")), Result.CRASHED, Outcome.NOT_ATTEMPTED, Result.CRASHED, True),
    (ConfigError("key"), Result.MISCONFIGURED, Outcome.NOT_ATTEMPTED, Result.MISCONFIGURED, True),
]


@pytest.mark.parametrize(("error", "result", "outcome", "reason", "halts"), ROWS)
def test_each_error_says_its_fate(
    error: SweeperError, result: Result, outcome: Outcome, reason: object, halts: bool
) -> None:
    """Result, outcome, reason and whether it stops every write, as operations.md says."""
    assert (error.result, error.outcome, error.reason, error.halts) == (
        result,
        outcome,
        reason,
        halts,
    )


def test_the_unforeseen_is_crashed_and_a_sweeper_error_is_itself() -> None:
    """An error nobody foresaw becomes Crashed, its type named; ours stay as they are."""
    bug = KeyError("x")
    crashed = as_error(bug)
    assert isinstance(crashed, Crashed)
    assert (str(crashed), crashed.result) == ("KeyError: 'x'", Result.CRASHED)
    assert crashed.log_fields()["exc_info"] is bug
    refused = TokenRefused("401")
    assert as_error(refused) is refused


def test_a_bug_in_the_accounting_is_no_sweeper_error() -> None:
    """A second outcome for one zombie is a bug: it crashes, it is never settled."""
    assert not issubclass(AlreadySettled, SweeperError)
    assert isinstance(as_error(AlreadySettled("twice")), Crashed)


def ledger() -> Ledger:
    report = SweepReport(sweep_id="sw-1", started_at=NOW, dry_run=False)
    return Ledger(report, _Log(), "the token file")


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.events.append((event, fields))


@pytest.mark.parametrize(("error", "result", "outcome", "reason", "halts"), ROWS)
def test_the_ledger_settles_an_error_by_its_fate(
    error: SweeperError, result: Result, outcome: Outcome, reason: object, halts: bool
) -> None:
    """One `settle`: a halting error stops every write (settled when the sweep ends), the
    others settle the one zombie; the counts come from the entries."""
    book = ledger()
    entry, other = book.new_entry("s1", "org"), book.new_entry("s2", "org")
    book.settle(entry, error)
    if halts:
        assert book.halted is error and book.report.result is result
        assert entry.outcome is Outcome.PENDING
    else:
        assert book.halted is None and (entry.outcome, entry.reason) == (outcome, reason)
    book.finish(stopped=False, finished_at=NOW, duration_ms=0)
    assert entry.outcome is outcome and entry.reason == reason
    assert other.outcome is (outcome if halts else Outcome.NOT_ATTEMPTED)
    assert sum(book.counts[name] for name in OUTCOME_COUNTS) == 2


def test_settling_a_settled_entry_raises_the_error_again() -> None:
    """A zombie has one fate: a second error for it is not swallowed."""
    book = ledger()
    entry = book.new_entry("s1", "org")
    book.skip(entry, SkipReason.GONE)
    error = BodyRejected("400")
    with pytest.raises(BodyRejected):
        book.settle(entry, error)
    assert (entry.outcome, entry.reason) == (Outcome.SKIPPED, SkipReason.GONE)


def test_the_first_halt_wins() -> None:
    """A guard that fires after a refused token changes nothing: one end, one event."""
    book = ledger()
    book.halt(TokenRefused("401"))
    book.halt(GuardRefused(Guard.MAX_STEPS, "many"))
    assert book.report.result is Result.TOKEN_REFUSED
    assert [event for event, _ in book.log.events] == ["sweep.aborted"]  # type: ignore[attr-defined]
    assert book.log.events[0][1]["token_source"] == "the token file"  # type: ignore[attr-defined]


def test_every_skip_reason_is_counted_under_its_own_name() -> None:
    """`skipped_<reason>` for each SkipReason, in the order of the enum."""
    assert [n for n in OUTCOME_COUNTS if n.startswith("skipped_")] == [
        f"skipped_{r.value}" for r in SkipReason
    ]
    entry = StepEntry(stepId="s1", organizationId="org")
    entry.settle(Outcome.FAILED, SkipReason.DEADLINE)  # an unconfirmed write: failed
    assert entry.count_name == "failed"


PACKAGE = Path(__file__).resolve().parent.parent / "sweeper"


def imports() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports, anywhere in it."""
    names = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in PACKAGE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in names and m not in (name, "sweeper")}
    return graph


def test_the_package_imports_in_no_circle() -> None:
    """No module imports one that imports it back, however far round (style rule 17)."""
    graph = imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start] - seen:
            seen.add(nxt)
            if nxt == goal or reaches(nxt, goal, seen):
                return True
        return False

    assert [m for m in sorted(graph) if reaches(m, m, set())] == []


def test_the_write_path_imports_downwards() -> None:
    """The writer and precise marking never import the sweep; the ledger no writer."""
    graph = imports()
    assert "sweeper.sweep" not in graph["sweeper.writer"] | graph["sweeper.precise"]
    assert "sweeper.writer" not in graph["sweeper.ledger"]
    assert "sweeper.precise" not in graph["sweeper.writer"]


def test_the_transport_imports_no_configuration() -> None:
    """The HTTP transport sits below the settings: it shares `addresses` with them."""
    graph = imports()
    below = graph["sweeper.transport"] | graph["sweeper.http11"] | graph["sweeper.addresses"]
    assert not {m for m in below if m.startswith("sweeper.settings")}
    assert "sweeper.addresses" in graph["sweeper.transport"] & graph["sweeper.settings.models"]
