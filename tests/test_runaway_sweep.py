"""Runaway steps through one sweep over MockTransport: the write, the re-read, the guards,
the events and the counts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from sweeper.model import StepStatus, format_timestamp
from sweeper.ops import Metrics
from sweeper.outages import OutageWindows
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Rule, Rules
from sweeper.report import ExitCode, Result
from tests.builders import build_sweeper, events, sweep
from tests.fakes import NOW, FakeClock, FakePlatform, record

H = timedelta(hours=1)
S = timedelta(seconds=1)
RULES = Rules(
    (
        Rule(
            "batch",
            None,
            StepStatus.FAILED,
            "Z",
            DEFAULT_ERROR_MESSAGE,
            {"stepType": ("batch",)},
            max_runtime=6 * H,
            runaway_status=StepStatus.FAILED,
            runaway_error_code="BATCH_TOO_LONG",
        ),
    ),
    Rule(
        "default",
        2 * H,
        StepStatus.FAILED,
        "ZOMBIE_STEP_TIMEOUT",
        DEFAULT_ERROR_MESSAGE,
        max_runtime=24 * H,
    ),
)


def beat_on_reread(platform: FakePlatform, step_id: str, **fields: Any) -> None:
    """The worker changes the step between the listing and the re-read."""

    def hook(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path.endswith("/" + step_id):
            platform.state.update(step_id, **fields)

    platform.before.append(hook)


def test_a_runaway_is_written_with_its_trigger_runtime_and_limit(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """status/code/message of the runaway keys; errorDetails.trigger = max_runtime."""
    platform.add(
        record("wedged", started=30 * H, heartbeat=5 * S),
        record("zombie", started=30 * H),
        record("young", started=20 * H, heartbeat=5 * S),
        record("batch", started=7 * H, stepType="batch"),
    )
    report = sweep(platform, clock, rules=RULES)
    assert report.exit_code is ExitCode.OK
    wedged = platform.state.steps["wedged"]
    assert (wedged["status"], wedged["errorCode"]) == ("CANCELLED", "STEP_MAX_RUNTIME_EXCEEDED")
    assert "1d 6h" in wedged["errorMessage"]
    details = wedged["errorDetails"]
    assert details["trigger"] == "max_runtime"
    assert (details["runtimeSeconds"], details["maxRuntimeSeconds"]) == (30 * 3600, 24 * 3600)
    assert details["sweepId"] == report.sweep_id
    assert platform.state.steps["zombie"]["errorDetails"]["trigger"] == "stale"
    assert platform.state.steps["zombie"]["status"] == "FAILED"
    batch = platform.state.steps["batch"]
    assert (batch["status"], batch["errorCode"]) == ("FAILED", "BATCH_TOO_LONG")
    assert platform.state.steps["young"]["status"] == "RUNNING"
    marked = {e["step_id"]: e for e in events(logs, "step.marked")}
    assert marked["wedged"]["trigger"] == "max_runtime"
    assert marked["wedged"]["runtime_seconds"] == 30 * 3600
    assert marked["wedged"]["max_runtime_seconds"] == 24 * 3600
    assert marked["zombie"]["trigger"] == "stale"
    assert "runtime_seconds" not in marked["zombie"]
    finished = events(logs, "sweep.finished")[0]
    assert (finished["zombies"], finished["marked"]) == (3, 3)
    assert (finished["runaways"], finished["runaways_marked"]) == (2, 2)
    assert events(logs, "sweep.started")[0]["max_runtime"] == {"batch": "6h", "default": "1d"}
    entries = {e.stepId: e for e in report.entries}
    assert (entries["wedged"].trigger, entries["wedged"].runtimeSeconds) == ("max_runtime", 108000)
    assert entries["wedged"].lagSeconds == 6 * 3600.0  # crossed 1d at startedAt + 24h


def test_a_moved_heartbeat_does_not_save_a_runaway(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The re-read shows a newer heartbeat: a wedged worker beats on, the step is marked."""
    platform.add(record("wedged", started=30 * H, heartbeat=5 * S))
    beat_on_reread(platform, "wedged", lastHeartbeatAt=format_timestamp(NOW))
    report = sweep(platform, clock, rules=RULES)
    assert report.counts["runaways_marked"] == 1
    assert platform.state.steps["wedged"]["status"] == "CANCELLED"


