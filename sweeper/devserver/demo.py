"""`sweeper demo`: a stand-in platform, one real sweep through the CLI, and what it did."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sweeper.devserver.server import serve_in_thread
from sweeper.devserver.state import PlatformState
from sweeper.errors import SkipReason

DEMO_CONFIG = """\
# The demo's configuration: the defaults, a max_runtime for wedged steps that beat on,
# and one rule for steps of cancelled runs.
[api]
base_url = "{base_url}"
token_file = "{token_file}"
max_concurrency = 8
max_rate = 200

[sweep]
stale_after = "2h"
status = "FAILED"
error_code = "ZOMBIE_STEP_TIMEOUT"
max_runtime = "1d"

[[sweep.rules]]
name = "cancelled-runs"
match = {{ workflowRunStatus = ["CANCELLED"] }}
stale_after = "30m"
status = "CANCELLED"
error_code = "RUN_CANCELLED"
error_message = "The run was cancelled and this step never reported back ({{idle}} idle)."
"""

#: One zombie's worker "finishes" just before its write, to show the re-read at work.
RACING_STEP = "zombie-00000"
#: Wedged workers whose heartbeat thread beats on: only max_runtime catches them.
RUNAWAYS = 2


def run_demo() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sweeper-demo-"))
    token = secrets.token_urlsafe(24)
    token_file = workdir / "api-token"
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    state = PlatformState()
    state.seed(zombies=25, live=10, seed="demo")
    state.seed_runaways(RUNAWAYS, seed="demo")

    async def worker_finishes_in_time(request: Request) -> Response | None:
        if request.method == "GET" and request.url.path.endswith("/" + RACING_STEP):
            record = state.steps[RACING_STEP]
            if record["status"] == "RUNNING":
                state.update(RACING_STEP, status="SUCCEEDED")
        return None

    with serve_in_thread(state, token, intercept=worker_finishes_in_time) as server:
        config = workdir / "config.toml"
        config.write_text(
            DEMO_CONFIG.format(base_url=server.base_url, token_file=token_file), encoding="utf-8"
        )
        config.chmod(0o600)
        report_path = workdir / "report.json"
        log_path = workdir / "sweeper.log"
        print(f"sweeper demo: a stand-in platform at {server.base_url} holds 25 zombies,")
        print(f"10 live steps and {RUNAWAYS} runaways (wedged for over a day, heartbeat still")
        print("beating) over three organizations; sweeping it once:\n")
        print(f"  sweeper --config {config} run --once --report {report_path}\n", flush=True)
        with log_path.open("w", encoding="utf-8") as log_file:
            code = subprocess.call(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "sweeper",
                    "--config",
                    str(config),
                    "--log-format",
                    "json",
                    "run",
                    "--once",
                    "--report",
                    str(report_path),
                ],
                stderr=log_file,
                env={k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")},
            )
    if not report_path.exists():
        print(f"the sweep wrote no report (exit {code}); see {log_path}")
        return code
    report = json.loads(report_path.read_text(encoding="utf-8"))
    print(summarize(report))
    print(f"\nexit code {code}")
    print(f"report:   {report_path}")
    print(f"events:   {log_path}")
    return code


def _hours(seconds: object) -> str:
    return f"{seconds / 3600:.1f}h" if isinstance(seconds, int) else "?"


def summarize(report: dict[str, Any]) -> str:
    """A readable account of a sweep report: outcomes, reasons and organizations."""
    counts = report["summary"]["counts"]
    steps = report["steps"]
    marked = Counter(s["status"] for s in steps if s["outcome"] == "marked")
    reasons = Counter(s["reason"] for s in steps if s["outcome"] == "skipped")
    lines = [f"zombies found: {counts.get('zombies', 0)}"]
    for status in ("FAILED", "CANCELLED"):
        lines.append(f"  marked {status:<10} {marked.get(status, 0):>3}")
    runaways = [s for s in steps if s.get("trigger") == "max_runtime"]
    for s in runaways:
        if s["outcome"] == "marked":
            ran = _hours(s.get("runtimeSeconds"))
            lines.append(
                f"  runaway {s['stepId']}: running {ran} with a fresh heartbeat, past max_runtime:"
                f" marked {s.get('status')} ({s.get('errorCode')})"
            )
    for reason, n in sorted(reasons.items()):
        lines.append(f"  left alone {n:>3}: {SkipReason(reason).text}")
    failed = [s for s in steps if s["outcome"] == "failed"]
    if failed:
        lines.append(f"  could not be marked {len(failed)}")
    lines.append(f"not zombies: {counts.get('not_stale', 0)} still alive (recent sign of life)")
    by_org: dict[str, Counter[str]] = defaultdict(Counter)
    for s in steps:
        key = s.get("status", "?") if s["outcome"] == "marked" else s["outcome"]
        by_org[s["organizationId"]][key] += 1
    lines.append("\nper organization:")
    for org in sorted(by_org):
        c = by_org[org]
        lines.append(
            f"  {org:<12} marked FAILED {c['FAILED']:>2}, marked CANCELLED {c['CANCELLED']:>2}, "
            f"left alone {c['skipped']:>2}, failed {c['failed']:>2}"
        )
    return "\n".join(lines)
