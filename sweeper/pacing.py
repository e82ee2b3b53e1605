"""When a request may go out: the rate limit (api.max_rate), the stop, and waits that a
stop ends early. No HTTP here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sweeper.errors import Interrupted, OutOfTime

Sleep = Callable[[float], Awaitable[None]]


def sleep_until_stopped(stop: asyncio.Event | None) -> Sleep:
    """A sleep that a stop request ends early (retry waits, the rate limiter's)."""

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            return

    return sleep


class RateLimiter:
    """At most `rate` requests per second, spaced evenly; 0 means no limit."""

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._monotonic = monotonic
        self._sleep = sleep
        self._next = 0.0

    async def acquire(self, slots: int = 1, give_up_at: float | None = None) -> None:
        """Wait for `slots` requests' worth of budget, then send them back to back.

        OutOfTime, reserving nothing, when the slot comes at or after `give_up_at`.
        """
        if not self._interval:
            return
        now = self._monotonic()
        slot = max(now, self._next)
        if give_up_at is not None and slot >= give_up_at:
            raise OutOfTime(f"the rate limit's next slot is {slot - now:.1f}s away")
        self._next = slot + self._interval * slots
        if slot > now:
            await self._sleep(slot - now)


@dataclass(frozen=True, slots=True)
class Pacing:
    """The rate limiter, the stop, and the sleep of every wait (a stop ends it early)."""

    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    stop: asyncio.Event | None = None
    sleep: Sleep | None = None

    async def wait(self, seconds: float) -> None:
        await (self.sleep or sleep_until_stopped(self.stop))(seconds)

    async def ready(
        self,
        where: str,
        slots: int,
        give_up_at: float | None = None,
        *,
        even_stopping: bool = False,
    ) -> None:
        """Return when the request `where` may go out, having taken `slots` rate-limit
        slots (0: a slot reserved before, by the re-read right before this write).

        Interrupted while stopping (unless `even_stopping`: a settling read goes out
        anyway); OutOfTime when the slot comes at or after `give_up_at`.
        """
        stop = None if even_stopping else self.stop
        if stop is not None and stop.is_set():
            raise Interrupted(f"{where}: not sent, stopping")
        if slots:
            await self.limiter.acquire(slots, give_up_at)
            if stop is not None and stop.is_set():
                raise Interrupted(f"{where}: not sent, stopping")
