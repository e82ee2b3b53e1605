"""The lease's deadline on an injected monotonic clock, the gate, and the elector's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from sweeper.errors import LeaseLost
from sweeper.leader import Elector, EngineError, Gate, LeaderEvents, LeaseClock, Lost


class Mono:
    """A monotonic clock that moves only when told, or by `stall` on each read."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start
        self.stall = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.t += self.stall
        return self.t


# -- the deadline arithmetic ---------------------------------------------------------


def test_lease_is_timed_from_the_renewal_sent_not_its_answer() -> None:
    """Sent at 100, answered at 103: a 4 s lease ends at 104, not 107."""
    mono = Mono()
    lease = LeaseClock(mono)
    sent_at = mono()
    mono.t += 3.0  # the answer took three seconds to come back
    lease.renewed(sent_at, 4.0)
    assert lease.expires_at == 104.0
    assert lease.remaining() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("elapsed", "need", "may"),
    [
        (0.0, 2.0, True),
        (1.99, 2.0, True),
        (2.0, 2.0, True),  # exactly api.timeout + 1 s left: may start
        (2.01, 2.0, False),
        (3.5, 0.4, True),
        (4.0, 0.0, True),
        (4.01, 0.0, False),
        (10.0, 2.0, False),  # paused past the lease
    ],
)
def test_a_request_starts_only_with_enough_lease_left(
    elapsed: float, need: float, may: bool
) -> None:
    """may_start(need) is `expires_at - now >= need` on a fresh read of the clock."""
    mono = Mono()
    lease = LeaseClock(mono)
    lease.renewed(mono(), 4.0)
    mono.t += elapsed
    assert lease.may_start(need) is may


def test_the_check_reads_the_clock_itself_so_a_stall_before_it_is_seen() -> None:
    """A clock read that stalls (here: 3 s pass inside the read) refuses the request."""
    mono = Mono()
    lease = LeaseClock(mono)
    lease.renewed(mono(), 4.0)
    assert lease.may_start(2.0)
    mono.stall = 3.0  # the process stops between deciding to write and the check
    assert not lease.may_start(2.0)


def test_no_lease_means_no_request() -> None:
    """Never held, dropped, or granted no time to live: nothing may start."""
    mono = Mono()
    lease = LeaseClock(mono)
    assert not lease.held and not lease.may_start(0.0) and lease.remaining() == 0.0
    lease.renewed(mono(), 4.0)
    lease.drop()
    assert not lease.may_start(0.0)
    lease.renewed(mono(), 0.0)
    assert not lease.held


def test_gate_refuses_and_counts_by_method() -> None:
    """The gate raises LeaseLost (not sent) and counts the refusal with its method."""
    mono = Mono()
    lease = LeaseClock(mono)
    blocked: list[str] = []
    gate = Gate(lease, need=2.0, on_blocked=blocked.append)
    with pytest.raises(LeaseLost, match="does not hold the lease"):
        gate.check("GET")
    lease.renewed(mono(), 4.0)
    assert gate.holding()
    gate.check("PATCH")  # 4 s left: passes
    mono.t += 2.5
    assert not gate.holding()
    with pytest.raises(LeaseLost, match=r"1\.5s of lease left"):
        gate.check("PATCH")
    assert blocked == ["GET", "PATCH"]


# -- the elector's loop ---------------------------------------------------------------


@dataclass
class FakeEngine:
    """An engine whose answers the test scripts; it reads the same fake clock."""

    mono: Mono
    ttl: float = 4.0
    campaigns: int = 0
    renewals: list[Any] = field(default_factory=list)  # what each renew() does, in order
    campaign_errors: int = 0
    holder_name: str | None = "other"
    released: int = 0
    release_error: bool = False
    followed: list[str | None] = field(default_factory=list)

    async def campaign(self, on_follow: Callable[[str | None], None]) -> tuple[float, float]:
        self.campaigns += 1
        if self.campaign_errors:
            self.campaign_errors -= 1
            raise EngineError("etcd 127.0.0.1:1: ConnectError")
        on_follow(self.holder_name)
        return self.mono(), self.ttl

    async def renew(self) -> tuple[float, float]:
        action = self.renewals.pop(0) if self.renewals else "ok"
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, float):
            sent = self.mono()
            self.mono.t += action  # the answer comes this late
            return sent, self.ttl
        return self.mono(), self.ttl

    async def release(self) -> None:
        self.released += 1
        if self.release_error:
            raise EngineError("etcd: gone")

    async def holder(self) -> str | None:
        return self.holder_name

    async def close(self) -> None:
        return None


