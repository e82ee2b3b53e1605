"""A simulated world for outage grace through the real client: the platform's clock
(skewed, stepping, drifting), its outages and what answers during them (a refused
connection, a 503, a timeout, a gateway's page), workers that keep the spec's promise
and dead ones, and the daemon's side: the real `PlatformClient` (MockTransport), the
real `ClockCheck` learning the platform's clock from `Date`, the real `OutageLog`
stamping on a steady clock, probes when `probe_due` says, and `policy.decide` judging
every step on the platform's clock as the daemon does (our clock plus the offset).

Time is simulated: nothing sleeps; a request's latency or timeout moves the world's
clock while the request is in flight.
"""

from __future__ import annotations

import asyncio
import email.utils
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx

from sweeper.api import build_http_client
from sweeper.guards import ClockCheck
from sweeper.model import StepStatus, format_timestamp
from sweeper.outages import OutageLog, watch_gap
from sweeper.policy import Decision, Rule, Rules, decide
from sweeper.timers import due_at
from tests.builders import client_of
from tests.fakes import NOW, TOKEN

Z = timedelta(0)
TICK = timedelta(milliseconds=1)
#: What answers while the platform is away.
DOWN_ANSWERS = (
    "refused",
    "503",
    "timeout",
    "html-200",
    "html-404",
    "json-404",  # a gateway's own JSON (Kong: {"message": "no Route matched"})
)


def platform_answer_while_down(kind: str, date: str) -> httpx.Response:
    """What a gateway, load balancer or maintenance page answers in an outage."""
    headers = {"Date": date}
    if kind == "503":
        return httpx.Response(503, headers=headers)
    if kind == "html-200":
        headers["Content-Type"] = "text/html"
        return httpx.Response(200, text="<html>Down for maintenance</html>", headers=headers)
    if kind == "html-404":
        return httpx.Response(404, text="default backend - 404", headers=headers)
    if kind == "json-404":
        return httpx.Response(404, json={"message": "no Route matched"}, headers=headers)
    raise AssertionError(kind)  # pragma: no cover


