"""Precise marking's pure core: due moments, the heap and rearm, with an injected now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeper.model import Step, StepStatus
from sweeper.outages import NO_OUTAGES, OutageWindows
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Decision, Rule, Rules, SkipReason, decide
from sweeper.timers import (
    LATEST,
    Next,
    TimerHeap,
    due_at,
    half_silent,
    listing_horizon,
    rearm,
)
from tests.fakes import NOW, step

S = timedelta(seconds=1)
MS = timedelta(milliseconds=1)
LIMIT = 6 * S


def rule(name: str, stale_after: timedelta | None, **match: list[str]) -> Rule:
    return Rule(
        name=name,
        stale_after=stale_after,
        status=StepStatus.FAILED,
        error_code="ZOMBIE_STEP_TIMEOUT",
        error_message=DEFAULT_ERROR_MESSAGE,
        match={k: tuple(v) for k, v in match.items()},
    )


RULES = Rules(
    (rule("slow", 60 * S, stepType=["load"]), rule("never", None, stepType=["notify"])),
    rule("default", LIMIT),
)


def is_marked(s: Step, at: datetime, outages: OutageWindows = NO_OUTAGES) -> bool:
    return isinstance(decide(s, at, RULES, outages), Decision)


# -- due_at ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"started": 10 * S}, NOW - 4 * S),
        ({"started": 10 * S, "heartbeat": 1 * S}, NOW + 5 * S),
        ({"started": 10 * S, "updated": 2 * S, "heartbeat": 3 * S}, NOW + 4 * S),
        ({"started": 10 * S, "step_type": "load"}, NOW + 50 * S),
    ],
)
def test_due_is_one_tick_after_last_sign_of_life_plus_limit(
    kwargs: dict[str, object], expected: datetime
) -> None:
    """Without outages a step is due one microsecond after last sign of life + its rule's limit."""
    s = step(**kwargs)  # type: ignore[arg-type]
    due = due_at(s, RULES)
    assert due == expected + timedelta(microseconds=1)
    assert is_marked(s, due)
    assert not is_marked(s, due - timedelta(microseconds=1))


@pytest.mark.parametrize(
    "s",
    [
        step(status="SUCCEEDED"),
        step(status="FAILED"),
        step(step_type="notify"),
    ],
    ids=["succeeded", "failed", "exempt rule"],
)
def test_no_due_moment_for_finished_or_exempt_steps(s: Step) -> None:
    """A step that is not RUNNING, or whose rule says never, has no due moment."""
    assert due_at(s, RULES) is None


@pytest.mark.parametrize(
    ("windows", "expected_delay"),
    [
        ([], 0 * S),
        ([(NOW - 20 * S, NOW - 11 * S)], 0 * S),  # before the last sign of life: no discount
        ([(NOW - 12 * S, NOW - 8 * S)], 3 * S),  # straddles the last sign of life
        ([(NOW - 8 * S, NOW - 6 * S)], 2 * S),  # inside the limit
        ([(NOW - 5 * S, NOW + 10 * S)], 15 * S),  # starts exactly at the crossing
        ([(NOW - 6 * S, NOW - 4 * S), (NOW - 3 * S, NOW + 1 * S)], 6 * S),  # pushes into another
        ([(NOW + 1 * S, NOW + 30 * S)], 0 * S),  # after the crossing
    ],
)
def test_outages_delay_the_due_moment(
    windows: list[tuple[datetime, datetime]], expected_delay: timedelta
) -> None:
    """Time inside an outage does not count, including outages the delay itself runs into."""
    s = step(started=11 * S)  # last seen NOW - 11 s, crosses at NOW - 5 s without outages
    outages = OutageWindows.of(windows)
    due = due_at(s, RULES, outages)
    assert due == NOW - 5 * S + expected_delay + timedelta(microseconds=1)
    assert is_marked(s, due, outages)
    assert not is_marked(s, due - MS, outages)