@dataclass
class Run:
    elector: Elector
    engine: FakeEngine
    mono: Mono
    seen: list[str] = field(default_factory=list)


def make_elector(engine_setup: Callable[[FakeEngine], None] = lambda e: None) -> Run:
    mono = Mono()
    engine = FakeEngine(mono)
    engine_setup(engine)
    seen: list[str] = []

    async def nap(seconds: float, stop: asyncio.Event) -> None:
        mono.t += seconds
        await asyncio.sleep(0)

    elector = Elector(
        engine=engine,
        identity="me",
        lease_seconds=4.0,
        renew_every=1.0,
        lease=LeaseClock(mono),
        events=LeaderEvents(
            acquired=lambda: seen.append("acquired"),
            lost=lambda reason: seen.append(f"lost:{reason}"),
            renewal=lambda result: seen.append(f"renewal:{result}"),
            following=lambda holder: seen.append(f"following:{holder}"),
        ),
        nap=nap,
    )
    return Run(elector, engine, mono, seen)


async def run_until(run: Run, condition: Callable[[], bool], limit: int = 10_000) -> None:
    task = asyncio.ensure_future(run.elector.run())
    for _ in range(limit):
        if condition():
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError(f"condition not met; events: {run.seen}")
    run.elector.stop()
    await asyncio.wait_for(task, timeout=5)


def test_acquires_renews_and_releases_on_stop(logs: list[dict[str, Any]]) -> None:
    """Campaign, hold with renewals, then stop and release: acquired, renewals, released."""
    run = make_elector()

    async def scenario() -> None:
        await run_until(run, lambda: run.seen.count("renewal:ok") >= 3)
        assert run.elector.leading.is_set()
        await run.elector.release()

    asyncio.run(scenario())
    assert run.seen[:3] == ["following:other", "acquired", "renewal:ok"]
    assert run.seen[-1] == "lost:shutdown"
    assert run.engine.released == 1
    names = [e["event"] for e in logs]
    assert names[0] == "leader.following"
    assert names[-2:] == ["leader.lost", "leader.released"]
    assert [e["reason"] for e in logs if e["event"] == "leader.lost"] == ["shutdown"]


def test_a_conflicting_renewal_loses_at_once_and_campaigns_again(
    logs: list[dict[str, Any]],
) -> None:
    """Lost(conflict) from the engine: leader.lost reason=conflict, then a new campaign."""
    run = make_elector(lambda e: e.renewals.append(Lost("conflict", "another key leads")))

    async def scenario() -> None:
        await run_until(run, lambda: run.engine.campaigns >= 2 and run.seen[-1] == "acquired")

    asyncio.run(scenario())
    assert run.seen[:4] == ["following:other", "acquired", "renewal:conflict", "lost:conflict"]
    assert [e["reason"] for e in logs if e["event"] == "leader.lost"] == ["conflict"]


def test_renewals_failing_until_the_lease_runs_out_is_unreachable(
    logs: list[dict[str, Any]],
) -> None:
    """Every renewal fails: the lease is lost when it runs out, reason unreachable."""
    run = make_elector(lambda e: e.renewals.extend([EngineError("etcd: refused")] * 10))
    lost_at: list[float] = []

    async def scenario() -> None:
        task = asyncio.ensure_future(run.elector.run())
        for _ in range(10_000):
            if "lost:unreachable" in run.seen:
                lost_at.append(run.mono.t)
                break
            await asyncio.sleep(0)
        run.elector.stop()
        await task

    asyncio.run(scenario())
    assert "lost:unreachable" in run.seen
    # Acquired at 100 with a 4 s lease: lost at 104, not later.
    assert lost_at == [pytest.approx(104.0)]
    errors = [e for e in logs if e["event"] == "leader.error"]
    assert errors and all("etcd: refused" in e["error"] for e in errors)