def test_a_runaway_that_started_again_is_left_alone(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """The re-read shows another startedAt (a retry): skipped, nothing written."""
    platform.add(record("wedged", started=30 * H, heartbeat=5 * S))
    beat_on_reread(platform, "wedged", startedAt=format_timestamp(NOW - 1 * H))
    report = sweep(platform, clock, rules=RULES)
    assert platform.patches == []
    assert report.counts["skipped_alive"] == 1
    assert report.counts["runaways"] == 1 and report.counts["runaways_marked"] == 0
    assert events(logs, "step.skipped")[0]["reason"] == "alive"


def test_a_runaway_that_finished_keeps_its_result(platform: FakePlatform, clock: FakeClock) -> None:
    """The re-read shows it SUCCEEDED: its real result is kept."""
    platform.add(record("wedged", started=30 * H, heartbeat=5 * S))
    beat_on_reread(platform, "wedged", status="SUCCEEDED")
    report = sweep(platform, clock, rules=RULES)
    assert platform.patches == []
    assert report.counts["skipped_finished"] == 1


def test_the_blast_radius_counts_runaways_and_zombies_together(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Two zombies and two runaways with max_steps 3: refused, nothing written, exit 3."""
    platform.add(
        record("z1", started=30 * H),
        record("z2", started=30 * H),
        record("r1", started=30 * H, heartbeat=S),
        record("r2", started=30 * H, heartbeat=S),
    )
    report = sweep(platform, clock, rules=RULES, max_steps=3)
    assert report.result is Result.REFUSED
    assert report.exit_code is ExitCode.GUARD_REFUSED
    assert platform.patches == []
    assert report.counts["refused"] == 4 and report.counts["runaways"] == 2


def test_the_clock_check_stops_runaway_writes(platform: FakePlatform, clock: FakeClock) -> None:
    """A platform clock off by more than the allowed skew: no runaway is written."""
    platform.add(record("r1", started=30 * H, heartbeat=S))
    platform.date_skew = timedelta(minutes=10)
    report = sweep(platform, clock, rules=RULES)
    assert platform.patches == []
    assert report.exit_code is ExitCode.GUARD_REFUSED


def test_dry_run_would_mark_a_runaway(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """A dry run says which trigger, and writes nothing."""
    platform.add(record("r1", started=30 * H, heartbeat=S))
    report = sweep(platform, clock, rules=RULES, dry_run=True)
    assert platform.patches == []
    assert report.counts["would_mark"] == 1 and report.counts["runaways"] == 1
    assert events(logs, "step.would_mark")[0]["trigger"] == "max_runtime"


def test_outage_grace_does_not_discount_runtime(platform: FakePlatform, clock: FakeClock) -> None:
    """A long outage spares a silent step, not a runaway."""
    platform.add(
        record("silent", started=10 * H, heartbeat=3 * H),
        record("wedged", started=30 * H, heartbeat=3 * H),
    )
    outage = OutageWindows.of([(NOW - 20 * H, NOW - 10 * S)])
    sweeper = build_sweeper(platform, clock, rules=RULES, outages=lambda: outage)
    report = asyncio.run(sweeper.run())
    assert platform.state.steps["silent"]["status"] == "RUNNING"
    wedged = platform.state.steps["wedged"]
    assert wedged["errorDetails"]["trigger"] == "max_runtime"
    assert "outageDiscountSeconds" not in wedged["errorDetails"]
    assert report.counts["marked"] == 1


def test_the_listing_reaches_back_only_to_the_smallest_limit(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A rule that never goes stale with a short max_runtime widens the one listing query."""
    short = Rules(
        (
            Rule(
                "quick",
                None,
                StepStatus.FAILED,
                "Z",
                DEFAULT_ERROR_MESSAGE,
                {"stepType": ("quick",)},
                max_runtime=timedelta(minutes=10),
            ),
        ),
        RULES.default,
    )
    platform.add(record("q", started=timedelta(minutes=11), heartbeat=S, stepType="quick"))
    report = sweep(platform, clock, rules=short)
    lists = [r for r in platform.requests if r.method == "GET" and "startedBefore" in str(r.url)]
    assert [r.url.params["startedBefore"] for r in lists] == [
        format_timestamp(NOW - timedelta(minutes=10))
    ]
    assert report.counts["runaways_marked"] == 1
    platform.requests.clear()
    sweep(platform, clock, rules=RULES)
    lists = [r for r in platform.requests if "startedBefore" in str(r.url)]
    assert [r.url.params["startedBefore"] for r in lists] == [format_timestamp(NOW - 2 * H)]


def test_metrics_count_runaways_apart(platform: FakePlatform, clock: FakeClock) -> None:
    """sweeper_runaways_total by outcome and status, sweeper_runaways_found."""
    platform.add(record("r1", started=30 * H, heartbeat=S), record("z", started=30 * H))
    report = sweep(platform, clock, rules=RULES)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_sweep(report)
    value = registry.get_sample_value
    assert value("sweeper_runaways_total", {"outcome": "marked", "status": "CANCELLED"}) == 1
    assert value("sweeper_runaways_total", {"outcome": "marked", "status": "FAILED"}) is None
    assert value("sweeper_steps_total", {"outcome": "marked", "status": "FAILED"}) == 1
    assert value("sweeper_runaways_found") == 1
    assert value("sweeper_zombies_found") == 2


def test_without_max_runtime_nothing_changes(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """The default (never): a beating step 30h old is left alone; sweep.started as before."""
    platform.add(record("old", started=30 * H, heartbeat=S))
    report = sweep(platform, clock)
    assert platform.patches == []
    assert report.counts["runaways"] == 0
    assert "max_runtime" not in events(logs, "sweep.started")[0]


def test_the_terminal_summary_names_runaways(platform: FakePlatform, clock: FakeClock) -> None:
    """After `run --once` at a terminal: how many runaways, and which step was one."""
    from sweeper.summary import settings_summary, sweep_summary

    platform.add(record("r1", started=30 * H, heartbeat=S), record("z", started=30 * H))
    text = sweep_summary(sweep(platform, clock, rules=RULES))
    assert "of which runaways (past max_runtime)  1" in text
    assert "marked CANCELLED (runaway)" in text
    assert "marked FAILED (runaway)" not in text
    shown = {"sweep": {"max_runtime": "1d", "rules": [{"name": "b", "max_runtime": "6h"}]}}
    assert "max_runtime 6h" in settings_summary(shown, "f", "t")
    shown["sweep"]["rules"][0]["max_runtime"] = "inherit"
    assert "max_runtime 6h" not in settings_summary(shown, "f", "t")
    assert "sweep.max_runtime  1d" in settings_summary(shown, "f", "t")


def test_no_lease_time_left_no_runaway_write(platform: FakePlatform, clock: FakeClock) -> None:
    """Leader election applies to runaways: the lease runs short during the re-read, so
    the PATCH is never sent and the runaway is not_attempted (lease_lost)."""
    from sweeper.leader import Gate, LeaseClock
    from sweeper.report import Outcome

    platform.add(record("r1", started=30 * H, heartbeat=S))
    lease = LeaseClock(clock.monotonic)
    lease.renewed(clock.monotonic(), 15.0)

    def stall_on_reread(request: httpx.Request) -> None:
        if request.method == "GET" and "startedBefore" not in str(request.url):
            clock.advance(timedelta(seconds=5))

    platform.before.append(stall_on_reread)
    sweeper = build_sweeper(platform, clock, rules=RULES)
    sweeper.client.gate = Gate(lease, 11.0)
    report = asyncio.run(sweeper.run())
    assert platform.patches == []
    (entry,) = report.entries
    assert (entry.outcome, entry.reason, entry.trigger) == (
        Outcome.NOT_ATTEMPTED,
        "lease_lost",
        "max_runtime",
    )
    assert report.counts["runaways"] == 1 and report.counts["runaways_marked"] == 0


def test_a_precise_timer_leaves_a_runaway_whose_started_at_changed_even_if_backdated(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Precise mode follows the sweep's re-read rule: a runaway whose startedAt changed
    on the re-read is left alone (the next listing judges it afresh), even when the new
    startedAt is itself already past max_runtime; it is not written from that read."""
    from tests.builders import precise

    platform.add(record("w", started=24 * H - 60 * S, heartbeat=S))
    beat_on_reread(platform, "w", startedAt=format_timestamp(NOW - 30 * H))
    sweeper = build_sweeper(platform, clock, rules=RULES)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.counts["armed"] == 1
    assert platform.patches == []
    assert platform.state.steps["w"]["status"] == "RUNNING"
