"""One sweep end to end over MockTransport: guards, re-reads, outcomes, events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sweeper.devserver.state import COMPLETED_AT_PATTERN
from sweeper.model import StepStatus
from sweeper.outages import OutageWindows
from sweeper.report import ExitCode, Result
from tests.builders import H, build_sweeper, events, patient_sweeper, run, sweep
from tests.fakes import NOW, FakeClock, FakePlatform, is_listing, record, refusal


def test_zombies_are_marked_and_live_steps_left(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Only steps idle past their rule's limit are written, each exactly once."""
    platform.add(
        record("zombie", started=5 * H),
        record("live", started=5 * H, heartbeat=timedelta(minutes=1)),
        record("young", started=timedelta(minutes=10)),
        record("cancelled", started=1 * H, workflowRunStatus="CANCELLED"),
    )
    report = sweep(platform, clock)
    assert report.exit_code is ExitCode.OK
    assert sorted(r.url.path.rsplit("/", 1)[1] for r in platform.patches) == ["cancelled", "zombie"]
    assert platform.state.steps["live"]["status"] == "RUNNING"
    assert platform.state.steps["cancelled"]["status"] == "CANCELLED"
    assert platform.state.steps["cancelled"]["errorCode"] == "RUN_CANCELLED"
    assert report.counts["marked"] == 2
    assert report.counts["not_stale"] == 1  # 'young' is not even listed
    marked = events(logs, "step.marked")
    assert {e["step_id"] for e in marked} == {"zombie", "cancelled"}
    for e in marked:
        assert e["sweep_id"] == report.sweep_id
        assert {"organization_id", "status", "error_code", "rule", "idle_seconds"} <= e.keys()
    finished = events(logs, "sweep.finished")[0]
    assert finished["marked"] == 2
    assert "duration_ms" in finished
    assert finished["failed"] == 0  # every outcome is counted, zeros too


def test_the_write_follows_the_seed(platform: FakePlatform, clock: FakeClock) -> None:
    """PATCH body: the step's own org, status, completedAt now, code, message, details."""
    platform.add(record("z", org="org-b", started=3 * H, retryCount=4))
    sweep(platform, clock)
    (body,) = platform.patch_bodies()
    assert set(body) == {
        "organizationId",
        "status",
        "completedAt",
        "errorCode",
        "errorMessage",
        "errorDetails",
    }
    assert body["organizationId"] == "org-b"
    assert body["status"] == "FAILED"
    assert body["completedAt"] == "2026-05-23T12:00:00.000Z"
    assert COMPLETED_AT_PATTERN.match(body["completedAt"])
    assert body["errorMessage"].startswith("No sign of life from this step for 3h")
    details = body["errorDetails"]
    assert details["rule"] == "default"
    assert details["retryCount"] == 4
    assert details["sweptBy"] == "test-host"
    assert details["sweeperVersion"] == "1.2.3"
    assert details["idleSeconds"] == 3 * 3600
    assert "logs" not in body
    assert "output" not in body
    assert "retryCount" not in body


def test_listing_asks_for_the_smallest_threshold(platform: FakePlatform, clock: FakeClock) -> None:
    """startedBefore is now minus the smallest of every rule's stale_after."""
    sweep(platform, clock)
    listing = platform.requests[0]
    assert listing.url.params["startedBefore"] == "2026-05-23T11:30:00.000Z"


