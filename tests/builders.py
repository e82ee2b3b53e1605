"""The one builder of a platform client and a sweeper for unit tests, and what drives them.

Every unit test that sweeps builds its sweeper here, on the real `PlatformClient`
over `httpx.MockTransport` (a `FakePlatform` or a bare handler), with the fake
clock as both wall and monotonic clock. Defaults: two attempts, sleeps that neither
wait nor move the clock (pass `sleep=clock.sleep` to let waits move it).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from sweeper.api import Clock, PlatformClient, build_http_client, utc_now
from sweeper.exchange import Observers, RequestObserver, RequestWatch, RetryObserver
from sweeper.gate import LeaseGate
from sweeper.guards import ClockCheck
from sweeper.model import StepStatus
from sweeper.outages import OutageWindows
from sweeper.pacing import Pacing, RateLimiter, Sleep
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Rule, Rules
from sweeper.precise import Interval, Nap
from sweeper.refusals import TokenRefusals
from sweeper.report import StepEntry, SweepReport
from sweeper.retries import RetryPolicy
from sweeper.sweep import SweepConfig, Sweeper
from sweeper.timers import TimerHeap
from tests.fakes import TOKEN, FakeClock, FakePlatform, no_sleep

H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
DEFAULT_RULE = Rule(
    "default", 2 * H, StepStatus.FAILED, "ZOMBIE_STEP_TIMEOUT", DEFAULT_ERROR_MESSAGE
)
CANCELLED_RULE = Rule(
    "cancelled-runs",
    timedelta(minutes=30),
    StepStatus.CANCELLED,
    "RUN_CANCELLED",
    "cancelled {idle}",
    {"workflowRunStatus": ("CANCELLED",)},
)
RULES = Rules((CANCELLED_RULE,), DEFAULT_RULE)
#: The HTTP client under each client built here, so that `run` can close it.
_HTTP: weakref.WeakKeyDictionary[PlatformClient, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def rules_with(limit: timedelta, code: str = "Z", message: str = DEFAULT_ERROR_MESSAGE) -> Rules:
    """Rules of one default rule: FAILED with `code` after `limit` of silence."""
    return Rules((), Rule("default", limit, StepStatus.FAILED, code, message))


def client_of(
    http: httpx.AsyncClient,
    *,
    max_attempts: int = 5,
    max_retry_after: timedelta = timedelta(seconds=60),
    backoff_initial: float = 0.5,
    backoff_max: float = 30.0,
    request_timeout: timedelta | None = None,
    limiter: RateLimiter | None = None,
    stop: asyncio.Event | None = None,
    sleep: Sleep | None = None,
    gate: LeaseGate | None = None,
    clock_check: ClockCheck | None = None,
    refusals: TokenRefusals | None = None,
    observer: RequestObserver | None = None,
    on_retry: RetryObserver | None = None,
    watch: RequestWatch | None = None,
    clock: Clock = utc_now,
    monotonic: Callable[[], float] = time.monotonic,
) -> PlatformClient:
    """The real PlatformClient over `http`, from one flat list of settings (each group of
    the client's: retry policy, pacing, observers, built here)."""
    return PlatformClient(
        http,
        retry=RetryPolicy(
            max_attempts, max_retry_after.total_seconds(), backoff_initial, backoff_max
        ),
        pacing=Pacing(limiter or RateLimiter(0), stop, sleep),
        request_timeout=request_timeout,
        gate=gate,
        clock_check=clock_check,
        refusals=refusals or TokenRefusals(monotonic),
        observers=Observers(observer, on_retry, watch),
        clock=clock,
        monotonic=monotonic,
    )


def build_client(
    platform: FakePlatform | Callable[[httpx.Request], Any],
    clock: FakeClock,
    *,
    sleep: Sleep = no_sleep,
    max_attempts: int = 2,
    max_connections: int = 8,
    timeout: timedelta = timedelta(seconds=5),
    **client: Any,
) -> PlatformClient:
    """The real PlatformClient over MockTransport, on the fake clock (wall and monotonic).

    `client` goes to `client_of` as is (limiter, stop, gate, observer, ...)."""
    if isinstance(platform, FakePlatform):
        transport = platform.transport()
    else:
        transport = httpx.MockTransport(platform)
    http = build_http_client(
        "https://platform.test",
        TOKEN,
        timeout=timeout,
        max_connections=max_connections,
        transport=transport,
    )
    client.setdefault("clock_check", ClockCheck(timedelta(minutes=2), clock))
    built = client_of(
        http,
        max_attempts=max_attempts,
        clock=clock,
        monotonic=clock.monotonic,
        sleep=sleep,
        **client,
    )
    _HTTP[built] = http
    return built


def build_sweeper(
    platform: FakePlatform | Callable[[httpx.Request], Any],
    clock: FakeClock,
    *,
    stop: asyncio.Event | None = None,
    outages: Callable[[], OutageWindows] | None = None,
    nap: Nap | None = None,
    **settings: Any,
) -> Sweeper:
    """A Sweeper on `build_client`: the keyword arguments that `build_client` or
    `client_of` take (sleep, max_attempts, limiter, ...) go to the client, the rest
    to the SweepConfig (rules default to RULES)."""
    taken = set(inspect.signature(build_client).parameters)
    taken |= set(inspect.signature(client_of).parameters)
    client = {k: v for k, v in settings.items() if k in taken}
    # The sweeps' state, shared by the client (which consults it) and the sweeper.
    client.setdefault("clock_check", ClockCheck(timedelta(minutes=2), clock))
    client.setdefault("refusals", TokenRefusals(clock.monotonic))
    config = {k: v for k, v in settings.items() if k not in taken}
    config.setdefault("rules", RULES)
    config.setdefault("host", "test-host")
    config.setdefault("version", "1.2.3")
    extra: dict[str, Any] = {}
    if outages is not None:
        extra["outages"] = outages
    if nap is not None:
        extra["nap"] = nap
    return Sweeper(
        build_client(platform, clock, stop=stop, **client),
        SweepConfig(**config),
        clock=clock,
        stop=stop,
        monotonic=clock.monotonic,
        clock_check=client["clock_check"],
        refusals=client["refusals"],
        **extra,
    )


def patient_sweeper(
    platform: FakePlatform | Callable[[httpx.Request], Any], clock: FakeClock, **settings: Any
) -> Sweeper:
    """`build_sweeper` with five attempts whose waits move the clock and one 2 h rule
    (code Z): for the tests where retries meet a deadline, a stop or a guard."""
    settings.setdefault("max_attempts", 5)
    settings.setdefault("sleep", clock.sleep)
    settings.setdefault("rules", rules_with(2 * H))
    return build_sweeper(platform, clock, **settings)


def sweep(platform: FakePlatform, clock: FakeClock, **config: Any) -> SweepReport:
    """Build a sweeper and run one sweep."""
    return asyncio.run(build_sweeper(platform, clock, **config).run())


def run(sweeper: Sweeper, interval: Interval | None = None, timeout: float = 30) -> SweepReport:
    """Run one sweep (with precise marking when given an interval), bounded, and close
    the client's connections after it."""

    async def go() -> SweepReport:
        async with _HTTP[sweeper.client]:
            return await asyncio.wait_for(sweeper.run(interval=interval), timeout=timeout)

    return asyncio.run(go())


def precise(sweeper: Sweeper, clock: FakeClock, until: timedelta = 5 * M) -> Interval:
    """A listing interval of `until` for precise marking; the sweeper's naps jump the clock."""

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        clock.advance(timedelta(seconds=seconds))

    sweeper.nap = nap
    return Interval(until=clock() + until, timers=TimerHeap(sweeper.config.max_steps))


def entry_of(report: SweepReport, step_id: str) -> StepEntry:
    (entry,) = [e for e in report.entries if e.stepId == step_id]
    return entry


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]
