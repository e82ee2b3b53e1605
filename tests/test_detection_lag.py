"""The detection-lag histogram means one thing: precise marking's lag (issue 15, finding 11).

Against the real daemon, scraped: a step a timer watched cross its limit is observed;
zombies written by a periodic sweep are not (their lag is up to an interval by design).
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.e2e import Platform, free_port, signal_and_collect, start_sweeper, wait_for, write_config
from tests.fakes import record

MARKED = 'sweeper_steps_total{outcome="marked",status="FAILED"}'
LAG_COUNT = "sweeper_detection_lag_seconds_count"


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def scrape_until_marked(stand_in: Platform, tmp_path: Path, schedule: str, n: int) -> str:
    port = free_port()
    extra = f'{schedule}[sweep]\nstale_after = "2s"\n[server]\nlisten = "127.0.0.1:{port}"\n'
    proc = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    text = [""]

    def marked() -> bool:
        try:
            text[0] = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        except httpx.TransportError:
            return False
        return sample(text[0], MARKED) >= n

    try:
        wait_for(marked, timeout=60)
    finally:
        result = signal_and_collect(proc, signal.SIGTERM)
    assert result.code == 0, result.stderr
    return text[0]


def test_precise_marking_observes_the_steps_its_timers_watched(
    stand_in: Platform, tmp_path: Path
) -> None:
    """Precise mode, interval 4 s, limit 2 s: a step that started at the daemon's start
    and never beats is due within the first interval, marked by its timer, observed."""
    stand_in.state.add(record("dies", now=datetime.now(UTC), started=timedelta(0)))
    metrics = scrape_until_marked(stand_in, tmp_path, '[schedule]\ninterval = "4s"\n', 1)
    assert sample(metrics, LAG_COUNT) == 1


def test_periodic_sweeps_observe_no_detection_lag(stand_in: Platform, tmp_path: Path) -> None:
    """Periodic mode: two zombies marked by a listing, the histogram stays empty."""
    now = datetime.now(UTC)
    for i in range(2):
        stand_in.state.add(record(f"z{i}", now=now, started=timedelta(hours=5)))
    schedule = '[schedule]\ninterval = "1s"\nprecise = false\n'
    metrics = scrape_until_marked(stand_in, tmp_path, schedule, 2)
    assert sample(metrics, LAG_COUNT) == 0
