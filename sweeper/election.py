"""Wiring of `[leader]`: the engine, the elector and the gate built from the settings,
and the one-shot run's way of taking the lease for one sweep."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from sweeper.leader import Elector, Engine, Gate, LeaderEvents, LeaseClock, Monotonic
from sweeper.leader_settings import LEASE_MARGIN
from sweeper.settings import Settings


@dataclass
class Leadership:
    """Everything `[leader]` adds to a process: run `elector.run()`, pass `gate` down."""

    elector: Elector
    gate: Gate
    engine: Engine

    async def close(self, task: asyncio.Task[None] | None) -> None:
        """Stop campaigning and renewing; release the lease if held; close the engine."""
        self.elector.stop()
        if task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        try:
            await self.elector.release()
        finally:
            await self.engine.close()


def build_engine(settings: Settings, monotonic: Monotonic = time.monotonic) -> Engine:
    leader = settings.leader
    assert leader.identity is not None, "load_settings resolves the identity"
    if leader.backend == "kubernetes":
        from sweeper.leader_k8s import KubernetesEngine

        return KubernetesEngine.from_settings(
            leader.kubernetes,
            name=leader.name,
            identity=leader.identity,
            lease_seconds=leader.lease.total_seconds(),
            renew_every=leader.renew_every.total_seconds(),
            monotonic=monotonic,
        )
    from sweeper.leader_etcd import EtcdEngine

    return EtcdEngine(
        leader.etcd,
        name=leader.name,
        identity=leader.identity,
        lease_seconds=leader.lease.total_seconds(),
        renew_every=leader.renew_every.total_seconds(),
        monotonic=monotonic,
    )


def build_leadership(
    settings: Settings,
    events: LeaderEvents | None = None,
    *,
    engine: Engine | None = None,
    monotonic: Monotonic = time.monotonic,
) -> Leadership:
    leader = settings.leader
    assert leader.identity is not None, "load_settings resolves the identity"
    lease = LeaseClock(monotonic)
    engine = engine or build_engine(settings, monotonic)
    elector = Elector(
        engine=engine,
        identity=leader.identity,
        lease_seconds=leader.lease.total_seconds(),
        renew_every=leader.renew_every.total_seconds(),
        lease=lease,
        events=events or LeaderEvents(),
    )
    need = (settings.api.timeout + LEASE_MARGIN).total_seconds()
    return Leadership(elector, Gate(lease, need), engine)


async def take_for_one_sweep(
    leadership: Leadership, wait: float, stop: asyncio.Event
) -> tuple[bool, str | None]:
    """`run --once`: campaign for at most `wait` seconds (or until a stop). (True, None)
    when this copy holds the lease; else (False, the holder as last seen)."""
    elected = asyncio.ensure_future(leadership.elector.leading.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({elected, stopping}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if elected.done() and not stop.is_set():
        return True, None
    elected.cancel()
    holder = leadership.elector.holder_seen
    if holder is None:
        with contextlib.suppress(Exception):
            holder = await leadership.engine.holder()
    return False, holder
