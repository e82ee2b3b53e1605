"""The report agrees with the platform: after a last write attempt whose answer did not
confirm it (any transient answer, a lost one, a broken 2xx, a Retry-After too long), one
more re-read settles it; this sweep's own write is `marked`, anything else keeps its
outcome. Through the real HTTP path (httpx.MockTransport on the fake platform)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from sweeper.model import StepStatus
from sweeper.policy import manual_rule
from sweeper.report import Outcome, Result, SweepReport
from tests.builders import H, build_sweeper, entry_of, patient_sweeper, run
from tests.e2e import Platform, sweeper, write_config
from tests.fakes import FakeClock, FakePlatform, is_reread, record, step_id_of

Answer = Callable[[], httpx.Response]


def raising(exc: Exception) -> Answer:
    def answer() -> httpx.Response:
        raise exc

    return answer


UNCONFIRMING: dict[str, Answer] = {
    "503": lambda: httpx.Response(503),
    "502": lambda: httpx.Response(502),
    "500": lambda: httpx.Response(500),
    "504": lambda: httpx.Response(504),
    "408": lambda: httpx.Response(408),
    "429": lambda: httpx.Response(429),
    "503 Retry-After 1h": lambda: httpx.Response(503, headers={"Retry-After": "3600"}),
    "read timeout": raising(httpx.ReadTimeout("timed out")),
    "connection reset": raising(httpx.RemoteProtocolError("peer closed")),
    "2xx not JSON": lambda: httpx.Response(200, content=b"<html>ok</html>"),
    "2xx without success": lambda: httpx.Response(200, json={"success": False}),
}


def applied_then(platform: FakePlatform, answer: Answer, *, from_attempt: int = 1) -> list[int]:
    """PATCHes from the given attempt on are applied, then answered `answer`; earlier ones
    are refused unapplied (503). Returns the list of attempts seen."""
    seen: list[int] = []

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method != "PATCH":
            return None
        seen.append(1)
        if len(seen) < from_attempt:
            return httpx.Response(503)
        step_id = request.url.path.rsplit("/", 1)[1]
        platform.state.patch_step(step_id, request.content)
        return answer()

    platform.before.append(hook)
    return seen


def own_writes(platform: FakePlatform, report: SweepReport) -> set[str]:
    """Steps whose platform record shows this sweep's write."""
    return {
        step_id
        for step_id, r in platform.state.steps.items()
        if (r.get("errorDetails") or {}).get("sweepId") == report.sweep_id
    }


def reported_marked(report: SweepReport) -> set[str]:
    return {e.stepId for e in report.entries if e.outcome is Outcome.MARKED}


@pytest.mark.parametrize("answer", UNCONFIRMING, ids=list(UNCONFIRMING))
@pytest.mark.parametrize(("max_attempts", "from_attempt"), [(1, 1), (2, 2), (3, 3)])
def test_a_last_attempt_applied_but_unconfirmed_is_marked(
    platform: FakePlatform,
    clock: FakeClock,
    logs: list[dict[str, Any]],
    answer: str,
    max_attempts: int,
    from_attempt: int,
) -> None:
    """The last attempt is applied and its answer does not confirm it: the settling re-read
    shows this sweep's write, the step is marked (detail applied_earlier), one write each."""
    platform.add(record("z1", started=5 * H), record("z2", started=5 * H))
    seen = applied_then(platform, UNCONFIRMING[answer], from_attempt=from_attempt)
    sweeper = build_sweeper(platform, clock, max_attempts=max_attempts, max_concurrency=1)
    report = asyncio.run(sweeper.run())
    assert own_writes(platform, report) == {"z1", "z2"}
    assert reported_marked(report) == {"z1", "z2"}, [(e.outcome, e.reason) for e in report.entries]
    marked = [e for e in logs if e["event"] == "step.marked"]
    assert {e["detail"] for e in marked} == {"applied_earlier"}
    assert not [e for e in logs if e["event"] == "step.failed"]
    assert len(seen) == from_attempt + 1  # z2 written once: z1's earlier 503s were its own
    reads = [r for r in platform.requests if r.method == "GET" and "organizationId" in str(r.url)]
    assert len(reads) >= 2


