"""Adversarial review, round 2: precise marking, reload, give_up_at.

Each test failed on the main it was written against; the assertions state the
contract and now hold (docstrings still tell what used to happen)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx

from sweeper.api import STEPS_PATH, RateLimiter
from sweeper.daemon import LISTING_MARGIN
from sweeper.model import StepStatus
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Rule, Rules
from sweeper.report import ExitCode, Result
from sweeper.sweep import Sweeper
from tests.builders import H, build_sweeper, precise, rules_with
from tests.fakes import NOW, FakeClock, FakePlatform, record

M = timedelta(minutes=1)
S = timedelta(seconds=1)


def test_more_zombies_due_in_the_interval_than_max_steps_are_refused(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Three steps that beat 10 s ago die (limit 3 min) inside a 5 min interval; max_steps
    is 2. The contract: more zombies due in the interval than max_steps marks none of them
    (sweep.refused guard=max_steps). On main the third timer is silently never armed
    (TimerHeap.arm's False is ignored in Watch.begin), so two are marked, the third waits a
    whole interval, and the sweep reports COMPLETED with no refusal."""
    platform.add(*(record(f"w{n}", started=H, heartbeat=10 * S) for n in range(3)))
    rules = Rules((), Rule("default", 3 * M, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE))
    sweeper = build_sweeper(platform, clock, rules=rules, max_steps=2, max_concurrency=1)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    # All three were dead (never beat again) and crossed their limit inside the interval.
    assert report.counts["armed"] == 3, report.counts
    assert report.result is Result.REFUSED, (report.result, report.counts)
    assert [e for e in logs if e["event"] == "sweep.refused"]


def _rate_limited_sweeper(platform: FakePlatform, clock: FakeClock, **config: Any) -> Sweeper:
    return build_sweeper(
        platform,
        clock,
        sleep=clock.sleep,
        limiter=RateLimiter(1.0, monotonic=clock.monotonic, sleep=clock.sleep),
        rules=rules_with(2 * H, message="m"),
        host="h",
        version="1",
        **config,
    )


def test_a_rate_limit_slot_past_the_deadline_is_a_deadline_skip(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """api rate 1/s, sweep.deadline 3 s, three zombies, one at a time. The second
    zombie's re-read slot lies at the deadline: give_up_at turns that into OutOfTime,
    then PlatformUnavailable, and the zombie is reported FAILED reason=unavailable
    (exit 1, step.failed warning) though nothing was sent and the platform answered
    everything. The contract (sweep.deadline): no new write after it, the rest waits
    for the next sweep, i.e. skipped reason=deadline, exit 0."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(3)))
    sweeper = _rate_limited_sweeper(
        platform, clock, deadline=timedelta(seconds=3), max_concurrency=1
    )
    report = asyncio.run(sweeper.run())
    assert report.counts["marked"] == 1
    assert report.counts["failed"] == 0, [(e.stepId, e.outcome, e.reason) for e in report.entries]
    assert report.exit_code is ExitCode.OK


def test_a_timer_firing_at_the_end_of_the_interval_starts_no_write_after_it(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A timer due 1 ms before the interval ends fires; its re-read and write take 1 s
    each (a slow platform, well inside api.timeout). Nothing bounds a request already
    started by the interval's end, so the run ends ~2 s after `until`, long past the
    next listing (until + LISTING_MARGIN): APScheduler (max_instances=1) skips that
    listing and the daemon loses a whole interval."""
    interval_length = 5 * M
    # Due exactly 1 ms before `until` (limit 2 h, last sign of life 2 h - 5 min + 1 ms ago).
    platform.add(record("late", started=2 * H - interval_length + timedelta(milliseconds=2)))

    def slow(request: httpx.Request) -> None:
        if request.url.path != STEPS_PATH:
            clock.advance(S)

    platform.before.append(slow)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock, until=interval_length)
    patches_at: list[object] = []
    platform.before.append(lambda r: patches_at.append(clock()) if r.method == "PATCH" else None)
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.counts["armed"] == 1
    # A request in flight is not cut (its answer matters), but no write starts after the
    # interval's end; an overrun makes the daemon list at once (see the next test).
    assert all(at < interval.until for at in patches_at), patches_at  # type: ignore[operator]


# -- the real daemon -------------------------------------------------------------

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.e2e import Platform, environment, wait_for, write_config  # noqa: E402


