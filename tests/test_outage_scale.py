"""Outage grace at every time scale: one scenario, scaled from a limit of 1 s to 1 day.

The scenario is drawn in thousandths of the limit: platform outages (some before
the daemon starts), live workers that beat at most every sixth of the limit and
retry through an outage with waits of at most half of it, dead workers, and the
daemon's own requests (its re-reads, and the probes `OutageLog.probe_due` asks
for). At every successful request the daemon judges every step with
`policy.decide`. The same decisions must come out at every scale, and the two
promises of operations.md ("Outage grace") must hold.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.guards import ClockCheck
from sweeper.model import Step, StepStatus
from sweeper.outages import OutageLog, watch_gap
from sweeper.policy import Decision, Rule, Rules, decide
from tests.fakes import NOW

SCALES = (
    timedelta(seconds=1),
    timedelta(minutes=1),
    timedelta(hours=1),
    timedelta(days=1),
)
UNITS = 1000  # one limit, in the scenario's units
END = 20 * UNITS


@dataclass(frozen=True)
class Scenario:
    start: int  # the daemon starts (its first request comes later)
    outages: tuple[tuple[int, int], ...]  # [from, to) in units
    live: tuple[tuple[int, ...], ...]  # each live worker's successful beats
    dead: tuple[tuple[int, ...], ...]  # each dead worker's beats, up to its death
    requests: tuple[int, ...]  # the daemon's own requests besides its probes
    failing: frozenset[int] = frozenset()  # requests that fail though the platform is up
    end: int = END
    #: The platform's clock less ours at the start, and a step of it (at, by), in units.
    skew: int = 0
    jump: tuple[int, int] = (0, 0)
    #: How finely its Date shows the platform's clock, in units: a thousandth of the
    #: limit, or the whole limit (the Date's second at a limit of 1 s).
    resolution: int = 1

    def offset(self, t: float) -> int:
        """The platform's clock less ours at moment t, in units."""
        return self.skew + (self.jump[1] if self.jump[1] and t >= self.jump[0] else 0)

    def down(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.outages)


