"""The daemon's alerts in a real Prometheus (Debian's, on loopback) scraping the real daemon.

In both schedule modes (precise marking, and periodic sweeps with `precise = false`),
with zombies marked: nothing is pending while daemon and platform are healthy (the
detection-lag alert included: precise marking observes its timers' small lag, periodic
sweeps observe none); a platform the daemon
cannot reach puts SweeperNoSuccessfulSweep in pending state within a minute (its
`for:` holds the page back); a daemon that is down puts SweeperDown in pending state
within a minute. Time is scaled down (an interval of seconds, a scrape and an
evaluation every second); the rules are the shipped ones, unchanged.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import Platform, environment, free_port, start_sweeper, wait_for, write_config
from tests.fakes import record
from tests.tools import ROOT, load_render, prometheus_tool

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"

pytestmark = pytest.mark.tools


def daemon_rules() -> str:
    """The sweeper-daemon group of alerts.yaml, as a rules file (what the daemon overlay ships)."""
    rule = load_render().prometheusrule(ALERTS.read_text(), "daemon")
    body = rule.split("\nspec:\n", 1)[1]
    return "\n".join(line[2:] for line in body.splitlines()) + "\n"


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def alerts(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()
        alerts: list[dict[str, Any]] = answer["data"]["alerts"]
        return alerts

    def states(self) -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in self.alerts()}

    def value(self, query: str) -> float | None:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=5)
        result = answer.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def evaluations_since(self, start: float) -> bool:
        """Has the rule group been evaluated since `start` (a Unix time)?"""
        groups = httpx.get(f"{self.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        last = groups[0]["lastEvaluation"]
        return datetime.fromisoformat(last[:26].rstrip("Z") + "+00:00").timestamp() > start


#: The zombies each mode marks. Precise marking: six steps that beat once at the start
#: and then fall silent, due 0.5 s apart over one whole interval from 15.5 s on, long
#: after the first listing; timers mark most of them (a step due close to an interval's
#: end can be left to the next listing, which marks it unwatched: seen once in 14 runs
#: with a single step). Periodic sweeps: two steps silent for hours (a listing marks them, hours
#: past their limit: the lag the alert once fired on for ever).
ZOMBIES = {"precise": 6, "periodic": 2}


@pytest.fixture(name="mode", params=sorted(ZOMBIES))
def _mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(name="watched")
def _watched(
    stand_in: Platform, tmp_path: Path, mode: str
) -> Iterator[tuple[Prometheus, subprocess.Popen[str]]]:
    """The real daemon (interval 3 s, limit 18 s) and a real Prometheus scraping it
    every second."""
    daemon_port, web_port = free_port(), free_port()
    now = datetime.now(UTC)
    for i in range(ZOMBIES[mode]):
        beat = timedelta(seconds=0.5 * i) if mode == "precise" else timedelta(hours=5)
        stand_in.state.add(record(f"z{i}", now=now, started=beat, heartbeat=beat))
    schedule = "" if mode == "precise" else "precise = false\n"
    extra = (
        f'timeout = "1s"\n[schedule]\ninterval = "3s"\n{schedule}'
        '[sweep]\ndeadline = "2s"\nstale_after = "18s"\n'
        f'[server]\nlisten = "127.0.0.1:{daemon_port}"\n'
    )
    # Found before the daemon starts: a missing Prometheus then leaves no daemon running
    # (nor its pipes to warn in a later test).
    binary = prometheus_tool("prometheus", "PROMETHEUS")
    daemon = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    rules = tmp_path / "sweeper.rules.yaml"
    rules.write_text(daemon_rules())
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n  - job_name: sweeper\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{daemon_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment(),
    )
    prometheus = Prometheus(f"http://127.0.0.1:{web_port}")

    def ready() -> bool:
        try:
            return httpx.get(f"{prometheus.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=60)
        yield prometheus, daemon
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)


def test_the_daemons_alerts_in_a_real_prometheus(
    watched: tuple[Prometheus, subprocess.Popen[str]], stand_in: Platform, mode: str
) -> None:
    """Healthy, zombies marked: nothing pending. Platform unreachable: pending within a
    minute. Daemon down: SweeperDown pending within a minute."""
    prometheus, daemon = watched
    # Healthy: the zombies marked and three sweeps scraped, the rules evaluated after that.
    marked = 'sweeper_steps_total{outcome="marked",status="FAILED"}'
    wait_for(lambda: (prometheus.value(marked) or 0) >= ZOMBIES[mode], 90)
    wait_for(lambda: (prometheus.value('sweeper_sweeps_total{result="completed"}') or 0) >= 3, 60)
    seen = time.time()
    wait_for(lambda: prometheus.evaluations_since(seen + 2), 60)
    assert prometheus.alerts() == []
    # What the detection-lag alert was judged on: the timers' marks, or nothing at all.
    observed = prometheus.value("sweeper_detection_lag_seconds_count") or 0
    assert (observed >= 1) if mode == "precise" else (observed == 0), observed

    # The platform stops answering: every request fails.
    stand_in.faults.error_rate = 1.0
    failed_at = time.monotonic()
    wait_for(lambda: prometheus.states().get("SweeperNoSuccessfulSweep") == "pending", 60)
    assert time.monotonic() - failed_at < 60
    assert prometheus.states()["SweeperNoSuccessfulSweep"] == "pending"  # not firing: for:

    # The daemon goes away.
    stand_in.faults.error_rate = 0.0
    daemon.send_signal(signal.SIGTERM)
    daemon.communicate(timeout=30)
    down_at = time.monotonic()
    wait_for(lambda: prometheus.states().get("SweeperDown") == "pending", 60)
    assert time.monotonic() - down_at < 60