def run_daemon_until(config: Path, tmp_path: Path, done: Callable[[str], bool]) -> str:
    """Run the real daemon until its log shows `done` (an event, with a generous bound)."""
    err = tmp_path / "daemon.log"
    with err.open("w") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sweeper",
                "--log-format",
                "json",
                "--config",
                str(config),
                "run",
            ],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env=environment(),
        )
    try:
        wait_for(lambda: done(err.read_text()), timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    return err.read_text()


def test_daemon_precise_timers_on_a_slow_platform_lose_no_listing(
    stand_in: Platform, tmp_path: Path
) -> None:
    """interval 2s, platform latency 0.4s (api.timeout 5s), steps due every 100 ms from
    about 2 s after the start. A timer firing near an interval's end is read (0.4 s) and
    written (0.4 s) after the 250 ms margin: the listing run is still going when the next
    is due and APScheduler skips it ("maximum number of running instances reached").
    Observed until the fourth listing and the last step marked (events, not a clock)."""
    now = datetime.now(UTC)
    for i in range(20):
        stand_in.state.add(record(f"d{i}", now=now, started=timedelta(seconds=2 - i * 0.1)))
    stand_in.faults.latency = timedelta(milliseconds=400)
    extra = '[schedule]\ninterval = "2s"\nprecise = true\n[sweep]\nstale_after = "4s"\n'
    config = write_config(tmp_path, stand_in.base_url, extra)

    def done(log: str) -> bool:
        return log.count('"sweep.started"') >= 4 and len(stand_in.state.patches) == 20

    lines = run_daemon_until(config, tmp_path, done).splitlines()
    skipped = [line for line in lines if "maximum number of running instances" in line]
    overran = [line for line in lines if '"sweep.overran"' in line]
    # An interval that ran past the next listing's time lists again at once: none lost.
    # (The stop may cut the last one: a daemon stopping lists nothing more.)
    assert len(overran) >= len(skipped) - 1


def test_a_reload_whose_apply_fails_keeps_the_old_one_whole(tmp_path: Path) -> None:
    """A reload changes sweep.stale_after (10h -> 1h) and is validated whole, CA bundle
    included. Before the next listing the CA bundle is replaced (a cert rotation in
    flight): `_apply` sets daemon.settings and clears `pending` first, then `_build`
    raises. From then on daemon.settings says 1h while every sweep runs with the old
    generation's 10h, and no later reload can fix it (changed_keys compares against the
    half-applied settings: a SIGHUP with the same file changes nothing)."""
    import shutil

    import certifi

    from sweeper.daemon import Daemon
    from sweeper.logs import Redactor
    from sweeper.settings import load_settings

    ca = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), ca)
    config = tmp_path / "c.toml"
    body = '[api]\nbase_url = "https://p.test"\ntoken = "t0ken-value"\nca_bundle = "{ca}"\n'
    config.write_text(body.format(ca=ca) + '[sweep]\nstale_after = "10h"\n')
    settings, _ = load_settings(config, environ={})

    async def scenario() -> tuple[Daemon, list[str]]:
        daemon = Daemon(settings, Redactor(), config_path=config, overrides={}, environ={})
        daemon.generation = daemon._build(settings)
        config.write_text(body.format(ca=ca) + '[sweep]\nstale_after = "1h"\n')
        assert daemon.reload("SIGHUP")
        ca.write_text("not a certificate\n")  # rotation in progress at the listing
        errors = []
        try:
            _, first = daemon.new_sweep()  # the apply fails: the old generation sweeps
            first.close()  # type: ignore[attr-defined]
        except Exception as exc:  # (on the old main: the listing of this interval was lost)
            errors.append(type(exc).__name__)
        shutil.copy(certifi.where(), ca)  # rotation done
        daemon.reload("SIGHUP")  # the operator tries again
        _, work = daemon.new_sweep()
        work.close()  # type: ignore[attr-defined]
        return daemon, errors

    daemon, errors = asyncio.run(scenario())
    assert daemon.generation is not None
    in_force = daemon.generation.sweeper.config.rules.default.stale_after
    assert daemon.settings.sweep.stale_after == timedelta(hours=1)
    assert in_force == timedelta(hours=1), (errors, in_force)


