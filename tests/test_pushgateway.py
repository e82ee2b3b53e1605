"""One-shot metrics that work where there is no textfile: a Pushgateway push at the end of the
run (Kubernetes CronJob), and textfile counters that keep counting across runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sweeper.ops import PUSH_JOB, Metrics
from sweeper.report import Result, SweepReport
from tests.e2e import Platform, sweeper, write_config
from tests.fakes import TOKEN, record

NOW = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)


class Gateway:
    """A stand-in Pushgateway on loopback: records each push (method, path, body)."""

    def __init__(self, status: int = 200) -> None:
        self.pushes: list[tuple[str, str, str]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                gateway.pushes.append((self.command, self.path, body))
                self.send_response(status)
                self.end_headers()

            do_PUT = do_POST = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="gateway")
def _gateway() -> Iterator[Gateway]:
    gateway = Gateway()
    yield gateway
    gateway.close()


def report(result: Result = Result.COMPLETED) -> SweepReport:
    return SweepReport("s", NOW, dry_run=False, finished_at=NOW, result=result)


def test_a_successful_run_replaces_the_group(gateway: Gateway) -> None:
    """PUT to /metrics/job/sweeper-once with every metric, the last success included."""
    metrics = Metrics(CollectorRegistry())
    metrics.observe_sweep(report())
    metrics.push(gateway.url)
    ((method, path, body),) = gateway.pushes
    assert (method, path) == ("PUT", f"/metrics/job/{PUSH_JOB}")
    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert values["sweeper_last_success_timestamp_seconds"] == NOW.timestamp()
    assert "sweeper_last_sweep_successful 1.0" in body


def test_a_failed_run_keeps_the_groups_last_success(gateway: Gateway) -> None:
    """POST without sweeper_last_success_timestamp_seconds: the gateway keeps the last one."""
    metrics = Metrics(CollectorRegistry())
    metrics.observe_sweep(report(Result.UNAVAILABLE))
    metrics.push(gateway.url)
    ((method, _, body),) = gateway.pushes
    assert method == "POST"
    assert "sweeper_last_success_timestamp_seconds" not in body
    assert "sweeper_last_sweep_successful 0.0" in body
    assert 'sweeper_sweeps_total{result="unavailable"} 1.0' in body
    metrics.push(gateway.url)  # the gauge is back in the registry for the next push
    assert len(gateway.pushes) == 2


def test_run_once_pushes_at_the_end(stand_in: Platform, tmp_path: Path, gateway: Gateway) -> None:
    """`run --once --push-gateway URL`: the sweep, then one push; the exit code is the sweep's."""
    stand_in.state.add(record("z0", now=datetime.now(UTC), started=timedelta(hours=5)))
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "run", "--once", "--push-gateway", gateway.url)
    assert result.code == 0, result.stderr
    ((method, path, body),) = gateway.pushes
    assert (method, path) == ("PUT", "/metrics/job/sweeper-once")
    assert 'sweeper_steps_total{outcome="marked",status="FAILED"} 1.0' in body
    assert result.named("metrics.pushed")
    assert TOKEN not in body


def test_an_unreachable_gateway_is_logged_not_fatal(stand_in: Platform, tmp_path: Path) -> None:
    """The push fails: metrics.push_failed, and the sweep's own exit code."""
    gateway = Gateway(status=500)
    try:
        config = write_config(tmp_path, stand_in.base_url)
        result = sweeper("--config", str(config), "run", "--once", "--push-gateway", gateway.url)
    finally:
        gateway.close()
    assert result.code == 0, result.stderr
    (failed,) = result.named("metrics.push_failed")
    assert failed["gateway"] == gateway.url


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--push-gateway", "http://127.0.0.1:9091"],  # only with --once
        ["run", "--once", "--push-gateway", "pushgateway:9091"],  # no scheme
        ["run", "--once", "--push-gateway", "http://gw:9091/metrics"],  # a path
    ],
)
def test_push_gateway_usage_errors(args: list[str]) -> None:
    """A wrong --push-gateway is a usage error (exit 2)."""
    result = sweeper(*args)
    assert result.code == 2
    assert "--push-gateway" in result.stderr


def test_textfile_counters_keep_counting_across_runs(tmp_path: Path) -> None:
    """Each run adds to the counts of the file it replaces, so increase() sees the runs."""
    path = tmp_path / "sweeper.prom"
    for _ in range(3):
        metrics = Metrics(CollectorRegistry())
        metrics.observe_request("GET", "200")
        metrics.observe_sweep(report())
        metrics.write_textfile(str(path))
    text = path.read_text()
    assert 'sweeper_sweeps_total{result="completed"} 3.0' in text
    assert 'sweeper_http_requests_total{method="GET",status="200"} 3.0' in text
    assert "sweeper_records_invalid_total 0.0" in text


def test_a_foreign_file_is_not_carried(tmp_path: Path) -> None:
    """A file that is not Prometheus text: this run's counts, no error."""
    path = tmp_path / "sweeper.prom"
    path.write_text("not { metrics\n")
    metrics = Metrics(CollectorRegistry())
    metrics.observe_sweep(report())
    metrics.write_textfile(str(path))
    assert 'sweeper_sweeps_total{result="completed"} 1.0' in path.read_text()


def test_last_sweep_successful_appears_with_the_first_sweep() -> None:
    """Absent before any sweep (not a false 0), then 1 or 0 by the last sweep's result."""
    metrics = Metrics(CollectorRegistry())
    assert metrics.registry.get_sample_value("sweeper_last_sweep_successful") is None
    metrics.observe_sweep(report(Result.CRASHED))
    assert metrics.registry.get_sample_value("sweeper_last_sweep_successful") == 0
    metrics.observe_sweep(report())
    assert metrics.registry.get_sample_value("sweeper_last_sweep_successful") == 1
