"""Metrics, health and readiness, scraped through the real endpoint; systemd notify."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sweeper.notify import SystemdNotifier
from sweeper.ops import Health, Metrics, OpsServer, wsgi_app
from sweeper.report import Outcome, Result, StepEntry, SweepReport
from tests.fakes import NOW, FakeClock


def report(clock: FakeClock, result: Result = Result.COMPLETED) -> SweepReport:
    r = SweepReport("sweep-1", clock() - timedelta(seconds=3), dry_run=False, result=result)
    r.finished_at = clock()
    r.counts.update(zombies=3, invalid=2)
    r.entries += [
        StepEntry("a", "org", Outcome.MARKED, status="FAILED", lagSeconds=0.4, watched=True),
        # A backlog a listing wrote: it has a lag, but no timer watched it cross.
        StepEntry("b", "org", Outcome.MARKED, status="CANCELLED", lagSeconds=300.0),
        StepEntry("c", "org", Outcome.SKIPPED, reason="finished", status="FAILED"),
    ]
    return r


@pytest.fixture(name="state")
def _state() -> dict[str, object]:
    return {"running": True, "last": None}


@pytest.fixture(name="served")
def _served(
    clock: FakeClock, state: dict[str, object]
) -> Iterator[tuple[str, Metrics, dict[str, object]]]:
    metrics = Metrics(CollectorRegistry())
    health = Health(
        lambda: bool(state["running"]),
        lambda: state["last"],  # type: ignore[arg-type, return-value]
        ready_within=timedelta(minutes=15),
        clock=clock,
    )
    server = OpsServer("127.0.0.1", 0, wsgi_app(metrics, health), poll_interval=0.01).start()
    yield f"http://127.0.0.1:{server.port}", metrics, state
    server.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_endpoint_serves_every_documented_metric(
    served: tuple[str, Metrics, dict[str, object]], clock: FakeClock
) -> None:
    """Sweeps by result, steps by outcome and status, duration, last success, zombies, requests."""
    url, metrics, _ = served
    metrics.observe_request("GET", "200")
    metrics.observe_request("PATCH", "503")
    metrics.observe_sweep(report(clock))
    samples = scrape(url)
    assert samples[("sweeper_sweeps_total", (("result", "completed"),))] == 1
    assert samples[("sweeper_steps_total", (("outcome", "marked"), ("status", "FAILED")))] == 1
    assert samples[("sweeper_steps_total", (("outcome", "marked"), ("status", "CANCELLED")))] == 1
    key = ("sweeper_steps_total", (("outcome", "skipped_finished"), ("status", "FAILED")))
    assert samples[key] == 1
    assert samples[("sweeper_sweep_duration_seconds_count", ())] == 1
    assert samples[("sweeper_sweep_duration_seconds_sum", ())] == 3
    assert samples[("sweeper_last_success_timestamp_seconds", ())] == NOW.timestamp()
    assert samples[("sweeper_zombies_found", ())] == 3
    # The detection lag of each marked step a timer watched, and of no other.
    assert samples[("sweeper_detection_lag_seconds_count", ())] == 1
    assert samples[("sweeper_detection_lag_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("sweeper_records_invalid_total", ())] == 2
    assert samples[("sweeper_http_requests_total", (("method", "PATCH"), ("status", "503")))] == 1


def test_a_refused_sweep_is_not_a_success(
    served: tuple[str, Metrics, dict[str, object]], clock: FakeClock
) -> None:
    """Guard refusals count by result but do not move the last-success time."""
    url, metrics, _ = served
    metrics.observe_sweep(report(clock, Result.REFUSED))
    samples = scrape(url)
    assert samples[("sweeper_sweeps_total", (("result", "refused"),))] == 1
    assert samples[("sweeper_last_success_timestamp_seconds", ())] == 0


def test_healthz_follows_the_scheduler(served: tuple[str, Metrics, dict[str, object]]) -> None:
    """/healthz is 200 while the scheduler runs, 503 after."""
    url, _, state = served
    assert httpx.get(url + "/healthz").status_code == 200
    state["running"] = False
    assert httpx.get(url + "/healthz").status_code == 503
    assert httpx.get(url + "/nope").status_code == 404


def test_readyz_needs_a_recent_successful_sweep(
    served: tuple[str, Metrics, dict[str, object]], clock: FakeClock
) -> None:
    """/readyz is 503 once the last success (or the start) is older than three intervals."""
    url, _, state = served
    assert httpx.get(url + "/readyz").status_code == 200
    clock.advance(timedelta(minutes=16))
    assert httpx.get(url + "/readyz").status_code == 503
    state["last"] = clock() - timedelta(minutes=1)
    assert httpx.get(url + "/readyz").status_code == 200
    clock.advance(timedelta(minutes=15))
    assert httpx.get(url + "/readyz").status_code == 503


def test_textfile_is_written_atomically(tmp_path: Path, clock: FakeClock) -> None:
    """The textfile export is complete Prometheus text, with no temporary file left."""
    metrics = Metrics(CollectorRegistry())
    metrics.observe_sweep(report(clock))
    target = tmp_path / "sweeper.prom"
    metrics.write_textfile(str(target))
    assert "sweeper_zombies_found 3.0" in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["sweeper.prom"]


def test_every_sweep_result_is_exposed_from_the_start(
    served: tuple[str, Metrics, dict[str, object]],
) -> None:
    """Each result of the enum has a zero series before any sweep, so increase() sees the first."""
    url, _, _ = served
    samples = scrape(url)
    for result in Result:
        assert samples[("sweeper_sweeps_total", (("result", result.value),))] == 0
    results = {dict(labels)["result"] for name, labels in samples if name == "sweeper_sweeps_total"}
    assert results == {r.value for r in Result}


def test_retries_count_by_method_and_status(
    served: tuple[str, Metrics, dict[str, object]],
) -> None:
    """observe_retry counts each retry under its method and HTTP status or error kind."""
    url, metrics, _ = served
    metrics.observe_retry("PATCH", "503")
    metrics.observe_retry("PATCH", "503")
    metrics.observe_retry("GET", "timeout")
    samples = scrape(url)
    assert samples[("sweeper_http_retries_total", (("method", "PATCH"), ("status", "503")))] == 2
    assert samples[("sweeper_http_retries_total", (("method", "GET"), ("status", "timeout")))] == 1


def test_reload_metrics_appear_with_the_first_load_and_keep_the_last_success(
    served: tuple[str, Metrics, dict[str, object]],
) -> None:
    """No reload series until one is observed; a failed reload is 0 and keeps the last good time."""
    url, metrics, _ = served
    assert not any(name.startswith("sweeper_config_") for name, _ in scrape(url))
    metrics.observe_reload(True, NOW)
    samples = scrape(url)
    assert samples[("sweeper_config_last_reload_successful", ())] == 1
    assert samples[("sweeper_config_last_reload_success_timestamp_seconds", ())] == NOW.timestamp()
    metrics.observe_reload(False, NOW + timedelta(minutes=5))
    samples = scrape(url)
    assert samples[("sweeper_config_last_reload_successful", ())] == 0
    assert samples[("sweeper_config_last_reload_success_timestamp_seconds", ())] == NOW.timestamp()
    metrics.observe_reload(True, NOW + timedelta(minutes=10))
    samples = scrape(url)
    assert samples[("sweeper_config_last_reload_successful", ())] == 1
    later = (NOW + timedelta(minutes=10)).timestamp()
    assert samples[("sweeper_config_last_reload_success_timestamp_seconds", ())] == later


def test_detection_lag_histogram_and_armed_timers(
    served: tuple[str, Metrics, dict[str, object]],
) -> None:
    """Lags land in buckets from 50 ms to 10 minutes; the armed-timer gauge is set as told."""
    url, metrics, _ = served
    for seconds in (0.03, 0.2, 0.9, 4.0, 700.0):
        metrics.observe_detection_lag(seconds)
    metrics.set_timers_armed(7)
    samples = scrape(url)

    def bucket(le: str) -> float:
        return samples[("sweeper_detection_lag_seconds_bucket", (("le", le),))]

    assert (bucket("0.05"), bucket("0.25"), bucket("1.0"), bucket("5.0")) == (1, 2, 3, 4)
    assert (bucket("600.0"), bucket("+Inf")) == (4, 5)
    assert samples[("sweeper_detection_lag_seconds_count", ())] == 5
    assert samples[("sweeper_timers_armed", ())] == 7
    metrics.set_timers_armed(0)
    assert scrape(url)[("sweeper_timers_armed", ())] == 0


def test_textfile_keeps_the_last_success_through_failed_runs(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A one-shot run that fails keeps the previous file's last success; a success replaces it."""
    target = tmp_path / "sweeper.prom"

    def run(result: Result) -> float:
        metrics = Metrics(CollectorRegistry())
        metrics.observe_sweep(report(clock, result))
        metrics.write_textfile(str(target))
        families = text_string_to_metric_families(target.read_text())
        [value] = [
            s.value
            for f in families
            for s in f.samples
            if s.name == "sweeper_last_success_timestamp_seconds"
        ]
        return value

    assert run(Result.REFUSED) == 0  # no earlier file: never succeeded here
    first = clock().timestamp()
    assert run(Result.COMPLETED) == first
    clock.advance(timedelta(minutes=10))
    assert run(Result.UNAVAILABLE) == first
    assert run(Result.TOKEN_REFUSED) == first
    clock.advance(timedelta(minutes=10))
    assert run(Result.COMPLETED) == clock().timestamp()
    target.write_text("not prometheus text {\n")
    assert run(Result.REFUSED) == 0  # an unreadable earlier file is no success