@pytest.mark.parametrize(
    "last_seen",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 50, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ],
    ids=["year 1", "ten seconds before the end", "the last microsecond"],
)
def test_edge_of_calendar_never_raises(last_seen: datetime) -> None:
    """A due moment past datetime.max is None, not an OverflowError."""
    s = Step("s", "org", "RUNNING", started_at=last_seen)
    due = due_at(s, RULES, OutageWindows.of([(last_seen, LATEST)]))
    assert due is None or due > last_seen
    if last_seen.year == 9999:
        slow = Step("s", "org", "RUNNING", started_at=last_seen, step_type="load")
        assert due_at(slow, RULES) is None


# -- half_silent: the precise-mode guard counts steps silent past half their limit --


@pytest.mark.parametrize(
    ("silent", "expected"),
    [(3 * S - timedelta(microseconds=1), False), (3 * S, False), (3 * S + MS, True)],
)
def test_half_silent_is_strictly_past_half_the_limit(silent: timedelta, expected: bool) -> None:
    """Limit 6 s: silent exactly 3 s is not counted, a millisecond more is."""
    s = step(started=10 * S, heartbeat=silent)
    assert half_silent(s, NOW, RULES) is expected


def test_half_silent_does_not_count_outage_time() -> None:
    """Silent 5 s of which 3 s were an outage: 2 s of idle time, under half of 6 s."""
    s = step(started=10 * S, heartbeat=5 * S)
    outage = OutageWindows.of([(NOW - 4 * S, NOW - 1 * S)])
    assert half_silent(s, NOW, RULES)
    assert not half_silent(s, NOW, RULES, outage)


@pytest.mark.parametrize(
    "s",
    [step(status="SUCCEEDED", started=10 * S), step(step_type="notify", started=10 * S)],
    ids=["finished", "exempt rule"],
)
def test_half_silent_never_counts_finished_or_exempt_steps(s: Step) -> None:
    assert not half_silent(s, NOW, RULES)


# -- listing_horizon ---------------------------------------------------------------


def test_horizon_reaches_steps_due_before_the_next_listing() -> None:
    """startedBefore is now + interval - smallest limit, not now - smallest limit."""
    assert listing_horizon(NOW, 5 * S, RULES) == NOW - 1 * S
    assert listing_horizon(NOW, 5 * S, RULES, jitter=2 * S) == NOW + 1 * S