@dataclass
class World:
    """Real time is `elapsed` since NOW; every clock is a function of it."""

    limit: timedelta
    outages: list[tuple[timedelta, timedelta]]  # [from, to) in real time
    down_answer: str = "503"
    #: The platform's clock less real time, as real time passes (skew, steps, drift).
    platform_skew: Callable[[timedelta], timedelta] = lambda t: Z
    #: Our wall clock less real time.
    our_skew: Callable[[timedelta], timedelta] = lambda t: Z
    latency: timedelta = Z
    timeout: timedelta = timedelta(seconds=10)
    #: Requests that fail (503) though the platform is up, by their index.
    blips: frozenset[int] = frozenset()
    elapsed: timedelta = Z
    workers: dict[str, list[timedelta]] = field(default_factory=dict)
    requests: int = 0

    def down(self, at: timedelta | None = None) -> bool:
        at = self.elapsed if at is None else at
        return any(a <= at < b for a, b in self.outages)

    def platform_clock(self, at: timedelta | None = None) -> datetime:
        at = self.elapsed if at is None else at
        return NOW + at + self.platform_skew(at)

    def ours(self) -> datetime:
        return NOW + self.elapsed + self.our_skew(self.elapsed)

    def steady(self) -> datetime:
        return NOW + self.elapsed

    def beat_record(self, name: str) -> dict[str, str]:
        beats = self.workers[name]
        seen = bisect_right(beats, self.elapsed)
        last = beats[seen - 1] if seen else -self.limit
        return {
            "stepId": name,
            "organizationId": "org-a",
            "status": "RUNNING",
            "startedAt": format_timestamp(self.platform_clock(-3 * self.limit)),
            "lastHeartbeatAt": format_timestamp(self.platform_clock(last)),
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        index = self.requests
        self.requests += 1
        if self.down() and self.down_answer == "timeout":
            self.elapsed += self.timeout
            raise httpx.ReadTimeout("no answer", request=request)
        if self.down() and self.down_answer == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        self.elapsed += self.latency
        date = email.utils.format_datetime(self.platform_clock(), usegmt=True)
        if self.down():
            return platform_answer_while_down(self.down_answer, date)
        if index in self.blips:
            return httpx.Response(503, headers={"Date": date})
        body = {
            "success": True,
            "data": [self.beat_record(name) for name in sorted(self.workers)],
            "nextCursor": None,
        }
        return httpx.Response(200, json=body, headers={"Date": date})


def promised_beats(
    outages: list[tuple[timedelta, timedelta]], limit: timedelta, end: timedelta, phase: float = 0
) -> list[timedelta]:
    """A worker that keeps the promise at its tightest: a beat every limit/6 while the
    platform answers, and through an outage a retry every limit/2 (the first that gets
    through as late as it can)."""

    def down(t: timedelta) -> bool:
        return any(a <= t < b for a, b in outages)

    beats: list[timedelta] = []
    t = limit / 6 * phase
    while t < end:
        if down(t):
            t += limit / 2
            continue
        beats.append(t)
        t += limit / 6
    return beats


@dataclass(frozen=True)
class Verdict:
    elapsed: timedelta
    worker: str
    marked: bool
    idle: timedelta


async def _run(world: World, end: timedelta, listing_every: timedelta) -> list[Verdict]:
    check = ClockCheck(timedelta(minutes=2), world.ours)
    rules = Rules((), Rule("default", world.limit, StepStatus.FAILED, "Z", "{idle}"))
    log = OutageLog(
        world.steady,
        gap=watch_gap(world.limit),
        keep=2 * world.limit,
        platform=lambda: world.ours() + check.offset,
    )
    http = build_http_client(
        "https://platform.test",
        TOKEN,
        timeout=world.timeout,
        max_connections=2,
        transport=httpx.MockTransport(world.handler),
    )

    async def no_sleep(seconds: float) -> None:
        return None

    client = client_of(
        http, clock=world.ours, sleep=no_sleep, clock_check=check, watch=log, max_attempts=1
    )
    verdicts: list[Verdict] = []
    next_listing = Z
    done: set[str] = set()
    timer = end  # precise marking: a re-read when the first step is due
    while world.elapsed < end:
        due = log.probe_due()
        assert due is not None
        at = min(due - NOW, next_listing, timer)
        world.elapsed = max(world.elapsed, at)
        if world.elapsed >= next_listing:
            next_listing = world.elapsed + listing_every
        if world.elapsed >= timer:
            timer = end  # a failed re-read leaves the step to the next listing
        sent = world.requests
        try:
            steps = [
                r
                async for page in client.list_running(world.platform_clock(), 100)
                for r in page.records
            ]
        except Exception:
            assert world.requests > sent, "a request that was never sent"
            continue
        now = world.ours() + check.offset
        windows = log.windows()
        # A step marked is done with (the platform would show it FAILED).
        steps = [step for step in steps if step.step_id not in done]  # type: ignore[union-attr]
        dues = [due_at(step, rules, windows) for step in steps]  # type: ignore[arg-type]
        first_due = min((d for d in dues if d is not None and d > now), default=None)
        # On the steady clock, as the daemon's timers wait (at least a tick later).
        timer = end if first_due is None else max(first_due - now, TICK) + world.elapsed
        for step in steps:
            verdict = decide(step, now, rules, windows)  # type: ignore[arg-type]
            idle = verdict.idle if isinstance(verdict, Decision) else Z
            verdicts.append(
                Verdict(world.elapsed, step.step_id, isinstance(verdict, Decision), idle)  # type: ignore[union-attr]
            )
            if isinstance(verdict, Decision):
                done.add(step.step_id)  # type: ignore[union-attr]
    await http.aclose()
    return verdicts


def run(world: World, end: timedelta, listing_every: timedelta | None = None) -> list[Verdict]:
    """The daemon's decisions over the world's time, up to `end`."""
    return asyncio.run(_run(world, end, listing_every or world.limit))


def marked(verdicts: list[Verdict], prefix: str) -> list[Verdict]:
    return [v for v in verdicts if v.marked and v.worker.startswith(prefix)]


def populate(world: World, end: timedelta, dead_at: timedelta) -> None:
    """Six promise-keeping workers at every phase of their beat, and one that dies."""
    for phase in range(6):
        world.workers[f"live-{phase}"] = promised_beats(world.outages, world.limit, end, phase / 6)
    world.workers["dead"] = [
        b for b in promised_beats(world.outages, world.limit, end) if b < dead_at
    ]


def check(world: World, end: timedelta, dead_at: timedelta) -> None:
    """No live worker is marked; the dead one is."""
    verdicts = run(world, end)
    assert not marked(verdicts, "live"), marked(verdicts, "live")[:3]
    assert marked(verdicts, "dead"), "the dead worker was never marked"
