"""Outage grace whatever the clocks do, and whatever answers in an outage (issue 15,
second adversary pass: B, C, G, E, I).

Through the real client, clock check and outage log in a simulated world
(tests/outage_world.py): the platform's clock behind, ahead, stepping back or
forward, drifting; our own clock stepping; outages answered by a gateway's page;
single timeouts between answers; latency. A worker that keeps the spec's promise is
never marked, and a dead one is.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.guards import DRIFT
from tests.outage_world import DOWN_ANSWERS, World, check, marked, populate, run

S = timedelta(seconds=1)
Z = timedelta(0)


def step(at: timedelta, before: timedelta, after: timedelta):  # type: ignore[no-untyped-def]
    return lambda t: before if t < at else after


L90 = timedelta(seconds=90)


@pytest.mark.parametrize(
    "skew",
    [-100 * S, 100 * S, -119 * S, 119 * S],
    ids=["behind-100s", "ahead-100s", "behind-119s", "ahead-119s"],
)
def test_an_accepted_skew_at_start_marks_no_live_worker(skew: timedelta) -> None:
    """B: the platform's clock 100 s behind ours (max_clock_skew 2 min accepts it), a
    limit of 90 s, an outage a minute after the start; the worker is back within half a
    limit of its end. The first answer's sample must not sit |skew| in the platform's
    future (which blinded the prober for |skew|)."""
    end = 8 * L90
    world = World(L90, [(55.5 * S, 105.5 * S), (300 * S, 390 * S)], platform_skew=lambda t: skew)
    populate(world, end, dead_at=400 * S)
    check(world, end, 400 * S)


@pytest.mark.parametrize(
    "jump", [-30 * S, 30 * S, -5 * S, 5 * S], ids=["back-30s", "fwd-30s", "back-5s", "fwd-5s"]
)
@pytest.mark.parametrize("limit", [10 * S, L90], ids=["10s", "90s"])
def test_the_platform_clock_stepping_marks_no_live_worker(
    jump: timedelta, limit: timedelta
) -> None:
    """C: the platform's clock steps back (or forward) mid-run, as NTP does, then the
    platform goes away for two limits. Back: samples must not sit in its future; forward:
    the time it skipped passed for no worker."""
    end = 12 * limit
    at = 3 * limit
    outages = [(at + limit / 10, at + 2 * limit), (7 * limit, 8 * limit)]
    world = World(limit, outages, platform_skew=step(at, Z, jump))
    populate(world, end, dead_at=8.5 * limit)
    check(world, end, 8.5 * limit)


@pytest.mark.parametrize("rate", [-1e-3, 1e-3], ids=["slower", "faster"])
def test_a_drifting_platform_clock_marks_no_live_worker(rate: float) -> None:
    """The platform's clock 0.1 % slow or fast (far more than a real one): our idea of it
    never runs ahead of it, so idle time is never overstated."""
    limit = 10 * S
    end = 60 * limit
    outages = [(n * 5 * limit, n * 5 * limit + 2 * limit) for n in range(1, 11)]
    world = World(limit, outages, platform_skew=lambda t: t * rate)
    populate(world, end, dead_at=56 * limit)
    check(world, end, 56 * limit)


@pytest.mark.parametrize("jump", [-20 * S, 20 * S], ids=["back", "forward"])
def test_our_own_clock_stepping_marks_no_live_worker(jump: timedelta) -> None:
    """Our wall clock steps (the platform's does not): samples are on the steady clock."""
    limit = 10 * S
    end = 12 * limit
    at = 3 * limit
    outages = [(at + S, at + 2 * limit), (7 * limit, 8 * limit)]
    world = World(limit, outages, our_skew=step(at, Z, jump))
    populate(world, end, dead_at=8.5 * limit)
    check(world, end, 8.5 * limit)


@pytest.mark.parametrize("answer", DOWN_ANSWERS)
def test_an_outage_answered_by_a_gateway_is_an_outage(answer: str) -> None:
    """I: while the platform is away a gateway answers 200 with a maintenance page, or
    404 (a default backend, or its own JSON), or 403: none is the platform's answer, so
    the time counts as an outage like a 503 or a refused connection."""
    limit = 60 * S
    end = 10 * limit
    world = World(limit, [(20 * S, 140 * S), (300 * S, 330 * S)], down_answer=answer)
    populate(world, end, dead_at=400 * S)
    check(world, end, 400 * S)


def test_single_timeouts_between_answers_discount_at_most_a_tenth_of_the_limit() -> None:
    """G, promise two: the platform is up; every fifth request times out after api.timeout
    (10 s, more than a tenth of a 1 min limit). A request in flight is watching, so no
    decision is discounted by more than a tenth of the limit, and the dead step is
    marked within a limit and a tenth."""
    limit = 60 * S
    end = 10 * limit
    world = World(limit, [], down_answer="timeout", blips=frozenset(range(3, 10_000, 5)))
    world.handler = _timing_out(world)  # type: ignore[method-assign]
    populate(world, end, dead_at=2 * limit)
    verdicts = run(world, end)
    assert not marked(verdicts, "live")
    dead = [v for v in verdicts if v.worker == "dead"]
    first_mark = min(v.elapsed for v in marked(dead, "dead"))
    last_beat = world.workers["dead"][-1]
    assert first_mark - last_beat <= limit + limit / 10


def _timing_out(world: World):  # type: ignore[no-untyped-def]
    """The world's handler, with its blips timing out instead of answering 503."""
    import httpx

    plain = World.handler

    def handler(request: httpx.Request) -> httpx.Response:
        if world.requests in world.blips:
            world.requests += 1
            world.elapsed += world.timeout
            raise httpx.ReadTimeout("no answer", request=request)
        return plain(world, request)

    return handler


@pytest.mark.parametrize(
    ("limit", "latency"),
    [(S, timedelta(milliseconds=70)), (S, timedelta(milliseconds=110)), (60 * S, 5 * S)],
    ids=["1s-70ms", "1s-110ms", "1min-5s"],
)
def test_latency_longer_than_the_probe_cadence_still_marks_the_dead(
    limit: timedelta, latency: timedelta
) -> None:
    """E: every answer takes longer than a sixteenth of the limit. A request in flight
    is watching, so the time is not unwatched and the dead step is marked."""
    end = 12 * limit
    world = World(limit, [], latency=latency)
    populate(world, end, dead_at=2 * limit)
    verdicts = run(world, end)
    assert not marked(verdicts, "live")
    first_mark = min(v.elapsed for v in marked(verdicts, "dead"))
    assert first_mark - world.workers["dead"][-1] <= limit + limit / 10 + latency


@settings(max_examples=20, deadline=None)
@given(
    limit_s=st.sampled_from([10, 90, 3600]),
    skew_s=st.integers(-119, 119),
    jump_s=st.integers(-60, 60),
    jump_at=st.integers(1, 9),
    drift=st.sampled_from([0.0, -1e-3, 1e-3]),
    # A timeout is api.timeout (10 s), as long as a limit or far shorter.
    answer=st.sampled_from(DOWN_ANSWERS),
    outages=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(1, 3_000)), min_size=1, max_size=3
    ),
)
def test_no_clock_and_no_gateway_marks_a_live_worker(
    limit_s: int,
    skew_s: int,
    jump_s: int,
    jump_at: int,
    drift: float,
    answer: str,
    outages: list[tuple[int, int]],
) -> None:
    """Any accepted skew at start, a step either way later, drift, any answer in the
    outages (in thousandths of the limit, up-times longer than half a limit)."""
    limit = limit_s * S
    end = 14 * limit
    unit = limit / 1000
    spans: list[tuple[timedelta, timedelta]] = []
    t = Z
    for start, length in sorted(outages):
        a = max(t + limit / 2 + unit, start * unit)
        spans.append((a, a + length * unit))
        t = a + length * unit
    skew, jump = skew_s * S, jump_s * S
    world = World(
        limit,
        spans,
        down_answer=answer,
        platform_skew=lambda e: skew + (jump if e >= jump_at * limit else Z) + e * drift,
    )
    dead_at = t + limit
    populate(world, end, dead_at=dead_at)
    verdicts = run(world, end)
    assert not marked(verdicts, "live"), marked(verdicts, "live")[:3]