def test_systemd_notify_sends_datagrams(tmp_path: Path) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 arrive on $NOTIFY_SOCKET; watchdog at half."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_interval == timedelta(seconds=15)
        assert notifier.ready() and notifier.watchdog() and notifier.stopping()
        got = [listener.recv(64) for _ in range(3)]
    assert got == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_systemd_notify_is_a_no_op_elsewhere() -> None:
    """Without NOTIFY_SOCKET nothing is sent; a watchdog for another pid is not ours."""
    assert not SystemdNotifier({}).ready()
    other = SystemdNotifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    gone = SystemdNotifier({"NOTIFY_SOCKET": "/nonexistent/socket"})
    assert gone.enabled and not gone.ready()


def test_readyz_says_why_it_is_not_ready(
    served: tuple[str, Metrics, dict[str, object]], clock: FakeClock
) -> None:
    """/readyz's 503 names the reason: no success for how long, against which limit."""
    url, _, state = served
    assert httpx.get(url + "/readyz").text == "ok\n"
    clock.advance(timedelta(minutes=16))
    answer = httpx.get(url + "/readyz")
    assert answer.status_code == 503
    assert answer.text.startswith("unavailable: no sweep has succeeded since start, 16m")
    assert "more than 15m" in answer.text
    state["running"] = False
    assert httpx.get(url + "/readyz").text == "unavailable: the scheduler is not running\n"


def test_readyz_names_the_result_that_blocks_it(clock: FakeClock) -> None:
    """After a refused token, /readyz says so until a sweep succeeds."""
    health = Health(
        lambda: True,
        lambda: clock(),
        ready_within=timedelta(minutes=15),
        clock=clock,
        blocked=lambda: "token_refused",
    )
    assert health.why_not_ready() == (
        "the last sweep ended token_refused; ready again when a sweep succeeds"
    )
    assert not health.ready()


def test_build_info_carries_the_version() -> None:
    """sweeper_build_info{version} is 1, in the daemon's and the textfile's registry."""
    from sweeper import __version__

    metrics = Metrics(CollectorRegistry())
    assert metrics.registry.get_sample_value("sweeper_build_info", {"version": __version__}) == 1
