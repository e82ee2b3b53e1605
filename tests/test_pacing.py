"""Pacing: whether and when a request may go out (stop, rate-limit slots, deadline)."""

from __future__ import annotations

import asyncio

import pytest

from sweeper.errors import Interrupted, OutOfTime
from sweeper.pacing import Pacing, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_reserved_slot_takes_nothing_from_the_limiter() -> None:
    """0 slots (the re-read before reserved the write's): no wait, and no OutOfTime even
    with the next slot past the deadline."""
    clock = Clock()
    limiter = RateLimiter(1.0, monotonic=clock, sleep=clock.sleep)
    pacing = Pacing(limiter)
    asyncio.run(pacing.ready("GET /s", 2))  # a re-read reserving its write's slot
    asyncio.run(pacing.ready("PATCH /s", 0, give_up_at=clock.now + 0.5))
    assert clock.slept == []
    with pytest.raises(OutOfTime):
        asyncio.run(pacing.ready("GET /t", 1, give_up_at=clock.now + 0.5))


@pytest.mark.parametrize("slots", [0, 1])
def test_nothing_goes_out_while_stopping_but_a_settling_read(slots: int) -> None:
    """A stop refuses a request before any wait; a settling read still goes out."""
    stop = asyncio.Event()
    stop.set()
    pacing = Pacing(RateLimiter(0), stop)
    with pytest.raises(Interrupted, match="GET /s: not sent, stopping"):
        asyncio.run(pacing.ready("GET /s", slots))
    asyncio.run(pacing.ready("GET /s", slots, even_stopping=True))


def test_a_stop_during_the_rate_limit_wait_sends_nothing() -> None:
    """A stop that comes while waiting for the slot: the request is not sent."""
    stop = asyncio.Event()

    async def sleep(seconds: float) -> None:
        stop.set()

    limiter = RateLimiter(1.0, monotonic=lambda: 0.0, sleep=sleep)
    pacing = Pacing(limiter, stop, sleep)
    asyncio.run(pacing.ready("GET /a", 1))
    with pytest.raises(Interrupted):
        asyncio.run(pacing.ready("GET /b", 1))


def test_waits_end_early_on_a_stop() -> None:
    """A retry wait without a sleep of its own ends when the stop is set."""
    stop = asyncio.Event()
    pacing = Pacing(stop=stop)

    async def go() -> None:
        asyncio.get_running_loop().call_soon(stop.set)
        await asyncio.wait_for(pacing.wait(3600), timeout=30)

    asyncio.run(go())


def test_a_stop_during_the_rate_limit_wait_names_the_request() -> None:
    """The refusal after the slot's wait says which request was not sent."""
    stop = asyncio.Event()

    async def sleep(seconds: float) -> None:
        stop.set()

    pacing = Pacing(RateLimiter(1.0, monotonic=lambda: 0.0, sleep=sleep), stop, sleep)
    asyncio.run(pacing.ready("GET /a", 1))
    with pytest.raises(Interrupted, match=r"^GET /b: not sent, stopping$"):
        asyncio.run(pacing.ready("GET /b", 1))


def test_out_of_time_says_how_far_away_the_slot_is() -> None:
    """The deadline refusal gives the distance to the slot, not a clock reading."""
    clock = Clock()
    clock.now = 100.0
    limiter = RateLimiter(0.5, monotonic=clock, sleep=clock.sleep)
    asyncio.run(limiter.acquire())
    with pytest.raises(OutOfTime, match=r"next slot is 2\.0s away"):
        asyncio.run(limiter.acquire(give_up_at=101.0))


def test_no_limit_never_waits() -> None:
    """rate 0: any number of requests at the same instant, no wait."""
    clock = Clock()
    limiter = RateLimiter(0, monotonic=clock, sleep=clock.sleep)
    for _ in range(5):
        asyncio.run(limiter.acquire(3, give_up_at=clock.now))
    assert clock.slept == []


def test_a_wait_without_a_stop_sleeps_what_it_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stop event: the wait is a plain sleep of the asked length."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("sweeper.pacing.asyncio.sleep", sleep)
    asyncio.run(Pacing().wait(2.5))
    assert slept == [2.5]


def test_a_wait_with_an_unset_stop_ends_when_its_time_is_up() -> None:
    """A stop that never comes: the wait still ends (here a wait of 0 ends at once)."""
    pacing = Pacing(stop=asyncio.Event())

    async def go() -> None:
        await asyncio.wait_for(pacing.wait(0.0), timeout=30)

    asyncio.run(go())