def test_a_real_zombie_waits_for_a_timer_place_when_healthy_steps_fill_the_heap(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """limit 3 min, interval 5 min, max_steps 3. Three healthy steps (beat 30 s ago, and
    still beating) and one step that beat 10 s ago and then died. One zombie in the
    interval, well within max_steps, yet it is not marked before the next listing: the
    healthy steps are due first and take every heap slot; `Watch.begin` ignores
    TimerHeap.arm's False, so the dead step's timer is silently never armed (no log, no
    guard) and it is marked one interval late."""
    from sweeper.model import format_timestamp

    platform.add(*(record(f"h{n}", started=H, heartbeat=30 * S) for n in range(3)))
    platform.add(record("dead", started=H, heartbeat=10 * S))

    def beating(request: httpx.Request) -> httpx.Response | None:
        step_id = request.url.path.rsplit("/", 1)[1]
        if request.method == "GET" and step_id.startswith("h"):
            data = dict(platform.state.steps[step_id])
            data["lastHeartbeatAt"] = format_timestamp(clock() - S)
            platform.state.add(data)
        return None

    platform.before.append(beating)
    rules = Rules((), Rule("default", 3 * M, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE))
    sweeper = build_sweeper(platform, clock, rules=rules, max_steps=3)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    marked = [e.stepId for e in report.entries if e.outcome.value == "marked"]
    assert marked == ["dead"], (marked, report.counts)


def test_a_listing_longer_than_the_interval_still_marks_in_precise_mode(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """schedule.interval 30 s (precise, the default), sweep.deadline 4 min, a listing of
    3 pages taking 20 s each (a large fleet). In plain mode this sweep lists for 60 s,
    well within sweep.deadline, and marks the 3 zombies. In precise mode the listing's
    deadline is cut to the interval's end: every listing is aborted as `unavailable`
    with the false message "did not end within sweep.deadline (4m)", no zombie is ever
    marked, and since every listing is as long, the daemon never succeeds again."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(3)))

    def slow_listing(request: httpx.Request) -> None:
        if request.url.path == STEPS_PATH:
            clock.advance(20 * S)

    platform.before.append(slow_listing)
    plain = asyncio.run(build_sweeper(platform, clock, page_size=1).run())
    assert plain.counts["marked"] == 3 and plain.result is Result.COMPLETED

    platform.add(*(record(f"y{n}", started=5 * H) for n in range(3)))
    sweeper = build_sweeper(platform, clock, page_size=1)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock, until=30 * S)))
    aborted = [e for e in logs if e["event"] == "sweep.aborted"]
    assert report.result is Result.COMPLETED, (report.result, [e["error"] for e in aborted])
    assert report.counts["marked"] == 3


def test_timers_armed_gauge_drops_when_the_run_ends(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Three timers armed; the first one's re-read is answered 401: the run halts
    (token_refused) and ends. No timer will ever fire, yet the last value given to
    sweeper_timers_armed is 2, and it stays there until a later listing gets as far as
    arming (never, while the token is refused; never again at all if a reload turns
    schedule.precise off)."""
    platform.add(*(record(f"w{n}", started=2 * H - (n + 1) * M) for n in range(3)))

    def refuse(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            return httpx.Response(401, json={"success": False})
        return None

    platform.before.append(refuse)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        await asyncio.sleep(0)  # a real nap yields to the tasks firing
        clock.advance(timedelta(seconds=seconds))

    sweeper.nap = nap
    gauge: list[int] = []
    interval.on_armed = gauge.append
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.result is Result.TOKEN_REFUSED
    assert report.counts["armed"] == 3
    assert gauge[-1] == 0, gauge


def test_a_halt_ends_the_nap(platform: FakePlatform, clock: FakeClock) -> None:
    """Timers at +1 min and +4 min. The first one's re-read is answered 401: the run halts
    (token_refused) at +1 min, but the loop is already napping towards +4 min and a halt
    neither sets `wake` nor `stop`, so the run (and sweep.finished, and the /readyz 503
    that the contract wants "at once after a sweep whose token was refused") waits until
    the next timer is due: 3 minutes here, up to a whole interval in general. The nap
    below behaves as `Sweeper._nap`: it ends early only on `wake` or `stop`."""
    platform.add(record("w0", started=2 * H - M), record("w1", started=2 * H - 4 * M))

    def refuse(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path != STEPS_PATH:
            return httpx.Response(401, json={"success": False})
        return None

    platform.before.append(refuse)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)

    async def nap(seconds: float, wake: asyncio.Event) -> None:
        for _ in range(200):  # the tasks firing run meanwhile
            await asyncio.sleep(0)
            if wake.is_set() or sweeper.stop.is_set():
                clock.advance(timedelta(milliseconds=1))
                return
        clock.advance(timedelta(seconds=seconds))

    sweeper.nap = nap
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.result is Result.TOKEN_REFUSED
    assert report.finished_at is not None
    assert report.finished_at < NOW + 2 * M, report.finished_at - NOW


def test_healthy_steps_are_not_counted_as_zombies(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """A rule with a limit shorter than the interval (3 min vs 5 min) and 25 healthy steps
    that beat every time they are looked at. None is ever stale, at the listing or
    when read again. Yet each one's last timer of the interval ends as a zombie
    `skipped alive`: sweep.finished says zombies=25, sweeper_zombies_found=25 (the
    SweeperZombieSurge alert needs >= 20), and 25 `step.skipped` lines are logged at
    info, where the contract counts not-stale steps in sweep.finished only and
    `step.skipped` is "a zombie left alone"."""
    from sweeper.model import format_timestamp

    platform.add(*(record(f"h{n}", started=H, heartbeat=30 * S) for n in range(25)))

    def beating(request: httpx.Request) -> httpx.Response | None:
        step_id = request.url.path.rsplit("/", 1)[1]
        if request.method == "GET" and step_id.startswith("h"):
            data = dict(platform.state.steps[step_id])
            data["lastHeartbeatAt"] = format_timestamp(clock() - S)
            platform.state.add(data)
        return None

    platform.before.append(beating)
    rules = Rules((), Rule("default", 3 * M, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE))
    sweeper = build_sweeper(platform, clock, rules=rules)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    skipped = [e for e in logs if e["event"] == "step.skipped"]
    assert (report.counts["zombies"], len(skipped)) == (0, 0), report.counts


def _creeping(
    platform: FakePlatform, clock: FakeClock, latency: timedelta, limit: int
) -> list[int]:
    """Each re-read of "creep" shows its sign of life 1 ms newer (still stale), and
    takes `latency`; after `limit` re-reads it stops creeping (so the test ends)."""
    from datetime import datetime

    from sweeper.model import format_timestamp

    platform.add(record("creep", started=2 * H - M))
    gets: list[int] = []

    def creep(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/creep"):
            gets.append(1)
            if len(gets) < limit:
                data = dict(platform.state.steps["creep"])
                raw = data.get("lastHeartbeatAt") or data["startedAt"]
                seen = datetime.fromisoformat(raw.replace("Z", "+00:00"))
                data["lastHeartbeatAt"] = format_timestamp(seen + timedelta(milliseconds=1))
                platform.state.add(data)
            clock.advance(latency)
        return None

    platform.before.append(creep)
    return gets


def test_a_sign_of_life_that_creeps_but_stays_stale_is_not_re_read_in_a_loop(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A step due 1 min into the interval whose every re-read shows a sign of life 1 ms
    newer than the last, yet still over its limit (a worker stamping heartbeats from a
    lagging clock, or a hostile platform). Each re-read: moved, so ALIVE; its new due
    moment is already past, so `rearm` re-arms it in the past and it fires at once: a
    tight GET loop: one GET per 100 ms of platform latency (300 here, where it stops
    creeping; ~2,400 in the 4 min left; with a fast platform, a CPU spin hammering
    it), where a sweep reads it once and skips it."""
    gets = _creeping(platform, clock, timedelta(milliseconds=100), limit=300)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    asyncio.run(sweeper.run(interval=interval))
    assert len(gets) <= 3, len(gets)


def test_a_timer_re_armed_in_the_past_ends_with_its_interval(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The same creeping step, 1 s per re-read. `run_timers` only compares due moments
    with `until`, never the clock: a timer re-armed at a due moment already past (but
    before `until`) keeps firing after the interval ended, and the GET has no bound
    either (give_up_at only bounds waits). The run lasts as long as the step creeps
    (here 2,000 re-reads, ~33 min for a 5 min interval); in the daemon every listing
    meanwhile is skipped ("maximum number of running instances reached")."""
    gets = _creeping(platform, clock, S, limit=2000)
    sweeper = build_sweeper(platform, clock)
    interval = precise(sweeper, clock)
    report = asyncio.run(sweeper.run(interval=interval))
    assert report.finished_at is not None
    assert report.finished_at <= interval.until + LISTING_MARGIN, (
        report.finished_at - interval.until,
        len(gets),
    )


def test_precise_mode_keeps_max_concurrency_writes_in_flight(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """api.max_concurrency is "writes in flight at once". In precise mode the listing's
    zombies are written by max_concurrency workers while the timer loop fires up to
    max_concurrency more (its own semaphore): with max_concurrency 1, two writes are
    in flight together."""
    platform.add(*(record(f"z{n}", started=5 * H) for n in range(2)))
    platform.add(*(record(f"t{n}", started=2 * H - timedelta(milliseconds=1)) for n in range(2)))
    in_flight: list[int] = [0]
    peak: list[int] = [0]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method != "PATCH":
            return platform.handle(request)
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await asyncio.sleep(0.02)
            return platform.handle(request)
        finally:
            in_flight[0] -= 1

    platform.transport = lambda: httpx.MockTransport(handler)  # type: ignore[method-assign]
    sweeper = build_sweeper(platform, clock, max_concurrency=1)
    report = asyncio.run(sweeper.run(interval=precise(sweeper, clock)))
    assert report.counts["marked"] == 4, report.counts
    assert peak[0] <= 1, peak[0]