@pytest.mark.parametrize("limit", [10 * S, 60 * S], ids=["10s", "1min"])
def test_an_outage_seen_by_one_hung_request_is_forgiven(limit: timedelta) -> None:
    """Found by the property test above: api.timeout (10 s) as long as a limit, and an
    outage some 0.6 limits long in which the one request sent hangs to its timeout. The
    request is late half a gap after its sending (a failure), and nobody watches after
    that: the outage is forgiven, the worker back within half a limit is not marked."""
    end = 10 * limit
    outages = [(limit / 2 + limit / 1000, limit / 2 + limit * 583 / 1000), (5 * limit, 6 * limit)]
    world = World(limit, outages, down_answer="timeout", timeout=10 * S)
    populate(world, end, dead_at=7 * limit)
    check(world, end, 7 * limit)


@pytest.mark.parametrize("at_ms", [0, 333, 777])
@pytest.mark.parametrize("jump_ms", [300, 700, 1000, 1300, 1700])
def test_a_forward_step_within_the_dates_second_at_a_1s_limit(jump_ms: int, at_ms: int) -> None:
    """adv15b finding 1, through the real client and Date headers: at a limit of 1 s the
    platform's clock steps forward 0.3 to 1.7 s, which the Date's whole seconds cannot
    tell from our estimate getting tighter. Every forward move is forgiven: no live
    worker is marked; the dead one still is, at most a second (the Date's resolution)
    and the latency later than with an exact clock."""
    limit = S
    end = 30 * limit
    at = 10 * limit + timedelta(milliseconds=at_ms)
    jump = timedelta(milliseconds=jump_ms)
    latency = timedelta(milliseconds=70)
    world = World(
        limit,
        [(20 * limit, 23 * limit)],
        platform_skew=step(at, Z, jump),
        latency=latency,
        timeout=limit / 4,
    )
    dead_at = 25 * limit
    populate(world, end, dead_at=dead_at)
    verdicts = run(world, end)
    assert not marked(verdicts, "live"), marked(verdicts, "live")[:3]
    first_mark = min(v.elapsed for v in marked(verdicts, "dead"))
    assert first_mark - world.workers["dead"][-1] <= limit + S + limit / 8 + 2 * latency


