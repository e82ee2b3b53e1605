"""Wiring: turn validated settings into a ready client and sweeper (no work done here)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable

import httpx
import structlog

from sweeper.api import Clock, PlatformClient, build_http_client, utc_now
from sweeper.exchange import Observers, RequestObserver, RequestWatch, RetryObserver
from sweeper.gate import LeaseGate
from sweeper.guards import ClockCheck
from sweeper.outages import NO_OUTAGES, OutageWindows
from sweeper.pacing import Pacing, RateLimiter, sleep_until_stopped
from sweeper.refusals import TokenRefusals
from sweeper.retries import RetryPolicy
from sweeper.settings import Settings
from sweeper.sweep import SweepConfig, Sweeper

log = structlog.get_logger("sweeper.app")


def sweep_config(settings: Settings) -> SweepConfig:
    sweep = settings.sweep
    return SweepConfig(
        rules=sweep.build_rules(),
        page_size=sweep.page_size,
        max_steps=sweep.max_steps,
        recheck=sweep.recheck,
        deadline=sweep.deadline,
        organizations=frozenset(sweep.organizations),
        exclude_organizations=frozenset(sweep.exclude_organizations),
        dry_run=sweep.dry_run,
        max_concurrency=settings.api.max_concurrency,
        # errorDetails.sweptBy: leader.identity when [leader] is on, else the host.
        host=settings.leader.identity or socket.gethostname(),
        token_source=settings.token_source,
    )


def http_client(
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None = None,
    gate: LeaseGate | None = None,
) -> httpx.AsyncClient:
    api = settings.api
    verify: bool | ssl.SSLContext = True
    if api.ca_bundle is not None:
        verify = ssl.create_default_context(cafile=str(api.ca_bundle))
    return build_http_client(
        api.base_url,
        settings.token(),
        timeout=api.timeout,
        # Writes in flight, plus room for the listing and re-reads.
        max_connections=api.max_concurrency + 2,
        verify=verify,
        transport=transport,
        before_write=before_write(gate, debug=settings.log.level == "debug"),
    )


def before_write(gate: LeaseGate | None, *, debug: bool) -> Callable[[str, str], None] | None:
    """What runs just before a request's bytes are written, if anything.

    [leader]: the gate once more, at the last moment (the client checked it before
    waiting for a connection; a pause in between must not send on a lease gone).
    Debug: `request.sent`, stamped on this process's monotonic clock, the clock the
    lease is timed on (the leader tests order it against leader.lost with it).
    """
    if gate is None and not debug:
        return None

    def hook(method: str, path: str) -> None:
        if gate is not None:
            gate.check(method)
        if debug:
            at = time.monotonic()
            log.debug("request.sent", method=method, path=path, monotonic=round(at, 6))

    return hook


def build_sweeper(
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    stop: asyncio.Event,
    clock: Clock = utc_now,
    observer: RequestObserver | None = None,
    on_retry: RetryObserver | None = None,
    outages: Callable[[], OutageWindows] = lambda: NO_OUTAGES,
    gate: LeaseGate | None = None,
    watch: RequestWatch | None = None,
    refusals: TokenRefusals | None = None,
) -> Sweeper:
    """The client and the sweeper of one configuration. `refusals`: the tokens refused so
    far (the daemon keeps one across reloads; a one-shot run starts with none)."""
    api = settings.api
    clock_check = ClockCheck(settings.sweep.max_clock_skew, clock)
    refusals = refusals or TokenRefusals()
    client = PlatformClient(
        http,
        retry=retry_policy(settings),
        pacing=Pacing(RateLimiter(api.max_rate, sleep=sleep_until_stopped(stop)), stop),
        request_timeout=api.timeout,
        gate=gate,
        clock_check=clock_check,
        refusals=refusals,
        observers=Observers(observer, on_retry, watch),
        clock=clock,
    )
    return Sweeper(
        client,
        sweep_config(settings),
        clock=clock,
        stop=stop,
        outages=outages,
        clock_check=clock_check,
        refusals=refusals,
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    api = settings.api
    return RetryPolicy(
        max_attempts=api.max_attempts,
        max_retry_after=api.max_retry_after.total_seconds(),
        backoff_initial=api.retry_backoff.total_seconds(),
        backoff_max=api.retry_backoff_max.total_seconds(),
    )