def test_blast_radius_guard_marks_none(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """More zombies than max_steps: nothing is written, exit 3, guard=max_steps."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(4)))
    report = sweep(platform, clock, max_steps=3, page_size=1)
    assert platform.patches == []
    assert [r.method for r in platform.requests] == ["GET"] * 4  # listing only, no re-reads
    assert report.result is Result.REFUSED
    assert report.exit_code is ExitCode.GUARD_REFUSED
    (refused,) = events(logs, "sweep.refused")
    assert (refused["guard"], refused["zombies"], refused["max_steps"]) == ("max_steps", 4, 3)
    assert {e.outcome for e in report.entries} == {"refused"}


def test_blast_radius_counts_after_filters_and_thresholds(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Excluded organizations and live steps do not count toward max_steps."""
    platform.add(
        record("z1", started=5 * H),
        record("z2", started=5 * H, org="org-skip"),
        record("live", started=5 * H, heartbeat=timedelta(minutes=1)),
    )
    report = sweep(platform, clock, max_steps=1, exclude_organizations=frozenset({"org-skip"}))
    assert report.exit_code is ExitCode.OK
    assert report.counts["excluded"] == 1
    assert len(platform.patches) == 1


def test_organization_allow_list(platform: FakePlatform, clock: FakeClock) -> None:
    """With sweep.organizations set, only those organizations are touched."""
    platform.add(record("a", org="org-a"), record("b", org="org-b"))
    sweep(platform, clock, organizations=frozenset({"org-b"}))
    assert [b["organizationId"] for b in platform.patch_bodies()] == ["org-b"]


def test_clock_skew_refuses_the_sweep(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """A platform clock 10 minutes ahead: nothing written, exit 3, guard=clock_skew."""
    platform.add(record("z", started=5 * H))
    platform.date_skew = timedelta(minutes=10)
    report = sweep(platform, clock)
    assert platform.patches == []
    assert report.exit_code is ExitCode.GUARD_REFUSED
    assert events(logs, "sweep.refused")[0]["guard"] == "clock_skew"


def test_clock_jump_mid_sweep_stops_the_writes(platform: FakePlatform, clock: FakeClock) -> None:
    """If the platform's clock jumps during the writes, no write follows."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(5)))
    seen = {"n": 0}

    def jump(request: httpx.Request) -> None:
        if request.method == "PATCH":
            seen["n"] += 1
            if seen["n"] == 2:
                platform.date_skew = timedelta(hours=1)

    platform.before.append(jump)
    report = sweep(platform, clock, max_concurrency=1)
    assert len(platform.patches) == 2  # the second answer carried the jump
    assert report.result is Result.REFUSED
    assert report.guard == "clock_skew"
    # The write whose answer carried the jump was applied: marked. The 3 untried: refused.
    assert report.counts["marked"] == 2
    assert report.counts["refused"] == 3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: s.update("z", status="SUCCEEDED"), "finished"),
        (lambda s: s.update("z", lastHeartbeatAt="2026-05-23T11:59:00.000Z"), "alive"),
        (lambda s: s.update("z", updatedAt="2026-05-23T10:30:00.000Z"), "alive"),
        (lambda s: s.steps.pop("z"), "gone"),
    ],
)
def test_a_step_that_changed_after_the_listing_is_left_alone(
    platform: FakePlatform,
    clock: FakeClock,
    logs: list[dict[str, Any]],
    change: Callable[[Any], Any],
    reason: str,
) -> None:
    """The re-read just before the write catches finishes, heartbeats and deletions."""
    platform.add(record("z", started=5 * H))

    def race(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.path.endswith("/z"):
            change(platform.state)

    platform.before.append(race)
    report = sweep(platform, clock)
    assert platform.patches == []
    assert report.exit_code is ExitCode.OK
    (skipped,) = events(logs, "step.skipped")
    assert skipped["reason"] == reason
    assert skipped["step_id"] == "z"
    assert report.counts[f"skipped_{reason}"] == 1


def test_recheck_off_writes_without_reading_again(platform: FakePlatform, clock: FakeClock) -> None:
    """sweep.recheck = false skips the re-read (and its protection)."""
    platform.add(record("z", started=5 * H))
    sweep(platform, clock, recheck=False)
    assert [r.method for r in platform.requests] == ["GET", "PATCH"]


@pytest.mark.parametrize(
    ("status", "outcome", "code"),
    [
        (404, "skipped_gone", ExitCode.OK),
        (409, "skipped_conflict", ExitCode.OK),
        (400, "failed", ExitCode.SOME_FAILED),
        (422, "failed", ExitCode.SOME_FAILED),
        (503, "failed", ExitCode.SOME_FAILED),
    ],
)
def test_write_answers_become_outcomes(
    platform: FakePlatform, clock: FakeClock, status: int, outcome: str, code: ExitCode
) -> None:
    """404 gone and 409 conflict are harmless; 400/422 and exhausted 503 are failures."""
    platform.add(record("z", started=5 * H), record("ok", started=5 * H))

    def refuse(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and request.url.path.endswith("/z"):
            return httpx.Response(status, json={"success": False, "error": {"message": "no"}})
        return None

    platform.before.append(refuse)
    report = sweep(platform, clock)
    assert report.counts[outcome] == 1
    assert report.counts["marked"] == 1  # one bad step never stops the others
    assert report.exit_code is code


def test_failed_step_event_has_reason_status_and_attempts(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """step.failed says why, with the HTTP status and the number of tries."""
    platform.add(record("z", started=5 * H))
    platform.before.append(lambda r: httpx.Response(503) if r.method == "PATCH" else None)
    sweep(platform, clock, max_attempts=3)
    (failed,) = events(logs, "step.failed")
    assert (failed["reason"], failed["http_status"], failed["attempts"]) == ("unavailable", 503, 3)


def test_token_refused_mid_sweep_stops_everything(platform: FakePlatform, clock: FakeClock) -> None:
    """A 401 on a write: no further request at all, exit 77."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(6)))
    platform.before.append(lambda r: refusal() if r.method == "PATCH" else None)
    report = sweep(platform, clock, max_concurrency=1)
    assert len(platform.patches) == 1
    assert report.exit_code is ExitCode.TOKEN_REFUSED
    assert report.counts["not_attempted"] == 5


def test_token_refused_on_listing(platform: FakePlatform, clock: FakeClock) -> None:
    """A refused token on the first call: exit 77, nothing else sent."""
    platform.token = "another"
    report = sweep(platform, clock)
    assert report.exit_code is ExitCode.TOKEN_REFUSED
    assert len(platform.requests) == 1


def test_platform_down_during_listing_is_75(platform: FakePlatform, clock: FakeClock) -> None:
    """The listing still failing after all tries: exit 75, nothing written."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(3)))
    platform.before.append(lambda r: httpx.Response(503) if "cursor" in r.url.params else None)
    report = sweep(platform, clock, page_size=1)
    assert report.exit_code is ExitCode.UNAVAILABLE
    assert platform.patches == []


def test_invalid_records_are_logged_and_the_page_still_swept(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """record.invalid for a broken record; its neighbours are still marked; exit 0."""
    platform.add(record("z1", started=5 * H), record("z2", started=5 * H))
    platform.state.steps["z1"]["startedAt"] = "2026-05-23T07:00:00.000Z"
    broken = {
        "stepId": "bad",
        "organizationId": "org-a",
        "status": "RUNNING",
        "startedAt": "2026-05-23T06:00:00.000Z",
        "retryCount": "many",
    }
    platform.add(broken)
    report = sweep(platform, clock)
    (invalid,) = events(logs, "record.invalid")
    assert invalid["step_id"] == "bad"
    assert "retryCount" in invalid["problems"]
    assert report.counts["invalid"] == 1
    assert report.counts["marked"] == 2
    assert report.exit_code is ExitCode.OK


def test_a_step_listed_twice_is_handled_once(platform: FakePlatform, clock: FakeClock) -> None:
    """The same stepId on two pages is written once."""
    page = {
        "success": True,
        "data": [
            record("z", started=5 * H),
            record("z", started=5 * H),
            record("live", heartbeat=timedelta(seconds=5)),
            record("live", heartbeat=timedelta(seconds=5)),
        ],
        "nextCursor": None,
    }
    platform.add(record("z", started=5 * H))
    platform.before.append(
        lambda r: httpx.Response(200, json=page) if r.url.path.endswith("steps") else None
    )
    report = sweep(platform, clock)
    assert len(platform.patches) == 1
    assert report.counts["duplicate"] == 2


def test_dry_run_writes_nothing(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """--dry-run lists, decides and re-reads, logs step.would_mark, sends no PATCH."""
    platform.add(record("z", started=5 * H))
    report = sweep(platform, clock, dry_run=True)
    assert platform.patches == []
    assert [r.method for r in platform.requests] == ["GET", "GET"]
    assert events(logs, "step.would_mark")[0]["step_id"] == "z"
    assert events(logs, "step.marked") == []
    assert report.counts["would_mark"] == 1
    assert report.exit_code is ExitCode.OK


def test_dry_run_still_applies_the_guards(platform: FakePlatform, clock: FakeClock) -> None:
    """A dry run with too many zombies exits 3 like a real one."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(3)))
    assert sweep(platform, clock, dry_run=True, max_steps=2).exit_code is ExitCode.GUARD_REFUSED


def test_deadline_leaves_the_rest_for_the_next_sweep(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """No write starts after sweep.deadline; the rest are skipped with reason=deadline."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(5)))

    def slow(request: httpx.Request) -> None:
        if request.method == "PATCH":
            clock.advance(timedelta(seconds=30))

    platform.before.append(slow)
    report = sweep(platform, clock, deadline=timedelta(seconds=45), max_concurrency=1)
    assert len(platform.patches) == 2
    assert report.counts["skipped_deadline"] == 3
    assert {e["reason"] for e in events(logs, "step.skipped")} == {"deadline"}
    assert report.exit_code is ExitCode.OK


def test_concurrency_is_bounded(platform: FakePlatform, clock: FakeClock) -> None:
    """Never more than max_concurrency writes in flight."""
    platform.add(*(record(f"z{n:02d}", started=5 * H) for n in range(20)))
    in_flight = {"now": 0, "peak": 0}
    inner = platform.handle

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            in_flight["now"] += 1
            in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            in_flight["now"] -= 1
        return inner(request)

    report = asyncio.run(build_sweeper(handler, clock, max_concurrency=3).run())
    assert report.counts["marked"] == 20
    assert in_flight["peak"] == 3


def test_stop_during_writes_lets_in_flight_finish_and_starts_no_more(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """After stop: writes already sent complete; no new write; the sweep is interrupted."""
    platform.add(*(record(f"z{n:02d}", started=5 * H) for n in range(10)))
    stop = asyncio.Event()
    inner = platform.handle

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH" and len(platform.patches) == 1:
            stop.set()  # the signal arrives while the 2nd and 3rd writes are in flight
            await asyncio.sleep(0)
        return inner(request)

    report = asyncio.run(build_sweeper(handler, clock, stop=stop, max_concurrency=3).run())
    marked = report.counts["marked"]
    assert marked == len(platform.patches) <= 3
    assert report.counts["skipped_shutdown"] == 10 - marked
    assert report.result is Result.INTERRUPTED
    assert report.exit_code is ExitCode.UNAVAILABLE


def test_report_json_lists_every_zombie(platform: FakePlatform, clock: FakeClock) -> None:
    """The report has a summary with counts and one entry per zombie."""
    platform.add(record("z", started=5 * H), record("live", heartbeat=timedelta(seconds=1)))
    report = sweep(platform, clock)
    data = json.loads(json.dumps(report.to_json()))
    assert data["summary"]["exitCode"] == 0
    assert data["summary"]["counts"]["marked"] == 1
    assert data["steps"] == [
        {
            "stepId": "z",
            "organizationId": "org-a",
            "outcome": "marked",
            "rule": "default",
            "status": "FAILED",
            "errorCode": "ZOMBIE_STEP_TIMEOUT",
            "idleSeconds": 5 * 3600,
            "attempts": 1,
            "lagSeconds": 3 * 3600.0,  # 5h idle, 2h limit: crossed it 3h ago
            "trigger": "stale",
        }
    ]


def test_mark_one_step_by_hand(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """`mark --force` re-reads the step and writes it even if it is not stale, if RUNNING."""
    from sweeper.policy import manual_rule

    platform.add(record("m", started=timedelta(minutes=5)), record("done", status="SUCCEEDED"))
    sweeper = build_sweeper(platform, clock)
    rule = manual_rule(StepStatus.CANCELLED, "BY_HAND", "stuck: {idle}")
    report = asyncio.run(sweeper.mark("m", "org-a", rule, force=True))
    assert report.exit_code is ExitCode.OK
    (body,) = platform.patch_bodies()
    assert (body["status"], body["errorCode"], body["errorMessage"]) == (
        "CANCELLED",
        "BY_HAND",
        "stuck: 5m",
    )
    assert body["errorDetails"]["rule"] == "manual"
    gone = asyncio.run(sweeper.mark("nope", "org-a", rule))
    assert gone.counts["skipped_gone"] == 1
    finished = asyncio.run(sweeper.mark("done", "org-a", rule))
    assert finished.counts["skipped_finished"] == 1
    assert len(platform.patches) == 1
    assert [e["reason"] for e in events(logs, "step.skipped")] == ["gone", "finished"]


def test_mark_refuses_a_step_within_its_limit(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Without --force, `mark` leaves a step alone that its rule does not call stale, and says
    its idle time and the limit."""
    from sweeper.policy import manual_rule

    platform.add(record("live", started=timedelta(minutes=5)), record("old", started=3 * H))
    sweeper = build_sweeper(platform, clock)
    rule = manual_rule(StepStatus.FAILED, "MARKED_BY_HAND", None)
    live = asyncio.run(sweeper.mark("live", "org-a", rule))
    assert live.exit_code is ExitCode.SOME_FAILED
    assert platform.patches == []
    (entry,) = live.entries
    assert (entry.reason, entry.idleSeconds, entry.limit, entry.rule) == (
        "alive",
        300,
        "2h",
        "default",
    )
    (refusal,) = events(logs, "mark.not_stale")
    assert (refusal["idle_seconds"], refusal["stale_after"]) == (300, "2h")
    assert "--force" in refusal["detail"]
    old = asyncio.run(sweeper.mark("old", "org-a", rule))
    assert old.exit_code is ExitCode.OK
    assert len(platform.patches) == 1


def test_times_are_judged_by_the_injected_clock(platform: FakePlatform) -> None:
    """Moving the clock turns a live step into a zombie; no real time passes."""
    clock = FakeClock(NOW)
    platform.clock = clock
    platform.add(record("s", started=90 * timedelta(minutes=1)))
    assert sweep(platform, clock).counts["not_stale"] == 1
    clock.advance(timedelta(hours=1))
    assert sweep(platform, clock).counts["marked"] == 1


def test_outage_windows_are_discounted_in_the_sweep(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Time the platform was unreachable does not count; the write says how much was discounted."""
    platform.add(record("short", started=3 * H), record("long", started=5 * H))
    windows = OutageWindows.of([(NOW - 2 * H, NOW - 30 * timedelta(minutes=1))])
    sweeper = build_sweeper(platform, clock)
    sweeper.outages = lambda: windows
    report = asyncio.run(sweeper.run())
    assert report.counts["not_stale"] == 1
    (body,) = platform.patch_bodies()
    assert body["errorDetails"]["outageDiscountSeconds"] == 90 * 60
    assert body["errorDetails"]["idleSeconds"] == 5 * 3600 - 90 * 60


def test_daemon_outage_memory_spares_steps_that_could_not_report(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A sweep that finds the platform down, then three hours nobody watched: discounted."""
    from sweeper.outages import OutageLog

    outages = OutageLog(clock, gap=timedelta(minutes=15))
    # 1h in: the platform answers, and the step's worker is alive.
    platform.add(record("s", started=5 * H, heartbeat=timedelta(minutes=1)))
    sweeper = build_sweeper(
        platform, clock, max_attempts=1, observer=outages.observe, outages=outages.windows
    )
    assert asyncio.run(sweeper.run()).counts["not_stale"] == 1
    # The platform goes down for 3 hours: the worker cannot heartbeat either.
    down = lambda r: httpx.Response(503)  # noqa: E731
    platform.before.append(down)
    clock.advance(timedelta(minutes=1))
    assert asyncio.run(sweeper.run()).result is Result.UNAVAILABLE
    clock.advance(3 * H)
    platform.before.remove(down)
    report = asyncio.run(sweeper.run())
    # 3h02m since the last heartbeat, but ~3h01m of it was an outage: not stale.
    assert report.counts["not_stale"] == 1
    assert platform.patches == []


def test_a_503_with_a_superscript_retry_after_is_retried(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A 503 whose Retry-After is unreadable, even a byte that looks like a digit
    (latin-1 '²'), is retried with backoff like any other 503: the sweep completes."""
    platform.add(record("z1"))
    platform.schedule(
        lambda: httpx.Response(503, headers=[(b"Retry-After", b"\xb2")]), when=is_listing
    )
    report = run(patient_sweeper(platform, clock))
    assert report.result is Result.COMPLETED, report.error
    assert report.counts["marked"] == 1
    assert len([r for r in platform.requests if is_listing(r)]) == 2  # the 503, then again
