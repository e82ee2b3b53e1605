"""api.max_rate bounds every request a sweep sends: listing, re-reads and writes, with or
without sweep.recheck, with retries, by hand and in precise marking."""

from __future__ import annotations

import asyncio
import itertools
import math
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sweeper.model import StepStatus
from sweeper.pacing import RateLimiter
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Rule, Rules, manual_rule
from sweeper.report import ExitCode, Outcome
from sweeper.sweep import Sweeper
from tests.builders import H, S, build_sweeper, patient_sweeper, precise, rules_with, run
from tests.fakes import FakeClock, FakePlatform, record

RATE = 2.0


class VirtualTime:
    """Sleeps on the fake clock that end in order: the clock moves only to the earliest
    moment someone waits for, so each sleeper wakes at its own moment, not later."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waiting: list[float] = []

    async def sleep(self, seconds: float) -> None:
        target = self.clock.monotonic() + seconds
        self.waiting.append(target)
        try:
            while self.clock.monotonic() < target:
                await asyncio.sleep(0)  # the others run, and sleep, first
                if target <= min(self.waiting):
                    # Whole microseconds, rounded up: the clock's own resolution.
                    ahead = math.ceil((target - self.clock.monotonic()) * 1e6)
                    self.clock.advance(timedelta(microseconds=max(ahead, 1)))
        finally:
            self.waiting.remove(target)


def rate_limited(
    platform: FakePlatform, clock: FakeClock, max_attempts: int = 3, **config: Any
) -> Sweeper:
    """A sweeper at api.max_rate = RATE whose waits (and naps) run on the fake clock."""
    sleep = VirtualTime(clock).sleep

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        await sleep(seconds)

    config.setdefault("rules", rules_with(2 * H, message="m"))
    config.setdefault("deadline", timedelta(days=1))
    config.setdefault("max_concurrency", 8)
    return build_sweeper(
        platform,
        clock,
        max_attempts=max_attempts,
        max_connections=16,
        sleep=sleep,
        limiter=RateLimiter(RATE, monotonic=clock.monotonic, sleep=sleep),
        nap=nap,
        host="h",
        version="1",
        **config,
    )


def sent_at(platform: FakePlatform, clock: FakeClock) -> list[tuple[str, float]]:
    """Where every request lands: (method, monotonic moment it reached the platform)."""
    seen: list[tuple[str, float]] = []

    def note(request: httpx.Request) -> None:
        seen.append((request.method, clock.monotonic()))

    platform.before.insert(0, note)
    return seen


def assert_paced(seen: list[tuple[str, float]]) -> None:
    """Between any two requests, no more went out than max_rate allows for the time between
    them, plus one: a re-read and the write it reserved a slot for go back to back."""
    assert seen
    for i, (_, first) in enumerate(seen):
        for j in range(i + 1, len(seen)):
            elapsed = seen[j][1] - first
            assert j - i <= RATE * (elapsed + 1e-3) + 1, (i, j, elapsed, seen[i : j + 1])


@pytest.mark.parametrize("recheck", [True, False])
@pytest.mark.parametrize("lost_answers", [False, True])
def test_every_request_of_a_sweep_is_paced(
    platform: FakePlatform, clock: FakeClock, recheck: bool, lost_answers: bool
) -> None:
    """20 zombies at max_rate 2: every request (listing, re-read, PATCH, retries) is spaced
    by 1/2 s, sweep.recheck on or off, answers lost after apply or not."""
    platform.add(*(record(f"z{n:02}", started=5 * H) for n in range(20)))
    seen = sent_at(platform, clock)
    if lost_answers:
        answered: set[str] = set()

        def lose_first_answer(request: httpx.Request) -> httpx.Response | None:
            step_id = request.url.path.rsplit("/", 1)[1]
            if request.method == "PATCH" and step_id not in answered:
                answered.add(step_id)
                return httpx.Response(503)  # sent before being applied: NOT_PROCESSED
            return None

        platform.before.append(lose_first_answer)
    report = asyncio.run(rate_limited(platform, clock, recheck=recheck).run())
    assert report.counts["marked"] == 20, report.counts
    assert sum(1 for method, _ in seen if method == "PATCH") == (40 if lost_answers else 20)
    assert_paced(seen)


@pytest.mark.parametrize("recheck", [True, False])
def test_settling_rereads_are_paced(
    platform: FakePlatform, clock: FakeClock, recheck: bool
) -> None:
    """max_attempts 1 and every write applied then answered 503: each step's settling
    re-read (after the last attempt) waits for its slot like any request; all 12 marked."""
    platform.add(*(record(f"z{n:02}", started=5 * H) for n in range(12)))
    seen = sent_at(platform, clock)

    def applied_then_503(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            platform.state.patch_step(request.url.path.rsplit("/", 1)[1], request.content)
            return httpx.Response(503)
        return None

    platform.before.append(applied_then_503)
    report = asyncio.run(rate_limited(platform, clock, max_attempts=1, recheck=recheck).run())
    assert report.counts["marked"] == 12, report.counts
    reads = sum(1 for method, _ in seen if method == "GET")
    assert reads == 1 + (24 if recheck else 12)  # the listing, (re-reads,) settling reads
    assert_paced(seen)


def test_a_write_whose_slot_comes_after_the_deadline_is_not_sent(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """recheck off, rate 2/s, deadline 3 s: the writes whose slot lies past the deadline
    are skipped (deadline), nothing sent after it."""
    platform.add(*(record(f"z{n:02}", started=5 * H) for n in range(20)))
    seen = sent_at(platform, clock)
    sweeper = rate_limited(platform, clock, recheck=False, deadline=3 * S, max_concurrency=1)
    report = asyncio.run(sweeper.run())
    assert_paced(seen)
    assert all(at - seen[0][1] < 3.0 for _, at in seen), seen
    reasons = {(e.outcome, e.reason) for e in report.entries}
    assert reasons == {(Outcome.MARKED, None), (Outcome.SKIPPED, "deadline")}, reasons


def test_marks_by_hand_are_paced(platform: FakePlatform, clock: FakeClock) -> None:
    """sweeper mark: its re-read and write share the rate, the write right after the read."""
    platform.add(record("z1", started=5 * H))
    seen = sent_at(platform, clock)
    sweeper = rate_limited(platform, clock)
    rule = manual_rule(StepStatus.FAILED, "MANUAL", None)
    for _ in range(3):
        asyncio.run(sweeper.mark("z1", "org-a", rule))
    assert [m for m, _ in seen] == ["GET", "PATCH"] + ["GET"] * 2
    assert_paced(seen)


def test_precise_timers_are_paced(platform: FakePlatform, clock: FakeClock) -> None:
    """Ten steps due at the same moment inside the interval: their re-reads and writes
    are paced like the listing's."""
    rules = Rules((), Rule("default", 3 * S * 60, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE))
    platform.add(*(record(f"w{n}", started=H, heartbeat=10 * S) for n in range(10)))
    seen = sent_at(platform, clock)
    sweeper = rate_limited(platform, clock, rules=rules)
    nap = sweeper.nap
    interval = precise(sweeper, clock)
    sweeper.nap = nap  # precise() naps by jumping the clock; these wake in order
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.counts["marked"] == 10, report.counts
    assert sum(1 for method, _ in seen if method == "PATCH") == 10
    assert_paced(seen)
    # The re-read holds its write's slot: each write follows its re-read at once, with
    # no second wait between them (a live worker's window to beat unseen).
    for (method, at), (then, then_at) in itertools.pairwise(seen):
        if then == "PATCH":
            assert (method, at) == ("GET", then_at), seen


