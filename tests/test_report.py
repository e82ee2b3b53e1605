"""The outcome accounting, as tables: exit codes, one outcome per zombie, counts that add up."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from sweeper.report import (
    LISTING_COUNTS,
    OUTCOME_COUNTS,
    OUTCOMES,
    RUNAWAY_COUNTS,
    AlreadySettled,
    ExitCode,
    Outcome,
    Result,
    StepEntry,
    SweepReport,
    write_json_atomically,
    write_report,
)
from tests.fakes import NOW


def report(**kwargs: object) -> SweepReport:
    return SweepReport(sweep_id="sw-1", started_at=NOW, dry_run=False, **kwargs)  # type: ignore[arg-type]


def entries(*outcomes: tuple[Outcome, str | None]) -> list[StepEntry]:
    made = []
    for n, (outcome, reason) in enumerate(outcomes):
        entry = StepEntry(stepId=f"s{n}", organizationId="org")
        entry.settle(outcome, reason)
        made.append(entry)
    return made


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (Result.COMPLETED, ExitCode.OK),
        (Result.REFUSED, ExitCode.GUARD_REFUSED),
        (Result.TOKEN_REFUSED, ExitCode.TOKEN_REFUSED),
        (Result.UNAVAILABLE, ExitCode.UNAVAILABLE),
        (Result.INTERRUPTED, ExitCode.UNAVAILABLE),
        (Result.INVALID_LISTING, ExitCode.UNAVAILABLE),
        (Result.CRASHED, ExitCode.CRASHED),
    ],
)
def test_every_result_has_its_exit_code(result: Result, code: ExitCode) -> None:
    """Each way a sweep ends maps to the exit code of operations.md, failures or not."""
    assert report(result=result).exit_code is code
    failed = report(result=result, entries=entries((Outcome.FAILED, None)))
    failed.tally()
    assert failed.exit_code is (ExitCode.SOME_FAILED if result is Result.COMPLETED else code)


def test_exit_code_values_are_the_documented_numbers() -> None:
    """The numbers scripts and systemd see (operations.md)."""
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 70, 75, 77, 78]


@pytest.mark.parametrize(
    ("manual", "outcome", "code"),
    [
        (False, None, ExitCode.OK),
        (False, Outcome.SKIPPED, ExitCode.OK),
        (False, Outcome.MARKED, ExitCode.OK),
        (False, Outcome.FAILED, ExitCode.SOME_FAILED),
        (True, None, ExitCode.SOME_FAILED),
        (True, Outcome.SKIPPED, ExitCode.SOME_FAILED),
        (True, Outcome.NOT_ATTEMPTED, ExitCode.SOME_FAILED),
        (True, Outcome.MARKED, ExitCode.OK),
        (True, Outcome.WOULD_MARK, ExitCode.OK),
        (True, Outcome.FAILED, ExitCode.SOME_FAILED),
    ],
)
def test_a_completed_sweep_exits_1_on_failures_and_mark_exits_1_when_nothing_marked(
    manual: bool, outcome: Outcome | None, code: ExitCode
) -> None:
    """Completed: 1 if a write failed; `mark` (manual) also 1 when it marked nothing."""
    done = report(manual=manual)
    if outcome is not None:
        done.entries = entries((outcome, "gone" if outcome is Outcome.SKIPPED else None))
    done.tally()
    assert done.exit_code is code


@pytest.mark.parametrize("first", [o for o in Outcome if o is not Outcome.PENDING])
def test_an_entry_takes_one_outcome_only(first: Outcome) -> None:
    """A second outcome is a bug (AlreadySettled, naming the step and both outcomes)."""
    entry = StepEntry(stepId="s1", organizationId="org")
    entry.settle(first, "why")
    said = re.escape(f"step 's1': marked after {first.value}")
    with pytest.raises(AlreadySettled, match=f"^{said}$"):
        entry.settle(Outcome.MARKED)
    assert (entry.outcome, entry.reason) == (first, "why")


def test_an_entry_cannot_be_settled_as_pending() -> None:
    """PENDING is not an outcome: settling with it is refused and the entry stays pending."""
    entry = StepEntry(stepId="s1", organizationId="org")
    with pytest.raises(ValueError, match=r"^an entry cannot be settled as pending$"):
        entry.settle(Outcome.PENDING)
    assert entry.outcome is Outcome.PENDING
    entry.settle(Outcome.FAILED)
    assert entry.outcome is Outcome.FAILED


def test_settle_pending_settles_only_the_pending_and_counts_them() -> None:
    """Entries already settled keep their outcome; the rest get the given one; returns how many."""
    sweep = report(entries=[StepEntry(stepId=f"s{n}", organizationId="org") for n in range(4)])
    sweep.entries[1].settle(Outcome.MARKED)
    assert sweep.settle_pending(Outcome.NOT_ATTEMPTED, "guard") == 3
    assert [(e.outcome, e.reason) for e in sweep.entries] == [
        (Outcome.NOT_ATTEMPTED, "guard"),
        (Outcome.MARKED, None),
        (Outcome.NOT_ATTEMPTED, "guard"),
        (Outcome.NOT_ATTEMPTED, "guard"),
    ]
    assert sweep.settle_pending(Outcome.FAILED, "again") == 0
    assert report().settle_pending(Outcome.FAILED, "none") == 0


def test_tally_counts_every_outcome_and_the_counts_add_up() -> None:
    """Each entry is counted once under its name (`skipped_<reason>`); they sum to `zombies`."""
    skips = [(Outcome.SKIPPED, r) for r in ("gone", "finished", "alive", "conflict")]
    skips += [(Outcome.SKIPPED, r) for r in ("deadline", "shutdown")]
    sweep = report(
        entries=entries(
            (Outcome.MARKED, None),
            (Outcome.MARKED, None),
            (Outcome.WOULD_MARK, None),
            *skips,
            (Outcome.FAILED, "http"),
            (Outcome.REFUSED, "max_steps"),
            (Outcome.NOT_ATTEMPTED, "guard"),
        )
    )
    sweep.counts["listed"] = 20
    sweep.tally()
    expected = dict.fromkeys(OUTCOME_COUNTS, 1) | {"marked": 2}
    assert {name: sweep.counts[name] for name in OUTCOME_COUNTS} == expected
    assert sweep.counts["zombies"] == 12 == sum(sweep.counts[n] for n in OUTCOME_COUNTS)
    assert sweep.counts["listed"] == 20  # listing counts are left alone


def test_tally_starts_over() -> None:
    """Tallying twice, or after entries changed, counts the entries as they are now."""
    sweep = report(entries=entries((Outcome.MARKED, None)))
    sweep.tally()
    sweep.tally()
    assert (sweep.counts["marked"], sweep.counts["zombies"]) == (1, 1)
    sweep.entries = []
    sweep.tally()
    assert (sweep.counts["marked"], sweep.counts["zombies"]) == (0, 0)


def test_every_count_is_reported_zeros_included() -> None:
    """A fresh report has every listing, outcome and runaway count, all zero."""
    assert OUTCOMES == LISTING_COUNTS + OUTCOME_COUNTS + RUNAWAY_COUNTS
    assert dict(report().counts) == dict.fromkeys(OUTCOMES, 0)


@pytest.mark.parametrize(("result"), list(Result))
def test_only_a_completed_sweep_succeeded(result: Result) -> None:
    """Readiness counts a sweep that ran to its end, whatever its steps' fates."""
    assert report(result=result).succeeded is (result is Result.COMPLETED)