@pytest.mark.parametrize("micros", [1, 999, 1001, 1500])
def test_horizon_rounds_up_to_the_millisecond(micros: int) -> None:
    """The wire carries milliseconds and the filter is strict: never round a step out."""
    now = NOW + timedelta(microseconds=micros)
    assert listing_horizon(now, 5 * S, RULES) == NOW - 1 * S + MS * -(-micros // 1000)


LAST_MS = LATEST.replace(microsecond=0)


@pytest.mark.parametrize(
    ("now", "interval", "jitter", "expected"),
    [
        (LAST_MS - timedelta(hours=1), 6 * S, 0 * S, LAST_MS - timedelta(hours=1)),
        # Past the end of the calendar, or before its start: clamped.
        (LAST_MS - timedelta(hours=1), 1 * S, timedelta(days=1), LATEST),
        (datetime.min.replace(tzinfo=UTC) + 1 * S, 1 * S, 0 * S, datetime.min.replace(tzinfo=UTC)),
    ],
    ids=["at the end", "past the end", "before year 1"],
)
def test_horizon_near_the_edges_of_the_calendar(
    now: datetime, interval: timedelta, jitter: timedelta, expected: datetime
) -> None:
    assert listing_horizon(now, interval, RULES, jitter) == expected


def test_horizon_is_taken_as_a_whole_near_the_end_of_the_calendar() -> None:
    """now + interval is past datetime.max, yet now + interval - limit is not: that is
    the horizon (it was year 1, listing nothing)."""
    rules = Rules((), rule("default", timedelta(days=1)))
    now = LAST_MS - timedelta(hours=1)
    assert listing_horizon(now, 2 * timedelta(hours=1), rules) == now - timedelta(hours=22)


@pytest.mark.parametrize(
    ("now", "interval"),
    [
        (datetime.max.replace(tzinfo=UTC), timedelta(days=1)),
        (datetime.min.replace(tzinfo=UTC), timedelta(0)),
        (datetime.max.replace(tzinfo=UTC) - timedelta(microseconds=10), 7 * S),
    ],
)
def test_horizon_at_the_edges_of_the_calendar_is_clamped(
    now: datetime, interval: timedelta
) -> None:
    """Hostile clocks give a horizon inside the calendar, never an OverflowError."""
    horizon = listing_horizon(now, interval, RULES)
    assert datetime.min.replace(tzinfo=UTC) <= horizon <= LATEST


@given(
    started=st.timedeltas(min_value=timedelta(0), max_value=timedelta(minutes=2)),
    interval=st.timedeltas(min_value=S, max_value=timedelta(minutes=5)),
)
def test_every_step_due_before_the_next_listing_is_listed(
    started: timedelta, interval: timedelta
) -> None:
    """A step the horizon leaves out cannot be due before the next listing."""
    s = step(started=started)
    due = due_at(s, RULES)
    assert due is not None
    if due < NOW + interval:
        assert s.started_at < listing_horizon(NOW, interval, RULES)


# -- the heap ----------------------------------------------------------------------


def test_heap_pops_in_due_order() -> None:
    """Timers come out earliest first, ties in arming order, only once."""
    heap = TimerHeap(10)
    for name, offset in [("c", 3), ("a", 1), ("b", 2), ("a2", 1)]:
        assert heap.arm(step(name), NOW + offset * S, "sw-1")
    assert heap.next_due() == NOW + 1 * S
    assert [t.step.step_id for t in heap.pop_due(NOW + 2 * S)] == ["a", "a2", "b"]
    assert len(heap) == 1
    assert heap.pop_due(NOW + 2 * S) == []
    assert [t.step.step_id for t in heap.pop_due(NOW + 9 * S)] == ["c"]
    assert heap.next_due() is None


def test_rearming_replaces_and_disarming_removes() -> None:
    """A replaced or disarmed timer never fires."""
    heap = TimerHeap(10)
    heap.arm(step("a"), NOW + 1 * S, "sw-1")
    heap.arm(step("b"), NOW + 2 * S, "sw-1")
    heap.arm(step("a"), NOW + 5 * S, "sw-2")
    assert heap.disarm(("org-a", "b")) is not None
    assert heap.disarm(("org-a", "b")) is None
    assert len(heap) == 1
    assert heap.next_due() == NOW + 5 * S
    fired = heap.pop_due(NOW + 10 * S)
    assert [(t.step.step_id, t.sweep_id, t.due) for t in fired] == [("a", "sw-2", NOW + 5 * S)]


def test_same_step_id_in_two_organizations_is_two_timers() -> None:
    """Identity is (organization_id, step_id)."""
    heap = TimerHeap(10)
    heap.arm(step("a", org="o1"), NOW, "sw")
    heap.arm(step("a", org="o2"), NOW, "sw")
    assert len(heap) == 2


def test_capacity_refuses_new_keys_but_not_rearming() -> None:
    """Beyond max_steps arm returns False and changes nothing; re-arming an armed key works."""
    heap = TimerHeap(2)
    assert heap.arm(step("a"), NOW, "sw")
    assert heap.arm(step("b"), NOW, "sw")
    assert not heap.arm(step("c"), NOW, "sw")
    assert heap.arm(step("a"), NOW + S, "sw")
    assert len(heap) == 2
    assert ("org-a", "c") not in heap


def test_negative_capacity_is_refused_and_get_finds_live_timers() -> None:
    """A heap cannot hold fewer than zero timers; get returns the live one only."""
    with pytest.raises(ValueError, match=r"^max_steps must be 0 or more$"):
        TimerHeap(-1)
    heap = TimerHeap(1)
    heap.arm(step("a"), NOW, "sw")
    assert heap.get(("org-a", "a")) is not None
    heap.disarm(("org-a", "a"))
    assert heap.get(("org-a", "a")) is None


def test_clear_forgets_everything() -> None:
    """A listing rebuilds the timers from nothing."""
    heap = TimerHeap(5)
    heap.arm(step("a"), NOW, "sw")
    heap.clear()
    assert len(heap) == 0
    assert heap.pop_due(LATEST) == []


def test_compaction_keeps_every_live_timer() -> None:
    """Compacting drops the stale entries only: timers armed before many compactions
    (another step re-armed 200 times) all still fire, in order."""
    heap = TimerHeap(4)
    for n, name in enumerate("abc"):
        heap.arm(step(name), NOW + n * MS, "sw")
    for i in range(200):
        heap.arm(step("d"), NOW + S + i * MS, "sw")
    assert len(heap._heap) < 200
    fired = heap.pop_due(LATEST)
    assert [(t.step.step_id, t.due) for t in fired] == [
        ("a", NOW),
        ("b", NOW + MS),
        ("c", NOW + 2 * MS),
        ("d", NOW + S + 199 * MS),
    ]


def test_heavy_rearming_keeps_the_heap_small() -> None:
    """Lazy deletion is bounded: stale entries are compacted away."""
    heap = TimerHeap(3)
    for i in range(10_000):
        heap.arm(step("a"), NOW + i * MS, "sw")
    assert len(heap) == 1
    assert len(heap._heap) < 100


operations = st.lists(
    st.tuples(
        st.sampled_from(["arm", "disarm", "pop"]),
        st.integers(0, 7),
        st.integers(-50, 50),
    ),
    max_size=60,
)


@given(operations, st.integers(0, 6))
def test_heap_agrees_with_a_plain_dict(ops: list[tuple[str, int, int]], capacity: int) -> None:
    """Against a dict: pops in due order, never a disarmed or replaced timer; capacity holds."""
    heap = TimerHeap(capacity)
    model: dict[tuple[str, str], tuple[datetime, str]] = {}
    clock = NOW
    for n, (op, index, seconds) in enumerate(ops):
        key = ("org-a", f"s{index}")
        if op == "arm":
            due = clock + seconds * S
            accepted = heap.arm(step(f"s{index}"), due, f"sw-{n}")
            assert accepted == (key in model or len(model) < capacity)
            if accepted:
                model[key] = (due, f"sw-{n}")
        elif op == "disarm":
            assert (heap.disarm(key) is not None) == (key in model)
            model.pop(key, None)
        else:
            clock += abs(seconds) * S
            fired = heap.pop_due(clock)
            assert [t.due for t in fired] == sorted(t.due for t in fired)
            for t in fired:
                assert model.pop(t.key) == (t.due, t.sweep_id)
            assert all(d > clock for d, _ in model.values())
        assert len(heap) == len(model) <= capacity
        assert heap.next_due() == min((d for d, _ in model.values()), default=None)


# -- generated listings -------------------------------------------------------------


ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(minutes=3))


