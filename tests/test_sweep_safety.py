"""The sweep's safety rules over MockTransport: identity, latches, deadlines, pacing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sweeper.api import STEPS_PATH, PlatformClient
from sweeper.errors import TokenRefused
from sweeper.pacing import RateLimiter
from sweeper.refusals import TOKEN_RETRY_SECONDS
from sweeper.report import ExitCode, Outcome, Result
from tests.builders import H, build_sweeper, patient_sweeper, run, sweep
from tests.fakes import NOW, FakeClock, FakePlatform, record, refusal

M = timedelta(minutes=1)


def test_the_same_step_id_in_two_organizations_is_two_steps(clock: FakeClock) -> None:
    """org-a's live 's' never hides org-b's zombie 's'; each is re-read in its own org."""
    steps = {
        ("org-a", "s"): record("s", org="org-a", heartbeat=M),
        ("org-b", "s"): record("s", org="org-b"),
    }
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == STEPS_PATH:
            return httpx.Response(
                200, json={"success": True, "data": list(steps.values()), "nextCursor": None}
            )
        org = request.url.params.get("organizationId")
        seen.append((request.method, org))
        if request.method == "GET":
            return httpx.Response(200, json={"success": True, "data": steps[(str(org), "s")]})
        body = httpx.Request("PATCH", "/", content=request.content).read()

        sent = json.loads(body)
        steps[(sent["organizationId"], "s")].update(status=sent["status"])
        return httpx.Response(
            200, json={"success": True, "data": steps[(sent["organizationId"], "s")]}
        )

    report = asyncio.run(build_sweeper(handler, clock).run())
    assert report.counts["marked"] == 1
    assert report.counts["not_stale"] == 1
    assert steps[("org-b", "s")]["status"] == "FAILED"
    assert steps[("org-a", "s")]["status"] == "RUNNING"
    assert seen == [("GET", "org-b"), ("PATCH", None)]


def test_with_recheck_off_a_listed_step_that_is_not_running_is_never_marked(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A platform that ignores the status filter: SUCCEEDED records are left alone."""
    listed = [record("done", status="SUCCEEDED"), record("z")]
    platform.before.append(
        lambda r: (
            httpx.Response(200, json={"success": True, "data": listed, "nextCursor": None})
            if r.url.path == STEPS_PATH
            else None
        )
    )
    platform.add(record("z"))
    report = sweep(platform, clock, recheck=False)
    assert report.counts["not_running"] == 1
    assert [r.url.path.rsplit("/", 1)[1] for r in platform.patches] == ["z"]


