"""Idle time on the platform's clock (issue 15, finding 4): a skew that the clock check
accepts never adds to idle time. Through the real CLI against the real stand-in."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import environment, sweeper, write_config

DEV_TOKEN = "skew-token"


@pytest.fixture(name="skewed")
def _skewed(request: pytest.FixtureRequest) -> Iterator[str]:
    """A stand-in whose own clock is off by the given skew: 2 zombies, 5 workers that
    beat on every read (its runaways, whose limit is not set here)."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "sweeper", "dev-server", "--port", "0", "--zombies", "2"),
            *("--live", "0", "--runaways", "5", f"--clock-skew={request.param}"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(SWEEPER_DEV_TOKEN=DEV_TOKEN),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        yield re.search(r"(http://127\.0\.0\.1:\d+)", line).group(1)  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


@pytest.mark.parametrize("skewed", ["-100s", "+100s", "-119s"], indirect=True)
def test_a_skew_within_max_clock_skew_marks_no_live_step(skewed: str, tmp_path: Path) -> None:
    """The platform 100 s behind (or ahead, or just within the 2 min tolerance), a limit
    of 90 s, workers beating all the time: `run --once` marks the two zombies only."""
    config = write_config(tmp_path, skewed, '[sweep]\nstale_after = "90s"\n', token=DEV_TOKEN)
    result = sweeper("--config", str(config), "run", "--once")
    assert result.code == 0, result.stderr
    marked = sorted(e["step_id"] for e in result.named("step.marked"))
    assert marked == ["zombie-00000", "zombie-00001"]
    # Not even judged zombies at the listing (then saved by the re-read's fresh beat).
    (finished,) = result.named("sweep.finished")
    assert finished["zombies"] == 2, finished
