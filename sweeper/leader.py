"""Leader election: the lease's deadline on our own monotonic clock, and the elector loop.

The hazard this module is written against is a leader that stops for longer than
its lease (SIGSTOP, a VM pause, a long GC) and, when it runs again, writes as if
it still led. So the lease is timed here, on this process's monotonic clock,
from the moment the last successful renewal was SENT (the engine can only have
started its own count later), and every request to the platform asks `LeaseClock`
just before it goes out whether at least `api.timeout` + 1 s is left. Neither the
engine's nor the platform's wall clock is trusted for this.

The engines (etcd, a Kubernetes Lease) live in `leader_etcd` and `leader_k8s`;
each implements `Engine`, and `Elector` runs the same loop over any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from sweeper.errors import LeaseLost

log = structlog.get_logger("sweeper.leader")

Monotonic = Callable[[], float]


class LeaseClock:
    """The pure core: when this copy's lease ends, and whether a request may start.

    `renewed(sent_at, ttl)` records a renewal the engine accepted; `sent_at` is the
    monotonic time read just BEFORE that renewal was sent, however late its answer
    came. The lease then ends at `sent_at + ttl` at the latest.
    """

    def __init__(self, monotonic: Monotonic = time.monotonic) -> None:
        self.monotonic = monotonic
        self.expires_at: float | None = None

    @property
    def held(self) -> bool:
        return self.expires_at is not None

    def renewed(self, sent_at: float, ttl: float) -> None:
        if ttl <= 0:
            self.expires_at = None
            return
        self.expires_at = sent_at + ttl

    def drop(self) -> None:
        self.expires_at = None

    def remaining(self) -> float:
        """Seconds of lease left now (a fresh read of the clock); 0 when not held."""
        if self.expires_at is None:
            return 0.0
        return max(0.0, self.expires_at - self.monotonic())

    def may_start(self, need: float) -> bool:
        """Whether a request bounded by `need` seconds (api.timeout + 1 s) may start now."""
        if self.expires_at is None:
            return False
        # Read the clock here, at the check, never earlier: a stall before this
        # line is seen; what follows it up to the send is code that does not wait.
        return self.expires_at - self.monotonic() >= need


@dataclass
class Gate:
    """The `sweeper.gate.LeaseGate` handed to the platform client: one check per request."""

    lease: LeaseClock
    need: float
    #: Called with the request's method when one is refused (a metric).
    on_blocked: Callable[[str], None] = lambda _: None

    def holding(self) -> bool:
        return self.lease.may_start(self.need)

    def check(self, method: str) -> None:
        if not self.lease.may_start(self.need):
            self.on_blocked(method)
            left = self.lease.remaining()
            raise LeaseLost(
                "not sent: this copy does not hold the lease"
                if left <= 0
                else f"not sent: {left:.1f}s of lease left, less than api.timeout + 1s"
            )


# -- the engines -------------------------------------------------------------------


class EngineError(Exception):
    """The engine could not be reached or answered something unusable (no credential in it)."""


class Lost(Exception):
    """The engine says we no longer hold the lease: `reason` is expired or conflict."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class Engine(Protocol):
    """One coordination engine, seen from one copy. Each call is one exchange or a few.

    Every method that renews reads `monotonic()` just before sending and returns it
    with the time to live the engine granted, so the lease is timed from the send.
    """

    async def campaign(self, on_follow: Callable[[str | None], None]) -> tuple[float, float]:
        """Wait until this copy holds the lease; return (sent_at, ttl) of the renewal that
        confirmed it. Calls `on_follow(holder)` whenever it learns who holds it."""

    async def renew(self) -> tuple[float, float]:
        """Renew the lease held; (sent_at, ttl). Raises Lost or EngineError."""

    async def release(self) -> None:
        """Give the lease up at once (etcd: revoke; Kubernetes: clear the holder)."""

    async def holder(self) -> str | None:
        """Who holds the lease now, if anyone (for `run --once`'s message)."""

    async def close(self) -> None: ...


# -- the elector -------------------------------------------------------------------


@dataclass
class LeaderEvents:
    """What the daemon hears of the election (metrics, readiness, its sweeps)."""

    acquired: Callable[[], None] = lambda: None
    lost: Callable[[str], None] = lambda _: None
    renewal: Callable[[str], None] = lambda _: None
    following: Callable[[str | None], None] = lambda _: None


