"""Outage grace through the real daemon: it keeps watching, and trusts nothing from
before its first answer."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