def test_summary_and_json_have_the_documented_fields() -> None:
    """The summary's fields and spelling, and each step's non-empty fields (platform-api.md)."""
    sweep = report(
        finished_at=NOW + timedelta(seconds=3),
        result=Result.REFUSED,
        guard="max_steps",
        error="too many",
        entries=entries((Outcome.FAILED, "http")),
    )
    sweep.entries[0].httpStatus = 503
    sweep.tally()
    summary = {
        "sweepId": "sw-1",
        "startedAt": "2026-05-23T12:00:00.000Z",
        "finishedAt": "2026-05-23T12:00:03.000Z",
        "dryRun": False,
        "result": "refused",
        "guard": "max_steps",
        "error": "too many",
        "exitCode": 3,
        "counts": dict(sweep.counts),
    }
    assert sweep.summary() == summary
    step = {
        "stepId": "s0",
        "organizationId": "org",
        "outcome": "failed",
        "reason": "http",
        "httpStatus": 503,
    }
    assert sweep.to_json() == {"summary": summary, "steps": [step]}


def test_an_unfinished_sweep_has_no_finished_at() -> None:
    """Before it ends, a sweep's summary says finishedAt null; dryRun is reported as given."""
    summary = SweepReport(sweep_id="sw-2", started_at=NOW, dry_run=True).summary()
    assert (summary["finishedAt"], summary["dryRun"], summary["exitCode"]) == (None, True, 0)


def test_write_report_writes_scrubbed_json_readable_by_all(tmp_path: Path) -> None:
    """The report file: indented JSON plus a newline, scrubbed, mode 0644, no temporary left."""
    target = tmp_path / "report.json"
    target.write_text("old")
    sweep = report(error="token abc123 refused")
    write_report(sweep, target, scrub=lambda text: text.replace("abc123", "***"))
    text = target.read_text()
    assert text == json.dumps(report(error="token *** refused").to_json(), indent=2) + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["report.json"]
    write_report(sweep, target)
    assert "abc123" in target.read_text()


def test_write_json_atomically_through_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is written beside its target, as UTF-8."""
    monkeypatch.chdir(tmp_path)
    write_json_atomically(Path("r.json"), '{"é": 1}')
    assert (tmp_path / "r.json").read_bytes() == '{"é": 1}'.encode()
    assert os.listdir(tmp_path) == ["r.json"]


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path: Path) -> None:
    """If the rename fails, the temporary is removed, the old report stays, and the error rises."""
    target = tmp_path / "report.json"
    target.mkdir()  # os.replace of a file onto a directory fails
    with pytest.raises(IsADirectoryError):
        write_json_atomically(target, "{}")
    assert os.listdir(tmp_path) == ["report.json"]
    assert target.is_dir()


def test_the_temporary_is_a_hidden_sibling_of_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary is `.<name>.<random>.tmp` in the target's directory: the rename is atomic."""
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        renames.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    target = tmp_path / "report.json"
    write_json_atomically(target, "{}")
    [(src, dst)] = renames
    assert Path(dst) == target
    assert Path(src).parent == tmp_path
    assert Path(src).name.startswith(".report.json.")
    assert Path(src).name.endswith(".tmp")
