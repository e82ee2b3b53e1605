"""Outage grace through the real daemon: it keeps watching, and trusts nothing from
before its first answer."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response

from sweeper.model import format_timestamp
from tests.e2e import Platform, signal_and_collect, start_sweeper, wait_for, write_config
from tests.fakes import record


def test_a_quiet_daemon_probes_the_platform(stand_in: Platform, tmp_path: Path) -> None:
    """Nothing to do for an hour, a limit of 2 s: the daemon still asks every ~1/16 s
    (half the gap of outage grace), with a listing that finds nothing by design."""
    probes: list[str] = []

    async def watch(request: Request) -> Response | None:
        if request.query_params.get("startedBefore", "").startswith("1970-01-01"):
            probes.append(request.query_params["limit"])
        return None

    stand_in.hooks.append(watch)
    extra = '[schedule]\ninterval = "1h"\n[sweep]\nstale_after = "2s"\n'
    proc = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    try:
        wait_for(lambda: len(probes) >= 5)
    finally:
        result = signal_and_collect(proc, signal.SIGTERM)
    assert result.code == 0, result.stderr
    assert set(probes) == {"1"}


def test_a_hung_probe_does_not_stop_the_watch(stand_in: Platform, tmp_path: Path) -> None:
    """The first probe gets no answer for 40 s (api.timeout 60 s, a limit of 2 s): the
    daemon does not wait for it; the next probes go out half a gap later all the same
    (a daemon that waited would send none within the 35 s this waits), so one hung
    request among answers is a single failure, not a silence."""
    import asyncio

    probes: list[int] = []

    async def hang_the_first(request: Request) -> Response | None:
        if request.query_params.get("startedBefore", "").startswith("1970-01-01"):
            probes.append(1)
            if len(probes) == 1:
                await asyncio.sleep(40)
        return None

    stand_in.hooks.append(hang_the_first)
    extra = 'timeout = "60s"\n[schedule]\ninterval = "1h"\n[sweep]\nstale_after = "2s"\n'
    proc = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    try:
        wait_for(lambda: len(probes) >= 6, timeout=35)  # while the first still hangs (40 s)
    finally:
        result = signal_and_collect(proc, signal.SIGTERM)
    assert result.code == 0, result.stderr


def test_a_daemon_started_during_an_outage_marks_no_live_step(
    stand_in: Platform, tmp_path: Path
) -> None:
    """Finding 2: the platform is down when the daemon starts; the worker's last beat is
    from before. The worker beats again just after recovery: it is not marked; a step
    whose worker is dead is, a little later."""
    now = datetime.now(UTC)
    stand_in.state.add(
        record("live", now=now, started=timedelta(hours=2), heartbeat=timedelta(minutes=30))
    )
    stand_in.state.add(
        record("dead", now=now, started=timedelta(hours=2), heartbeat=timedelta(minutes=30))
    )
    down = [True]
    failed: list[int] = []
    answered: list[int] = []

    async def outage(request: Request) -> Response | None:
        if down[0]:
            failed.append(1)
            return Response(status_code=503)
        answered.append(1)
        if len(answered) >= 2:  # the worker is back just after the platform
            beat = format_timestamp(datetime.now(UTC))
            stand_in.state.steps["live"]["lastHeartbeatAt"] = beat
        return None

    stand_in.hooks.append(outage)
    extra = 'max_attempts = 2\n[schedule]\ninterval = "1s"\n[sweep]\nstale_after = "2s"\n'
    proc = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    try:
        wait_for(lambda: len(failed) >= 2)
        down[0] = False
        wait_for(lambda: any(p.step_id == "dead" for p in stand_in.state.patches))
        wait_for(lambda: len(answered) >= 60)  # some 4 limits of answers after recovery
    finally:
        result = signal_and_collect(proc, signal.SIGTERM)
    assert result.code == 0, result.stderr
    assert [p.step_id for p in stand_in.state.patches] == ["dead"]
    assert stand_in.state.steps["live"]["status"] == "RUNNING"


@pytest.mark.parametrize(
    ("base_url", "forgotten"),
    [("https://other.test", True), ("https://p.test", False)],
    ids=["another-platform", "same-platform"],
)
def test_a_reload_to_another_base_url_starts_a_fresh_outage_memory(
    tmp_path: Path, base_url: str, forgotten: bool
) -> None:
    """Outage memory is about one platform: a reload to another api.base_url knows
    nothing of the new one's outages, as at a start (everything before its first answer
    is unknown, less the last half limit). Another change keeps the memory."""
    import asyncio

    from sweeper.daemon import Daemon
    from sweeper.logs import Redactor
    from sweeper.settings import load_settings

    config = tmp_path / "c.toml"
    body = '[api]\nbase_url = "{url}"\ntoken = "t0ken-value"\n[sweep]\nstale_after = "{limit}"\n'
    config.write_text(body.format(url="https://p.test", limit="10h"))
    settings, _ = load_settings(config, environ={})

    async def scenario() -> timedelta:
        daemon = Daemon(settings, Redactor(), config_path=config, overrides={}, environ={})
        daemon.generation = daemon.build_generation(settings)
        for status in ("200", "503", "503", "200"):  # known: up, then a run of failures
            daemon.outages.observe("GET", status)
        config.write_text(body.format(url=base_url, limit="9h"))
        assert daemon.reload("SIGHUP")
        _, work = daemon.new_sweep()
        work.close()  # type: ignore[attr-defined]
        now = daemon._platform_now()
        return daemon.outages.windows().overlap(now - timedelta(hours=1), now)

    # Before any answer of its own, all of the past is unknown: the last hour is forgiven.
    # Remembered: the hour is known up (the run of failures took microseconds).
    forgiven = asyncio.run(scenario())
    assert (forgiven > timedelta(minutes=59)) is forgotten, forgiven