def test_a_low_max_rate_ends_the_sweep_by_the_deadline(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A rate limit whose slots lie far apart (max_rate 0.01: 100 s a request) does not
    keep a sweep past its deadline: it ends by deadline + 10 s."""
    platform.add(record("z1"), record("z2"), record("z3"))
    limiter = RateLimiter(0.01, monotonic=clock.monotonic, sleep=clock.sleep)
    deadline = timedelta(seconds=60)
    started = clock.monotonic()
    run(patient_sweeper(platform, clock, deadline=deadline, limiter=limiter, max_concurrency=1))
    elapsed = clock.monotonic() - started
    assert elapsed <= deadline.total_seconds() + 10, elapsed


def test_a_rate_limit_slot_past_the_deadline_is_a_deadline_skip(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A zombie whose rate-limit slot lies at or past sweep.deadline is left for the next
    sweep (skipped, deadline): nothing was sent, so it is not `failed`; exit 0."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(3)))
    sweeper = build_sweeper(
        platform,
        clock,
        sleep=clock.sleep,
        limiter=RateLimiter(1.0, monotonic=clock.monotonic, sleep=clock.sleep),
        rules=rules_with(2 * H, message="m"),
        host="h",
        version="1",
        deadline=timedelta(seconds=3),
        max_concurrency=1,
    )
    report = asyncio.run(sweeper.run())
    assert report.counts["marked"] == 1
    assert report.counts["failed"] == 0, [(e.stepId, e.outcome, e.reason) for e in report.entries]
    assert report.exit_code is ExitCode.OK