def test_writes_in_flight_that_meet_the_token_latch_are_not_attempted(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Only the write answered 401 failed; the ones the latch held back were never sent."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(6)))
    platform.before.append(lambda r: refusal() if r.method == "PATCH" else None)
    report = sweep(platform, clock, max_concurrency=3)
    assert len(platform.patches) == 1
    assert report.counts["failed"] == 1
    assert report.counts["not_attempted"] == 5
    reasons = {e.reason for e in report.entries if e.outcome is Outcome.NOT_ATTEMPTED}
    assert reasons == {"token_refused"}


def test_a_refused_token_is_not_sent_again_until_it_changes_or_an_hour_passes(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Next sweeps send nothing with a refused token; an hour lifts the latch (a new token
    comes with a new client: tests/test_reload.py)."""
    platform.add(record("z"))
    platform.token = "another"
    sweeper = build_sweeper(platform, clock)
    assert asyncio.run(sweeper.run()).result is Result.TOKEN_REFUSED
    assert len(platform.requests) == 1
    clock.advance(timedelta(seconds=TOKEN_RETRY_SECONDS - 1))
    again = asyncio.run(sweeper.run())
    assert again.result is Result.TOKEN_REFUSED
    assert again.exit_code is ExitCode.TOKEN_REFUSED
    assert len(platform.requests) == 1  # nothing sent
    clock.advance(timedelta(seconds=1))
    asyncio.run(sweeper.run())
    assert len(platform.requests) == 2  # an hour on: tried once more


def test_the_latch_is_the_clients_not_one_calls() -> None:
    """After a 401 every call raises TokenRefused with attempts=0: not sent."""
    client = PlatformClient(
        httpx.AsyncClient(
            base_url="https://p.test", transport=httpx.MockTransport(lambda r: refusal())
        )
    )

    async def twice() -> list[int]:
        attempts = []
        for _ in range(2):
            try:
                await client.get_step("s", "o")
            except TokenRefused as exc:
                attempts.append(exc.attempts)
        return attempts

    assert asyncio.run(twice()) == [1, 0]


def test_a_listing_that_never_ends_stops_at_the_deadline(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Fresh cursors forever: the deadline ends the listing; nothing is written; exit 75."""
    pages = {"n": 0}

    def endless(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != STEPS_PATH:
            return None
        pages["n"] += 1
        clock.advance(timedelta(seconds=20))
        data = [record(f"z{pages['n']}")]
        return httpx.Response(
            200, json={"success": True, "data": data, "nextCursor": f"c{pages['n']}"}
        )

    platform.before.append(endless)
    report = sweep(platform, clock, deadline=timedelta(minutes=4))
    assert report.result is Result.UNAVAILABLE
    assert report.exit_code is ExitCode.UNAVAILABLE
    assert "deadline" in (report.error or "")
    assert pages["n"] == 12
    assert platform.patches == []
    assert all(e.outcome is Outcome.NOT_ATTEMPTED for e in report.entries)


def test_nothing_waits_between_a_reread_and_its_write(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The rate limiter's wait comes before the re-read: re-read and PATCH go back to back."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(5)))
    timeline: list[str] = []

    async def paced_sleep(seconds: float) -> None:
        timeline.append("wait")
        clock.advance(timedelta(seconds=seconds))

    def note(request: httpx.Request) -> None:
        timeline.append(request.method)

    platform.before.append(note)
    limiter = RateLimiter(20, clock.monotonic, paced_sleep)
    sweeper = build_sweeper(platform, clock, max_concurrency=1, limiter=limiter)
    report = asyncio.run(sweeper.run())
    assert report.counts["marked"] == 5
    writes = "".join("P" if t == "PATCH" else "G" if t == "GET" else "w" for t in timeline)
    assert "GP" in writes
    assert "GwP" not in writes
    assert writes.count("GP") == 5


def test_a_stop_while_waiting_to_retry_sends_no_more(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """SIGTERM during a Retry-After wait: the write is not tried again."""
    platform.add(record("z"))
    stop = asyncio.Event()

    def busy(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            stop.set()
            return httpx.Response(503, headers={"Retry-After": "1"})
        return None

    platform.before.append(busy)
    report = asyncio.run(build_sweeper(platform, clock, stop=stop, max_attempts=5).run())
    assert len(platform.patches) == 1
    assert report.result is Result.INTERRUPTED
    (entry,) = report.entries
    assert entry.outcome is Outcome.FAILED


def test_a_retry_that_would_cross_the_deadline_is_not_waited_for(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Retry-After past the deadline: the write fails now rather than late."""
    platform.add(record("z"))
    platform.before.append(
        lambda r: (
            httpx.Response(503, headers={"Retry-After": "300"}) if r.method == "PATCH" else None
        )
    )
    report = sweep(platform, clock, deadline=timedelta(minutes=4), max_attempts=5)
    assert len(platform.patches) == 1
    assert report.counts["failed"] == 1
    assert clock.now == NOW


def test_report_counts_add_up_whatever_ends_the_sweep(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """An unexpected error mid-writes: crashed, the rest not attempted, the counts add up."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(4)))
    calls = {"n": 0}

    def explode(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("boom")
        return None

    platform.before.append(explode)
    report = sweep(platform, clock, max_concurrency=1)
    assert report.result is Result.CRASHED
    assert report.exit_code is ExitCode.CRASHED
    assert report.counts["marked"] == 1
    assert report.counts["failed"] == 1  # sent; no answer says whether it was applied
    assert report.counts["not_attempted"] == 2
    assert [e["result"] for e in logs if e["event"] == "sweep.aborted"] == ["crashed"]


def test_shutdown_and_deadline_skips_are_quiet(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Hundreds of zombies left at a stop are logged one by one only at debug; counted at info."""
    platform.add(*(record(f"z{n:03d}", started=5 * H) for n in range(50)))
    stop = asyncio.Event()

    def stop_at_first_write(request: httpx.Request) -> None:
        if request.method == "PATCH":
            stop.set()

    platform.before.append(stop_at_first_write)
    report = asyncio.run(build_sweeper(platform, clock, stop=stop, max_concurrency=1).run())
    skipped = [e for e in logs if e["event"] == "step.skipped"]
    assert len(skipped) == report.counts["skipped_shutdown"] == 49
    assert {e["log_level"] for e in skipped} == {"debug"}
    (finished,) = [e for e in logs if e["event"] == "sweep.finished"]
    assert (finished["log_level"], finished["skipped_shutdown"]) == ("info", 49)


def skewed_patch_answer(
    platform: FakePlatform, clock: FakeClock, step_id: str, body: dict[str, Any]
) -> Callable[[httpx.Request], Any]:
    """The PATCH of `step_id` is answered 200 with `body` and a Date an hour ahead."""

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and request.url.path.endswith("/" + step_id):
            answer = httpx.Response(200, json=body)
            platform.date_skew = timedelta(hours=1)  # FakePlatform stamps Date from this
            return answer
        platform.date_skew = timedelta(0)
        return None

    return hook


@pytest.mark.parametrize(
    "body",
    [
        {"success": False},  # 2xx without success: true
        {"success": True, "data": {"stepId": "z1", "status": "RUNNING"}},  # data.status wrong
    ],
    ids=["success-false", "wrong-data-status"],
)
def test_clock_skew_on_a_2xx_write_answer_that_is_not_a_success_still_refuses(
    platform: FakePlatform, clock: FakeClock, body: dict[str, Any]
) -> None:
    """sweep.max_clock_skew is checked on every answer, a 2xx write answer that is not a
    success included: beyond it nothing more is written (the next zombie is not), the sweep
    ends refused, exit 3."""
    platform.add(record("z1"), record("z2"))
    platform.before.append(skewed_patch_answer(platform, clock, "z1", body))
    report = run(patient_sweeper(platform, clock, max_concurrency=1))
    written = [r.url.path.rsplit("/", 1)[1] for r in platform.patches]
    assert written == ["z1"], written
    assert report.result is Result.REFUSED and report.exit_code is ExitCode.GUARD_REFUSED


def test_a_401_with_an_unreadable_date_stops_the_token(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A write answered 401 stops the sweep at once even when its Date header is not an
    HTTP date: nothing more is sent with the token, result token_refused, exit 77."""
    platform.add(record("z1"), record("z2"))

    def refuse(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            return httpx.Response(401, json={"success": False})
        return None

    platform.before.append(refuse)
    original = platform.handle

    def handle(request: httpx.Request) -> httpx.Response:
        response = original(request)
        if request.method == "PATCH":
            response.headers["Date"] = "yesterday-ish"
        return response

    report = run(patient_sweeper(handle, clock, max_concurrency=1))
    sent_after_401 = platform.requests[platform.requests.index(platform.patches[0]) + 1 :]
    assert sent_after_401 == [], [f"{r.method} {r.url.path}" for r in sent_after_401]
    assert report.result is Result.TOKEN_REFUSED
    assert report.exit_code is ExitCode.TOKEN_REFUSED


def test_reread_retries_end_by_the_deadline(platform: FakePlatform, clock: FakeClock) -> None:
    """A re-read answered 503 Retry-After: 60 again and again stops retrying at
    sweep.deadline: the sweep ends by deadline + 10 s, whatever max_attempts allows."""
    platform.add(record("z1"))

    def busy(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/z1"):
            return httpx.Response(503, headers={"Retry-After": "60"})
        return None

    platform.before.append(busy)
    deadline = timedelta(seconds=30)
    started = clock.monotonic()
    report = run(patient_sweeper(platform, clock, deadline=deadline))
    elapsed = clock.monotonic() - started
    assert elapsed <= deadline.total_seconds() + 10, (elapsed, report.counts)
