"""`sweeper demo` and `sweeper dev-server` through the real CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e import environment, start_dev_server


def test_demo_marks_zombies_and_explains() -> None:
    """The first thing a user runs: a sweep, a readable summary, a report path, exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "sweeper", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"marked FAILED\s+\d+", out)
    assert re.search(r"marked CANCELLED\s+[1-9]", out)
    assert "left alone   1: finished between the listing and the write" in out
    assert "per organization:" in out
    report_path = Path(re.search(r"report:\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    report = json.loads(report_path.read_text())
    counts = report["summary"]["counts"]
    assert counts["zombies"] == 27  # 25 zombies and 2 runaways
    assert counts["marked"] == 26
    assert (counts["runaways"], counts["runaways_marked"]) == (2, 2)
    assert counts["not_stale"] == 10
    assert counts["skipped_finished"] == 1
    assert re.search(r"runaway runaway-0000\d: running [\d.]+h with a fresh heartbeat", out)
    runaways = [s for s in report["steps"] if s.get("trigger") == "max_runtime"]
    assert {(s["outcome"], s["errorCode"]) for s in runaways} == {
        ("marked", "STEP_MAX_RUNTIME_EXCEEDED")
    }


def test_dev_server_prints_its_url_serves_and_stops_on_sigterm() -> None:
    """dev-server on a free port: prints the base URL, answers with auth, exits on SIGTERM."""
    proc, url = start_dev_server("--zombies", "3", "--live", "2", "--seed", "9", token="from-env")
    try:
        steps = httpx.get(
            url + "/api/data-platform/workflow-run-steps",
            params={"limit": 100},
            headers={"Authorization": "Bearer from-env"},
        )
        assert steps.status_code == 200
        assert len(steps.json()["data"]) == 5
        refused = httpx.get(url + "/api/data-platform/workflow-run-steps")
        assert refused.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_dev_server_rejects_bad_flags() -> None:
    """Bad fault settings are usage errors (exit 2)."""
    for args in (["--error-rate", "2"], ["--latency", "soon"], ["--zombies", "-1"]):
        done = subprocess.run(
            [sys.executable, "-m", "sweeper", "dev-server", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=environment(),
            check=False,
        )
        assert done.returncode == 2, args