def live_beats(rng: random.Random, outages: list[tuple[int, int]]) -> tuple[int, ...]:
    """A worker that beats every <= limit/6 while it gets through, and retries within limit/2."""

    def down(t: int) -> bool:
        return any(a <= t < b for a, b in outages)

    beats: list[int] = []
    t = rng.randint(0, UNITS // 6)
    while t < END:
        if down(t):
            t += rng.randint(1, UNITS // 2)  # retry
            continue
        beats.append(t)
        t += rng.randint(1, UNITS // 6)
    return tuple(beats)


def edge_beats(outages: list[tuple[int, int]], begin: int, early: int) -> tuple[int, ...]:
    """The worker the promise is tightest for: its last beat a sixth of a limit before
    an outage (give or take `early`), its retries half a limit apart, the first that
    gets through as late as it can."""

    def down(t: int) -> bool:
        return any(a <= t < b for a, b in outages)

    beats: list[int] = []
    t = (begin - UNITS // 6 - early) % (UNITS // 6)
    while t < END:
        if down(t):
            t += UNITS // 2
            continue
        beats.append(t)
        t += UNITS // 6
    return tuple(beats)


@st.composite
def outage_scenarios(draw: st.DrawFn) -> Scenario:
    rng = random.Random(draw(st.integers(0, 2**32)))
    outages: list[tuple[int, int]] = []
    t = draw(st.integers(0, 3 * UNITS))
    for _ in range(draw(st.integers(0, 4))):
        length = draw(st.sampled_from([1, 50, 200, 400, 900, 1500, 4000, 9000]))
        length = max(1, length + draw(st.integers(-40, 40)))
        outages.append((t, t + length))
        # A worker retrying within limit/2 gets through any availability longer than that.
        t += length + UNITS // 2 + 1 + draw(st.integers(0, 4 * UNITS))
    start = draw(st.integers(0, 8 * UNITS))
    live = tuple(live_beats(rng, outages) for _ in range(3))
    live += tuple(edge_beats(outages, a, draw(st.integers(0, 40))) for a, _ in outages)
    dead: list[tuple[int, ...]] = []
    for _ in range(2):
        beats = live_beats(rng, outages)
        death = rng.randint(0, END)
        dead.append(tuple(b for b in beats if b <= death) or (0,))
    requests = {rng.randint(start, END) for _ in range(draw(st.integers(0, 50)))}
    # Decisions are the daemon's successful requests: many right after each recovery,
    # when live workers have not beaten yet, make the tightest moments likely.
    requests |= {b + k * UNITS // 64 for _, b in outages for k in range(1, 33) if b >= start}
    # The platform's clock off ours by up to 1.3 limits either way (max_clock_skew of
    # 2 min at a 90 s limit), and stepping once either way (NTP): on its clock. The step
    # comes after the daemon's first answer (its first probe, unless the platform is
    # down then): a step before it is the skew the daemon found, and heartbeats stamped
    # before a step nobody saw cannot be told from older ones.
    skew = draw(st.integers(-1300, 1300))
    first = start + UNITS // 16 + 1
    for a, b in outages:
        if a <= first < b:
            first = b + UNITS // 16 + 1
    # Steps forward of one to 1.7 limits: at a limit of 1 s, within the Date's second of
    # the truth once its truncation is counted (adv15b, finding 1).
    steps = [0, -500, -30, 30, 500, 1000, 1300, 1700]
    jump = (draw(st.integers(first, END + first)), draw(st.sampled_from(steps)))
    resolution = draw(st.sampled_from([1, UNITS]))
    return Scenario(
        start,
        tuple(outages),
        live,
        tuple(dead),
        tuple(sorted(requests)),
        skew=skew,
        jump=jump,
        resolution=resolution,
    )


@st.composite
def blip_scenarios(draw: st.DrawFn) -> Scenario:
    """The platform is up; single requests fail between successes."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    start = draw(st.integers(0, 2 * UNITS))
    live = tuple(live_beats(rng, []) for _ in range(2))
    dead = tuple((rng.randint(0, END),) for _ in range(3))
    requests = sorted({rng.randint(start, END) for _ in range(draw(st.integers(10, 400)))})
    failing = frozenset(r for i, r in enumerate(requests) if i % 2 and rng.random() < 0.6)
    return Scenario(start, (), live, dead, tuple(requests), failing)


@dataclass(frozen=True)
class Judged:
    at: int  # when, in ticks
    worker: str
    marked: bool
    discount: int  # in ticks


def simulate(scenario: Scenario, limit: timedelta) -> list[Judged]:
    """Run the daemon's side of the scenario at one scale; every decision it takes.

    Times are counted in ticks of limit/8000 (a unit is 8 ticks, a probe period 500),
    which every scale holds exactly in microseconds: the same decisions, or a bug.
    """
    tick = limit / (8 * UNITS)
    assert tick * 8 * UNITS == limit

    def at(ticks: int) -> datetime:
        return NOW + tick * ticks

    moment = [at(8 * scenario.start)]
    rules = Rules((), Rule("default", limit, StepStatus.FAILED, "Z", "{idle}"))
    # What the daemon knows of the platform's clock: nothing until its first answer,
    # then what each answer's Date showed, truncated to the Date's resolution (scaled
    # with the limit), as the real ClockCheck learns it. No drift here (drift rates are
    # not exact in microseconds at every scale; tests/test_outage_clocks.py has them).
    resolution = 8 * scenario.resolution
    check = ClockCheck(2 * limit, lambda: moment[0], resolution=tick * resolution, drift=0)
    log = OutageLog(
        lambda: moment[0],
        gap=watch_gap(limit),
        keep=2 * limit,
        platform=lambda: moment[0] + check.offset,
    )
    workers = {f"live-{i}": b for i, b in enumerate(scenario.live)}
    workers |= {f"dead-{i}": b for i, b in enumerate(scenario.dead)}
    judged: list[Judged] = []
    pending = [8 * r for r in scenario.requests]
    while True:
        probe = log.probe_due()
        assert probe is not None and (probe - NOW) % tick == timedelta(0)
        probe_ticks = (probe - NOW) // tick
        if pending and pending[0] <= probe_ticks:
            t = pending.pop(0)
            failed = scenario.down(t / 8) or t // 8 in scenario.failing
        else:
            t = probe_ticks
            failed = scenario.down(t / 8)
        if t > 8 * scenario.end:
            return judged
        moment[0] = at(t)
        if not failed:  # the Date is checked before the sample
            date = (t + 8 * scenario.offset(t / 8)) // resolution * resolution
            check.learn_offset(tick * (date - t))
        log.observe("GET", "503" if failed else "200")
        if failed:
            continue
        windows = log.windows()
        platform_now = moment[0] + check.offset
        for name, beats in workers.items():
            seen = bisect_right(beats, t / 8)
            if not seen:
                continue
            # Stamped on the platform's clock as it was then.
            beat = beats[seen - 1]
            last = at(8 * (beat + scenario.offset(beat)))
            started = at(-8 * 2 * UNITS)
            step = Step("s-" + name, "org", "RUNNING", started, last_heartbeat_at=last)
            verdict = decide(step, platform_now, rules, windows)
            discount = windows.overlap(last, platform_now)
            assert discount % tick == timedelta(0)
            judged.append(Judged(t, name, isinstance(verdict, Decision), discount // tick))


@settings(max_examples=25, deadline=None)
@given(outage_scenarios())
def test_live_workers_are_never_marked_at_any_scale(scenario: Scenario) -> None:
    """Promise one: through any outage, even one older than the daemon, no live worker is
    marked, and every scale takes the very same decisions."""
    runs = [simulate(scenario, limit) for limit in SCALES]
    for other in runs[1:]:
        assert other == runs[0]
    assert not [j for j in runs[0] if j.marked and j.worker.startswith("live")]
    # Dead workers do get marked: within a limit and a probe of the time nobody could
    # tell (outages after their last beat, and everything before the first request).
    for i, beats in enumerate(scenario.dead):
        name = f"dead-{i}"
        marks = [j for j in runs[0] if j.worker == name and j.marked]
        judged = [j for j in runs[0] if j.worker == name]
        if marks or not judged:
            continue
        last = max(beats[-1], scenario.start)
        forgiven = sum(max(0, min(b, END) - max(a, last)) for a, b in scenario.outages)
        # Every forward move of the known offset is forgiven: a forward step of the
        # platform's clock, and our estimate tightening (up to the resolution).
        forgiven += max(0, scenario.jump[1]) + scenario.resolution
        assert scenario.end - last <= UNITS + forgiven + UNITS // 4 + 1


@settings(max_examples=25, deadline=None)
@given(blip_scenarios())
def test_single_failures_discount_at_most_a_tenth_of_the_limit(scenario: Scenario) -> None:
    """Promise two: the platform is up and single requests fail between successes: no
    decision on a step silent since the daemon watched is discounted by more than limit/10."""
    runs = [simulate(scenario, limit) for limit in SCALES]
    for other in runs[1:]:
        assert other == runs[0]
    first = min(scenario.requests[0], scenario.start + UNITS // 16)
    for i, beats in enumerate(scenario.dead):
        name = f"dead-{i}"
        for j in runs[0]:
            if j.worker == name and beats[-1] >= first:
                assert j.discount <= 8 * UNITS // 10
    assert any(j.marked for j in runs[0]) or all(
        b[-1] > END - UNITS - UNITS // 4 or b[-1] < scenario.start for b in scenario.dead
    )


def test_a_daemon_started_during_an_outage_forgives_the_time_before_it() -> None:
    """Finding 2: down for 100 limits before the start and 35 after; workers back 6 after
    recovery. Nothing live is marked, at any scale."""
    beats = (0, *range(135 * UNITS + 4 * UNITS // 10, 160 * UNITS, UNITS // 6))
    scenario = Scenario(
        start=100 * UNITS,
        outages=((10, 135 * UNITS),),
        live=(beats,),
        dead=((0,),),
        requests=tuple(range(100 * UNITS, 160 * UNITS, 97)),
        end=160 * UNITS,
    )
    runs = [simulate(scenario, limit) for limit in SCALES]
    assert all(r == runs[0] for r in runs)
    live = [j for j in runs[0] if j.worker == "live-0"]
    assert live and not any(j.marked for j in live)
    # The dead one is marked half a limit after the first answer, not at once.
    marks = [j.at for j in runs[0] if j.worker == "dead-0" and j.marked]
    first = 8 * 135 * UNITS
    assert marks and first + 4 * UNITS <= marks[0] <= first + 5 * UNITS


@pytest.mark.parametrize("phase", [37, 111, 666, 999])
@pytest.mark.parametrize("step", [300, 700, 1000, 1300, 1700])
def test_a_forward_step_within_the_dates_resolution_marks_no_live_worker(
    step: int, phase: int
) -> None:
    """adv15b finding 1: the Date shows the platform's clock to a whole limit (its second
    at a limit of 1 s), and the platform's clock steps forward by 0.3 to 1.7 limits. Such
    a step cannot be told from our estimate getting tighter: every forward move of the
    estimate is forgiven, so no live worker is marked, at any scale; the dead one is
    marked, at most a resolution later than with an exact clock."""
    outages = ((12 * UNITS, 14 * UNITS),)
    live = tuple(edge_beats(list(outages), 5 * UNITS + phase, k * 20) for k in range(6))
    live += tuple(edge_beats(list(outages), 12 * UNITS, k * 25) for k in range(6))
    death = 15 * UNITS
    dead = (tuple(b for b in live_beats(random.Random(step + phase), []) if b <= death),)
    scenario = Scenario(
        start=0,
        outages=outages,
        live=live,
        dead=dead,
        requests=tuple(range(UNITS // 16, END, 61)),
        jump=(5 * UNITS + phase, step),
        resolution=UNITS,
    )
    runs = [simulate(scenario, limit) for limit in SCALES]
    assert all(r == runs[0] for r in runs)
    assert not [j for j in runs[0] if j.marked and j.worker.startswith("live")]
    marks = [j.at for j in runs[0] if j.worker == "dead-0" and j.marked]
    # Marked once silent a limit, plus at most the resolution our estimate may have been
    # low by when it last beat, plus the probe cadence.
    assert marks
    assert marks[0] <= 8 * (dead[0][-1] + UNITS + scenario.resolution + UNITS // 16)
