"""What an operator sees of a running daemon: its version, its stops, a refused token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sweeper import __version__
from sweeper.daemon import status_line
from sweeper.report import Result, SweepReport
from tests.e2e import Platform, signal_and_collect, start_sweeper, sweeper, wait_for, write_config
from tests.fakes import TOKEN, record


def test_the_daemon_logs_its_version_and_a_routine_stop_at_info(
    stand_in: Platform, tmp_path: Path
) -> None:
    """daemon.started carries the version; SIGTERM is shutdown.requested at info, not warning."""
    config = write_config(tmp_path, stand_in.base_url, '[schedule]\ninterval = "1h"\n')
    proc = start_sweeper("--config", str(config), "run")
    wait_for(lambda: stand_in.counters.requests >= 1)
    result = signal_and_collect(proc)
    assert result.code == 0, result.stderr
    (started,) = result.named("daemon.started")
    assert started["version"] == __version__
    (stop,) = result.named("shutdown.requested")
    assert (stop["level"], stop["signal"]) == ("info", "SIGTERM")


def test_a_refused_token_names_where_it_came_from(stand_in: Platform, tmp_path: Path) -> None:
    """sweep.aborted result=token_refused says which file held the token (never the token)."""
    config = write_config(tmp_path, stand_in.base_url, token="not-the-token")
    result = sweeper("--config", str(config), "run", "--once")
    assert result.code == 77
    (aborted,) = result.named("sweep.aborted")
    assert aborted["token_source"] == f"the file {(tmp_path / 'api-token').resolve()}"
    assert "not-the-token" not in result.stderr


def test_a_replaced_token_sweeps_at_once(stand_in: Platform, tmp_path: Path) -> None:
    """After a refusal, a new token in the file is noticed and swept with at once, not an
    interval (here an hour) later. (A limit of 2 s: outage grace forgives the time before
    the daemon's first answer but half a limit.)"""
    stand_in.state.add(record("z0", now=datetime.now(UTC), started=timedelta(hours=5)))
    extra = '[schedule]\ninterval = "1h"\n[sweep]\nstale_after = "2s"\n'
    config = write_config(tmp_path, stand_in.base_url, extra, token="not-the-token")
    proc = start_sweeper("--config", str(config), "run")
    try:
        wait_for(lambda: stand_in.counters.requests >= 1)  # the refused listing
        (tmp_path / "api-token").write_text(TOKEN + "\n")
        wait_for(lambda: len(stand_in.state.patches) == 1, timeout=60)
    finally:
        result = signal_and_collect(proc)
    assert result.code == 0, result.stderr
    assert result.named("config.reloaded")[0]["changed"] == ["api.token"]
    assert [e["result"] for e in result.named("sweep.aborted")] == ["token_refused"]


def test_status_line_sums_up_the_last_sweep() -> None:
    """STATUS= for `systemctl status`: result, time, zombies, marked, failed."""
    at = datetime(2026, 12, 1, 21, 5, 9, tzinfo=UTC)
    report = SweepReport("s", at, dry_run=False, finished_at=at, result=Result.UNAVAILABLE)
    report.counts.update(zombies=4, marked=3, failed=1)
    assert status_line(report) == (
        "last sweep unavailable at 21:05:09Z: 4 zombies, 3 marked, 1 failed"
    )