@pytest.mark.parametrize(
    ("limit", "end"), [(S, 1200 * S), (timedelta(days=1), timedelta(days=2.5))], ids=["1s", "1day"]
)
@pytest.mark.parametrize("rate", [-1e-3, 1e-3], ids=["slower", "faster"])
def test_a_drifting_platform_clock_over_a_long_run(
    rate: float, limit: timedelta, end: timedelta
) -> None:
    """The platform's clock 0.1 % slow or fast over a long run: at 1 s, 1200 limits (1.2 s
    of drift, more than the Date's second); at 1 day, from 119 s off to 119 s off the
    other way (max_clock_skew's 2 min). An old Date bound loses precision with age
    (ClockCheck's drift rate), so our estimate never runs ahead of the platform and no
    live worker is marked; the dead one is marked, at most the drift rate's share of its
    silence, the Date's second and the probe cadence late."""
    start = -119 * S if rate > 0 else 119 * S
    outages = [(end * n / 5, end * n / 5 + min(2 * limit, end / 20)) for n in (1, 3)]
    world = World(limit, outages, platform_skew=lambda t: start + t * rate)
    dead_at = end - 3 * limit / 2
    populate(world, end, dead_at=dead_at)
    verdicts = run(world, end)
    assert not marked(verdicts, "live"), marked(verdicts, "live")[:3]
    first_mark = min(v.elapsed for v in marked(verdicts, "dead"))
    last = world.workers["dead"][-1]
    forgiven = sum((max(Z, b - max(a, last)) for a, b in outages), Z)
    silence = first_mark - last - forgiven
    assert silence <= limit * (1 + 2 * DRIFT) + S + limit / 8