def test_a_paused_holder_finds_its_lease_expired_before_renewing() -> None:
    """The process stops for twice the lease: on waking it is lost (expired), renews nothing."""
    run = make_elector()
    renewed_after_pause: list[int] = []

    async def nap(seconds: float, stop: asyncio.Event) -> None:
        run.mono.t += 8.0 if run.seen.count("acquired") == 1 and not renewed_after_pause else 0
        renewed_after_pause.append(1)
        await asyncio.sleep(0)

    run.elector.nap = nap

    async def scenario() -> None:
        await run_until(run, lambda: "lost:expired" in run.seen)

    asyncio.run(scenario())
    assert run.seen[:3] == ["following:other", "acquired", "lost:expired"]


def test_a_late_renewal_answer_does_not_stretch_the_lease() -> None:
    """A renewal answered 3 s after it was sent: the lease ends 4 s after the send."""
    run = make_elector(lambda e: e.renewals.append(3.0))
    expiries: list[float | None] = []

    async def scenario() -> None:
        await run_until(run, lambda: run.seen.count("renewal:ok") >= 1)
        expiries.append(run.elector.lease.expires_at)

    asyncio.run(scenario())
    # Acquired at 100; renewed (sent) at 101, answered at 104: ends at 105.
    assert expiries == [pytest.approx(105.0)]


def test_campaign_errors_are_logged_and_retried(logs: list[dict[str, Any]]) -> None:
    """An engine that cannot be reached: leader.error, then the campaign again."""
    run = make_elector(lambda e: setattr(e, "campaign_errors", 2))

    async def scenario() -> None:
        await run_until(run, lambda: "acquired" in run.seen)

    asyncio.run(scenario())
    assert run.engine.campaigns == 3
    assert len([e for e in logs if e["event"] == "leader.error"]) == 2


def test_release_failure_is_logged_not_raised(logs: list[dict[str, Any]]) -> None:
    """A release the engine refuses: leader.error, no leader.released; nothing raised."""
    run = make_elector(lambda e: setattr(e, "release_error", True))

    async def scenario() -> None:
        await run_until(run, lambda: "acquired" in run.seen)
        await run.elector.release()

    asyncio.run(scenario())
    names = [e["event"] for e in logs]
    assert "leader.released" not in names and names[-1] == "leader.error"


def test_a_follower_that_stops_withdraws_quietly(logs: list[dict[str, Any]]) -> None:
    """A candidate that stops withdraws (etcd: its queued key) and says nothing of a lease
    it never held; an engine error then is no matter (its lease runs out anyway)."""
    run = make_elector(lambda e: setattr(e, "release_error", True))

    async def scenario() -> None:
        await run.elector.release()

    asyncio.run(scenario())
    assert run.engine.released == 1
    assert not [e for e in logs if str(e["event"]).startswith("leader.")]


def test_stop_while_campaigning_ends_the_run() -> None:
    """A stop during a campaign that never ends: the run ends, nothing acquired."""
    run = make_elector()
    started = asyncio.Event()

    async def forever(on_follow: Callable[[str | None], None]) -> tuple[float, float]:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    run.engine.campaign = forever  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.ensure_future(run.elector.run())
        await started.wait()
        run.elector.stop()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert "acquired" not in run.seen


def test_a_follower_is_ready_however_long_it_has_not_swept() -> None:
    """/readyz: a follower sweeps nothing by design and stays ready; the copy that takes
    the lease counts its readiness window from then, not from its last sweep as leader."""
    from datetime import UTC, datetime, timedelta

    from sweeper.ops import Health

    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    following = [True]
    last_success = now[0] + timedelta(minutes=1)  # it led once, early on
    health = Health(
        lambda: True,
        lambda: last_success,
        timedelta(minutes=15),
        clock=lambda: now[0],
        following=lambda: following[0],
    )
    now[0] += timedelta(hours=5)
    assert health.ready()
    following[0] = False
    assert not health.ready()  # leading, and the last success is old
    health.started_at = now[0]  # what the daemon does when it takes the lease
    assert health.ready()
    now[0] += timedelta(minutes=16)
    assert not health.ready()