@pytest.mark.parametrize("answer", ["503", "502", "read timeout", "2xx not JSON"])
def test_an_unconfirmed_write_not_applied_keeps_its_failure(
    platform: FakePlatform, clock: FakeClock, answer: str
) -> None:
    """Not applied (or applied by someone else): the settling re-read changes nothing; the
    outcome is the failure it was."""
    platform.add(record("z1", started=5 * H))

    def refuse(request: httpx.Request) -> httpx.Response | None:
        return UNCONFIRMING[answer]() if request.method == "PATCH" else None

    platform.before.append(refuse)
    report = asyncio.run(build_sweeper(platform, clock, max_attempts=1).run())
    (entry,) = report.entries
    assert entry.outcome is Outcome.FAILED
    assert own_writes(platform, report) == set()


def test_another_sweeps_write_is_not_taken_for_ours(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The settling re-read shows FAILED with another sweepId: not marked by us, failed."""
    platform.add(record("z1", started=5 * H))

    def someone_else(request: httpx.Request) -> httpx.Response | None:
        if request.method != "PATCH":
            return None
        platform.state.steps["z1"].update(
            status="FAILED", errorDetails={"sweepId": "another-sweep"}
        )
        return httpx.Response(503)

    platform.before.append(someone_else)
    report = asyncio.run(build_sweeper(platform, clock, max_attempts=1).run())
    (entry,) = report.entries
    assert entry.outcome is Outcome.FAILED


def test_a_settling_read_that_fails_too_keeps_the_failure(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Applied, answer lost, and the settling re-read is lost too: failed (it may have been
    applied), never skipped."""
    platform.add(record("z1", started=5 * H))
    patched: list[int] = []

    def lose_everything_after(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            platform.state.patch_step("z1", request.content)
            patched.append(1)
            return httpx.Response(502)
        if patched:
            return httpx.Response(502)
        return None

    platform.before.append(lose_everything_after)
    report = asyncio.run(build_sweeper(platform, clock, max_attempts=1).run())
    (entry,) = report.entries
    assert (entry.outcome, entry.reason) == (Outcome.FAILED, "unavailable")


def test_a_retry_cut_by_the_deadline_is_settled_too(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Applied, then 503 asking to wait past the sweep's deadline: no retry, but the
    settling re-read marks it."""
    platform.add(record("z1", started=5 * H))
    applied_then(platform, lambda: httpx.Response(503, headers={"Retry-After": "50"}))
    sweeper = build_sweeper(platform, clock, max_attempts=5, deadline=timedelta(seconds=30))
    report = asyncio.run(sweeper.run())
    assert reported_marked(report) == {"z1"}


def test_a_retry_cut_by_a_stop_is_settled_too(platform: FakePlatform, clock: FakeClock) -> None:
    """Applied, then 503; SIGTERM during the wait: the settling re-read still goes out
    (it writes nothing) and the step is marked."""
    platform.add(record("z1", started=5 * H))
    stop = asyncio.Event()

    def stop_after_answer() -> httpx.Response:
        stop.set()
        return httpx.Response(503)

    applied_then(platform, stop_after_answer)
    sweeper = build_sweeper(platform, clock, max_attempts=5, stop=stop)
    report = asyncio.run(sweeper.run())
    assert reported_marked(report) == {"z1"}


def test_a_mark_by_hand_is_settled_too(platform: FakePlatform, clock: FakeClock) -> None:
    """sweeper mark: applied, 503 on its only attempt: marked."""
    platform.add(record("z1", started=5 * H))
    applied_then(platform, UNCONFIRMING["503"])
    sweeper = build_sweeper(platform, clock, max_attempts=1)
    report = asyncio.run(sweeper.mark("z1", "org-a", manual_rule(StepStatus.FAILED, "M", None)))
    assert reported_marked(report) == {"z1"}


def test_a_retry_cut_by_a_guard_is_settled_too(platform: FakePlatform, clock: FakeClock) -> None:
    """z1 applied then 503; while it waits, z2's re-read carries a Date 1 h off (the clock
    guard fires): no more writes, but z1's settling re-read still marks it."""
    platform.add(record("z1", started=5 * H), record("z2", started=5 * H))
    patched: list[str] = []

    def hook(request: httpx.Request) -> httpx.Response | None:
        step_id = request.url.path.rsplit("/", 1)[1]
        # Only z2's re-read after z1's write is skewed (the Date is set after this hook).
        platform.date_skew = timedelta(hours=1) if patched and step_id == "z2" else timedelta(0)
        if request.method == "PATCH" and step_id == "z1" and not patched:
            patched.append(step_id)
            platform.state.patch_step(step_id, request.content)
            return httpx.Response(503)
        if request.method == "GET" and step_id == "z2" and not patched:
            return httpx.Response(503)  # z2 retries its read: z1 writes first
        return None

    platform.before.append(hook)

    async def yielding_sleep(seconds: float) -> None:
        for _ in range(10):
            await asyncio.sleep(0)  # the other worker runs while this one waits

    sweeper = build_sweeper(
        platform, clock, max_attempts=3, max_concurrency=2, sleep=yielding_sleep
    )
    report = asyncio.run(sweeper.run())
    assert report.result is Result.REFUSED
    assert reported_marked(report) == own_writes(platform, report) == {"z1"}, [
        (e.stepId, e.outcome, e.reason) for e in report.entries
    ]


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_a_living_platform_losing_answers_after_apply_never_disagrees_with_the_report(
    stand_in: Platform, tmp_path: Path, max_attempts: int
) -> None:
    """The real CLI against the stand-in: 150 zombies; every 7th write is applied and then
    answered 503, every 11th applied and then cut off (502). The report (--report) and the
    platform agree on every write that landed: applied-but-not-reported = 0."""
    now = datetime.now(UTC)
    for n in range(150):
        stand_in.state.add(record(f"z{n:03}", now=now, started=timedelta(hours=5)))
    writes: list[int] = []
    lost: list[str] = []

    async def lose_after_apply(request: Request) -> Response | None:
        if request.method != "PATCH":
            return None
        writes.append(1)
        if len(writes) % 7 and len(writes) % 11:
            return None
        step_id = request.url.path.rsplit("/", 1)[1]
        lost.append(step_id)
        stand_in.state.patch_step(step_id, await request.body())
        return Response(status_code=503 if len(writes) % 7 == 0 else 502)

    stand_in.hooks.append(lose_after_apply)
    config = write_config(tmp_path, stand_in.base_url, f"max_attempts = {max_attempts}\n")
    out = tmp_path / "report.json"
    result = sweeper("--config", str(config), "run", "--once", "--report", str(out))
    assert result.code in (0, 1), result.stderr
    written = json.loads(out.read_text())
    sweep_id = written["summary"]["sweepId"]
    applied = {
        step_id
        for step_id, r in stand_in.state.steps.items()
        if (r.get("errorDetails") or {}).get("sweepId") == sweep_id
    }
    marked = {s["stepId"] for s in written["steps"] if s["outcome"] == "marked"}
    assert len(lost) == 150 // 7 + 150 // 11 - 150 // 77  # 33 answers lost after apply
    assert applied == marked == {f"z{n:03}" for n in range(150)}


def test_an_answer_that_trips_the_clock_guard_is_settled_too(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Applied, then answered 503 with a Date 1 h off: the guard stops the sweep (exit 3),
    and the settling re-read (answered with a sound Date) marks this write."""
    platform.add(record("z1", started=5 * H))

    def hook(request: httpx.Request) -> httpx.Response | None:
        platform.date_skew = timedelta(hours=1) if request.method == "PATCH" else timedelta(0)
        if request.method == "PATCH":
            platform.state.patch_step("z1", request.content)
            return httpx.Response(503)
        return None

    platform.before.append(hook)
    report = asyncio.run(build_sweeper(platform, clock, max_attempts=3).run())
    assert report.result is Result.REFUSED
    assert reported_marked(report) == own_writes(platform, report) == {"z1"}


def test_lost_write_then_deadline_is_failed_not_skipped(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A write the platform applied but whose answer was lost, with the deadline passing
    during the backoff before its retry, is reported `failed` (or `marked` once a re-read
    shows it), never skipped: a write sent whose fate no answer told is `failed`."""
    random.seed(1)  # RetryPolicy's full jitter: any backoff above 1 ms crosses the deadline
    platform.add(record("z1"))

    def lost_late() -> httpx.Response:
        # The lost answer arrives 1 ms before the deadline (60 s after the start).
        clock.advance(timedelta(seconds=60) - timedelta(milliseconds=1))
        return httpx.Response(502)

    platform.apply_then(lost_late, step_id="z1", times=1)
    report = run(patient_sweeper(platform, clock, deadline=timedelta(seconds=60)))
    assert "z1" in own_writes(platform, report)  # the platform applied our write
    entry = entry_of(report, "z1")
    assert entry.attempts == 1
    assert entry.outcome in (Outcome.FAILED, Outcome.MARKED), (entry.outcome, entry.reason)


def test_lost_write_then_sigterm_during_reread_is_failed_not_skipped(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A write applied whose answer was lost, then a stop signal during the backoff of the
    re-read before its retry: `failed` (or `marked`), never `skipped_shutdown`, which would
    claim nothing was written."""
    stop = asyncio.Event()
    platform.add(record("z1"))
    platform.apply_then(lambda: httpx.Response(502), step_id="z1", times=1)
    # z1's second re-read (the one before the retry) is answered 503.
    platform.schedule(
        None, lambda: httpx.Response(503), when=lambda r: is_reread(r) and step_id_of(r) == "z1"
    )
    sleeps = {"n": 0}

    async def sleep(seconds: float) -> None:
        sleeps["n"] += 1
        clock.advance(timedelta(seconds=seconds))
        if sleeps["n"] == 2:  # the backoff of the re-read: SIGTERM arrives
            stop.set()

    report = run(patient_sweeper(platform, clock, stop=stop, sleep=sleep))
    assert "z1" in own_writes(platform, report)
    entry = entry_of(report, "z1")
    assert entry.attempts == 1
    assert entry.outcome in (Outcome.FAILED, Outcome.MARKED), (entry.outcome, entry.reason)


def test_a_write_answered_with_another_steps_data_is_invalid(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A write answered 200 with the data of another step (another id and organization)
    is not a confirmation: the zombie is never `marked` while the platform still shows it
    RUNNING."""
    platform.add(record("z1"))

    def misrouted(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            data = {"stepId": "other", "organizationId": "org-b", "status": "FAILED"}
            return httpx.Response(200, json={"success": True, "data": data})
        return None

    platform.before.append(misrouted)
    report = run(patient_sweeper(platform, clock))
    assert platform.state.steps["z1"]["status"] == "RUNNING"  # nothing applied to z1
    assert entry_of(report, "z1").outcome is not Outcome.MARKED


def test_lost_write_unconfirmed_when_the_read_side_omits_error_details(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A read side that serves only the contract's record table (no `errorDetails`): a
    write applied whose answer was lost, re-read as FAILED without a sweepId, is `failed`
    (or `marked`), never `skipped_finished`."""
    platform.add(record("z1"))
    platform.apply_then(lambda: httpx.Response(502), step_id="z1", times=1)

    def read_side_per_contract(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/z1"):
            fields = ("stepId", "organizationId", "status", "startedAt", "updatedAt")
            step = {k: v for k, v in platform.state.steps["z1"].items() if k in fields}
            return httpx.Response(200, json={"success": True, "data": step})
        return None

    platform.before.append(read_side_per_contract)
    report = run(patient_sweeper(platform, clock))
    assert "z1" in own_writes(platform, report)
    entry = entry_of(report, "z1")
    assert entry.outcome in (Outcome.FAILED, Outcome.MARKED), (entry.outcome, entry.reason)


@pytest.mark.parametrize("skew", [timedelta(hours=1), -timedelta(hours=1)], ids=["ahead", "behind"])
def test_a_settling_read_answered_with_a_skewed_date_still_settles(
    platform: FakePlatform, clock: FakeClock, skew: timedelta
) -> None:
    """Applied, answered 503; the settling re-read comes back with a Date 1 h off. The
    step's state is the platform's all the same: this sweep's write is marked (the report
    agrees with the platform), and the clock guard still stops the sweep."""
    platform.add(record("z1", started=5 * H), record("z2", started=5 * H))
    patched: list[int] = []

    def hook(request: httpx.Request) -> httpx.Response | None:
        platform.date_skew = skew if patched else timedelta(0)
        if request.method == "PATCH":
            step_id = request.url.path.rsplit("/", 1)[1]
            platform.state.patch_step(step_id, request.content)
            patched.append(1)
            return httpx.Response(503)
        return None

    platform.before.append(hook)
    report = asyncio.run(build_sweeper(platform, clock, max_attempts=1, max_concurrency=1).run())
    assert report.result is Result.REFUSED
    assert reported_marked(report) == own_writes(platform, report) == {"z1"}