@st.composite
def listed_steps(draw: st.DrawFn) -> Step:
    beat = draw(st.none() | ages)
    return step(
        draw(st.text("abc", min_size=1, max_size=3)),
        status=draw(st.sampled_from(["RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"])),
        started=draw(ages),
        heartbeat=beat,
        step_type=draw(st.sampled_from([None, "load", "notify"])),
    )


windows = st.lists(
    st.tuples(ages, st.timedeltas(min_value=MS, max_value=timedelta(minutes=1))).map(
        lambda w: (NOW - w[0], NOW - w[0] + w[1])
    ),
    max_size=4,
).map(OutageWindows.of)


# -- due moments against decide --------------------------------------------------------


@given(listed_steps(), windows)
def test_a_due_step_is_never_written_before_its_moment(s: Step, outages: OutageWindows) -> None:
    """decide spares the step a millisecond before its due moment and marks it at it."""
    due = due_at(s, RULES, outages)
    if due is None:
        assert not is_marked(s, NOW + timedelta(days=1), outages)
        return
    assert is_marked(s, due, outages)
    assert not is_marked(s, due - MS, outages)


edge_times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)
).map(lambda d: d.replace(tzinfo=UTC))


@given(edge_times, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10)))
def test_hostile_times_never_raise(moment: datetime, interval: timedelta) -> None:
    """Year 1 to year 9999: due_at, horizon, heap and rearm never raise."""
    s = Step("s", "org", "RUNNING", started_at=moment)
    due = due_at(s, RULES)
    assert due is None or due > moment
    next_listing = min(moment + interval, LATEST) if moment < LATEST - interval else LATEST
    listing_horizon(moment, interval, RULES)
    heap = TimerHeap(1)
    heap.arm(s, due or LATEST, "sw")
    assert heap.pop_due(LATEST) != []
    rearm(s, s, moment, next_listing, RULES)


