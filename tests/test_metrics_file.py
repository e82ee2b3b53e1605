"""`run --once --metrics-file`: a failed run keeps the last success time of the run before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sweeper.ops import previous_last_success
from tests.e2e import Platform, sweeper, write_config
from tests.fakes import record

METRIC = "sweeper_last_success_timestamp_seconds"


def last_success_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith(METRIC + " ")]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"# HELP {METRIC} x\n# TYPE {METRIC} gauge\n{METRIC} 1.7e+09\n", 1.7e9),
        (f"{METRIC} 1764000000.5\n", 1764000000.5),
        (f"{METRIC} 0.0\n", None),
        (f"{METRIC} NaN\n", None),
        (f"{METRIC} +Inf\n", None),
        (f"{METRIC} soon\n", None),
        (f"{METRIC}\n", None),
        (f"{METRIC}_other 5\n", None),
        ("", None),
        ("\udcff\x00 binary", None),
    ],
)
def test_previous_last_success_reads_back_a_usable_value(
    tmp_path: Path, content: str, expected: float | None
) -> None:
    """Only a positive, finite value counts; anything else is no previous value."""
    path = tmp_path / "sweeper.prom"
    path.write_bytes(content.encode("utf-8", errors="surrogateescape"))
    assert previous_last_success(path) == expected


def test_previous_last_success_without_a_file(tmp_path: Path) -> None:
    """No file (or a directory) is no previous value, not an error."""
    assert previous_last_success(tmp_path / "absent.prom") is None
    assert previous_last_success(tmp_path) is None


def test_failed_run_keeps_the_last_success_time(stand_in: Platform, tmp_path: Path) -> None:
    """A success writes its time; a failed run after it keeps that time, never 0."""
    stand_in.state.add(record("z0", now=datetime.now(UTC), started=timedelta(hours=5)))
    config = str(write_config(tmp_path, stand_in.base_url))
    metrics = tmp_path / "sweeper.prom"
    ok = sweeper("--config", config, "run", "--once", "--metrics-file", str(metrics))
    assert ok.code == 0, ok.stderr
    (good,) = last_success_lines(metrics)
    assert float(good.split()[1]) > 0

    stand_in.faults.error_rate = 1.0
    failed = sweeper("--config", config, "run", "--once", "--metrics-file", str(metrics))
    assert failed.code == 75
    assert last_success_lines(metrics) == [good]
    assert 'sweeper_sweeps_total{result="unavailable"} 1.0' in metrics.read_text()


def test_failed_first_run_writes_never(stand_in: Platform, tmp_path: Path) -> None:
    """With no success known the gauge is 0, "never", which SweeperOneShotNeverSucceeded watches."""
    stand_in.faults.error_rate = 1.0
    config = str(write_config(tmp_path, stand_in.base_url))
    metrics = tmp_path / "sweeper.prom"
    failed = sweeper("--config", config, "run", "--once", "--metrics-file", str(metrics))
    assert failed.code == 75
    assert last_success_lines(metrics) == [f"{METRIC} 0.0"]
    assert 'sweeper_sweeps_total{result="unavailable"} 1.0' in metrics.read_text()