@dataclass
class Elector:
    """Campaign, hold, renew, lose, campaign again; release on stop."""

    engine: Engine
    identity: str
    lease_seconds: float
    renew_every: float
    lease: LeaseClock
    events: LeaderEvents = field(default_factory=LeaderEvents)
    leading: asyncio.Event = field(default_factory=asyncio.Event)
    holder_seen: str | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: The last renewal's failure while holding (None once one succeeds).
    _last_error: str | None = None
    #: Wait so many seconds or until `stop()` (tests pass one that moves a fake clock).
    nap: Callable[[float, asyncio.Event], Awaitable[None]] | None = None

    async def _nap(self, seconds: float) -> None:
        if self.nap is not None:
            await self.nap(max(seconds, 0.0), self._stop)
            return
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            return

    def _follow(self, holder: str | None) -> None:
        if holder == self.identity:
            return
        if holder != self.holder_seen:
            self.holder_seen = holder
            log.info("leader.following", holder=holder, identity=self.identity)
        self.events.following(holder)

    async def run(self) -> None:
        """Until `stop()`: campaign, then hold the lease while it can be renewed."""
        while not self._stop.is_set():
            try:
                sent_at, ttl = await self._campaigning()
            except Exception as exc:  # an engine error, or an answer no rule foresaw
                error = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
                log.warning("leader.error", error=error, identity=self.identity)
                await self._nap(self.renew_every)
                continue
            if sent_at is None:
                return  # stopped while campaigning
            self.lease.renewed(sent_at, min(ttl, self.lease_seconds))
            if not self.lease.held:
                continue
            self.holder_seen = self.identity
            self.leading.set()
            log.info(
                "leader.acquired",
                identity=self.identity,
                lease_seconds=self.lease_seconds,
                monotonic=round(self.lease.monotonic(), 6),
            )
            self.events.acquired()
            reason = await self._hold()
            if reason is None:
                return  # stopped: `release` says the rest
            self._lose(reason)

    async def _campaigning(self) -> tuple[float | None, float]:
        campaign = asyncio.ensure_future(self.engine.campaign(self._follow))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({campaign, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not campaign.done():
            campaign.cancel()
            await asyncio.gather(campaign, return_exceptions=True)
            return None, 0.0
        sent_at, ttl = campaign.result()
        return sent_at, ttl

    async def _hold(self) -> str | None:
        """Renew every renew_every; the reason the lease was lost, or None on stop."""
        next_renewal = self.lease.monotonic() + self.renew_every
        while True:
            # Wake at the next renewal, or when the lease runs out, whichever is first.
            left = self.lease.remaining()
            await self._nap(min(next_renewal - self.lease.monotonic(), left))
            if self._stop.is_set():
                return None
            if self.lease.remaining() <= 0:
                # Paused past the lease, or every renewal failed until it ran out.
                return "expired" if self._last_error is None else "unreachable"
            if self.lease.monotonic() < next_renewal:
                continue
            next_renewal = self.lease.monotonic() + self.renew_every
            try:
                async with asyncio.timeout(self.lease.remaining()):
                    sent_at, ttl = await self.engine.renew()
            except Lost as exc:
                self.events.renewal(exc.reason)
                return exc.reason
            except Exception as exc:  # unreachable, or an answer no rule foresaw: retry
                self._last_error = (
                    str(exc) if isinstance(exc, EngineError) else type(exc).__name__
                ) or "no answer before the lease ran out"
                self.events.renewal("error")
                log.warning("leader.error", error=self._last_error, identity=self.identity)
                continue
            self._last_error = None
            self.events.renewal("ok")
            self.lease.renewed(sent_at, min(ttl, self.lease_seconds))
            if not self.lease.held:
                return "expired"

    def _lose(self, reason: str) -> None:
        self.lease.drop()
        # The gate is shut from here on: `monotonic` says when, on the clock it uses.
        dropped_at = self.lease.monotonic()
        self.leading.clear()
        self._last_error = None
        log.warning(
            "leader.lost", reason=reason, identity=self.identity, monotonic=round(dropped_at, 6)
        )
        self.events.lost(reason)

    def stop(self) -> None:
        """No new renewal or campaign; the lease stays held until `release`."""
        self._stop.set()

    async def release(self) -> None:
        """After `stop()`, the run's end and the writes in flight: give the lease up so
        that another copy takes over within one renew_every."""
        self._stop.set()
        if not self.leading.is_set():
            # A candidate withdraws too (etcd: its queued key), so that a copy that is
            # gone is never elected; errors are no matter: its lease runs out anyway.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.renew_every):
                    await self.engine.release()
            return
        self.lease.drop()
        log.info(
            "leader.lost",
            reason="shutdown",
            identity=self.identity,
            monotonic=round(self.lease.monotonic(), 6),
        )
        self.leading.clear()
        self.events.lost("shutdown")
        try:
            # Bounded: an engine that does not answer must not hold the stop up; the
            # lease then runs out by itself.
            async with asyncio.timeout(self.renew_every):
                await self.engine.release()
        except Exception as exc:  # a stop never fails on the engine: the lease runs out
            error = str(exc) or f"{type(exc).__name__}: no answer within renew_every"
            log.warning("leader.error", error=error, identity=self.identity)
            return
        log.info("leader.released", identity=self.identity)