# -- rearm -------------------------------------------------------------------------


def test_a_step_still_stale_is_written() -> None:
    """Fired, read again unchanged and stale: write, with the policy's decision."""
    s = step(started=10 * S)
    r = rearm(s, s, NOW, NOW + 5 * S, RULES)
    assert r.next is Next.WRITE
    assert r.decision is not None and r.decision.step == s


@pytest.mark.parametrize(
    ("current", "reason"),
    [
        (None, SkipReason.GONE),
        (step(started=10 * S, status="SUCCEEDED"), SkipReason.FINISHED),
        (step(started=10 * S, heartbeat=0 * S), SkipReason.ALIVE),  # moved; due after next listing
    ],
    ids=["vanished", "finished", "moved past the next listing"],
)
def test_dropped_after_the_read(current: Step | None, reason: SkipReason) -> None:
    """Gone, finished, or alive until after the next listing: drop, with the reason."""
    r = rearm(step(started=10 * S), current, NOW, NOW + 5 * S, RULES)
    assert r.next is Next.DROP
    assert r.reason is reason


def test_a_moved_heartbeat_due_before_the_next_listing_is_rearmed() -> None:
    """The timer moves with the sign of life, and the fresh read is the new baseline."""
    listed = step(started=10 * S)
    current = step(started=10 * S, heartbeat=3 * S)
    r = rearm(listed, current, NOW, NOW + 5 * S, RULES)
    assert r.next is Next.REARM
    assert r.step == current
    assert r.due == NOW + 3 * S + timedelta(microseconds=1)


def test_a_step_due_at_the_next_listing_is_left_to_it() -> None:
    """Moved, and due exactly when the next listing comes: that listing judges it."""
    listed = step(started=10 * S)
    current = step(started=10 * S, heartbeat=3 * S)
    due = NOW + 3 * S + timedelta(microseconds=1)
    assert rearm(listed, current, NOW, due, RULES).next is Next.DROP
    assert rearm(listed, current, NOW, due + timedelta(microseconds=1), RULES).next is Next.REARM


def test_a_step_that_started_again_and_is_due_now_is_left_alone() -> None:
    """It started again and its new moment is exactly now: a sweep's re-read leaves such
    a step alone, and so does a timer."""
    listed = step(started=10 * S)
    current = step(started=6 * S)  # due at NOW + 1 µs
    now = NOW + timedelta(microseconds=1)
    assert rearm(listed, current, now, NOW + 5 * S, RULES).next is Next.DROP
    assert rearm(listed, current, NOW, NOW + 5 * S, RULES).next is Next.REARM


def test_an_outage_since_arming_rearms_later() -> None:
    """Not moved but no longer stale (an outage opened): re-armed at the delayed moment."""
    s = step(started=6 * S + timedelta(microseconds=1))  # due now without outages
    outages = OutageWindows.of([(NOW - 2 * S, NOW)])
    r = rearm(s, s, NOW, NOW + 5 * S, RULES, outages)
    assert r.next is Next.REARM
    assert r.due == NOW + 2 * S


@given(
    listed_steps(),
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(minutes=5)),
    st.timedeltas(min_value=S, max_value=timedelta(minutes=2)),
    windows,
)
def test_a_moved_heartbeat_never_writes(
    listed: Step, moved_by: timedelta, interval: timedelta, outages: OutageWindows
) -> None:
    """Whatever the times, a sign of life that moved re-arms (before the next listing) or drops."""
    beat = listed.last_sign_of_life[1] + moved_by
    current = Step(
        listed.step_id,
        listed.organization_id,
        "RUNNING",
        started_at=listed.started_at,
        last_heartbeat_at=beat,
        step_type=listed.step_type,
    )
    r = rearm(listed, current, NOW, NOW + interval, RULES, outages)
    assert r.next in (Next.REARM, Next.DROP)
    assert r.decision is None
    if r.next is Next.REARM:
        assert r.due is not None and r.due < NOW + interval
        assert r.step == current
        assert not is_marked(current, r.due - MS, outages)
