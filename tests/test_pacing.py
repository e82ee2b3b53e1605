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
