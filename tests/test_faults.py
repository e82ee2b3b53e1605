"""The fault suite: the real CLI against the stand-in platform misbehaving on purpose.

Each scenario checks what must hold afterwards: which steps were written and how
often, the exit code, and the events.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.e2e import (
    Platform,
    environment,
    signal_and_collect,
    start_sweeper,
    sweeper,
    wait_for,
    write_config,
)
from tests.fakes import record

LISTING = "/api/data-platform/workflow-run-steps"


def seed(stand_in: Platform, zombies: int, live: int = 0) -> None:
    now = datetime.now(UTC)
    for i in range(zombies):
        stand_in.state.add(record(f"z{i:03d}", now=now, started=timedelta(hours=5)))
    for i in range(live):
        stand_in.state.add(
            record(
                f"live{i:03d}", now=now, started=timedelta(hours=5), heartbeat=timedelta(seconds=10)
            )
        )


def run_once(stand_in: Platform, tmp_path: Path, extra: str = "", *args: str) -> object:
    config = write_config(tmp_path, stand_in.base_url, extra)
    return sweeper("--config", str(config), "run", "--once", *args)


def patched(stand_in: Platform) -> Counter[str]:
    return Counter(p.step_id for p in stand_in.state.patches)


# -- the platform down, slow, broken ------------------------------------------


def test_down_in_the_middle_of_the_listing(stand_in: Platform, tmp_path: Path) -> None:
    """Page 2 fails after every try: nothing is written (the guard needs every page), exit 75."""
    seed(stand_in, 6)

    async def fail_page_two(request: Request) -> Response | None:
        if request.url.path == LISTING and "cursor" in request.query_params:
            return Response(status_code=503)
        return None

    stand_in.hooks.append(fail_page_two)
    result = run_once(stand_in, tmp_path, "max_attempts = 2\n[sweep]\npage_size = 2\n")
    assert result.code == 75  # type: ignore[attr-defined]
    assert stand_in.state.patches == []


def test_down_in_the_middle_of_the_writes(stand_in: Platform, tmp_path: Path) -> None:
    """After two writes the platform fails: two marked once each, four failed, exit 1."""
    seed(stand_in, 6)

    async def fail_after_two(request: Request) -> Response | None:
        if len(stand_in.state.patches) >= 2 and request.url.path != LISTING:
            return Response(status_code=503)
        return None

    stand_in.hooks.append(fail_after_two)
    result = run_once(stand_in, tmp_path, "max_concurrency = 1\n")
    assert result.code == 1  # type: ignore[attr-defined]
    assert sorted(patched(stand_in).values()) == [1, 1]
    finished = result.named("sweep.finished")[0]  # type: ignore[attr-defined]
    assert (finished["marked"], finished["failed"]) == (2, 4)


def test_answers_slower_than_the_timeout(stand_in: Platform, tmp_path: Path) -> None:
    """Every answer later than api.timeout: the listing cannot be read, exit 75."""
    seed(stand_in, 2)
    stand_in.faults.latency = timedelta(milliseconds=400)
    result = run_once(stand_in, tmp_path, "timeout = 0.1\n")
    assert result.code == 75  # type: ignore[attr-defined]
    assert stand_in.state.patches == []


def test_connection_reset_mid_answer(tmp_path: Path) -> None:
    """The platform closes the connection halfway through the listing: exit 75."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"success": true, "da')

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    config = write_config(tmp_path, f"http://127.0.0.1:{port}", "max_attempts = 2\n")
    result = sweeper("--config", str(config), "run", "--once")
    thread.join(timeout=10)
    listener.close()
    assert result.code == 75
    assert "RemoteProtocolError" in result.named("sweep.aborted")[0]["error"]


@pytest.mark.parametrize(
    ("where", "answer", "code", "reason"),
    [
        ("listing", Response("{oops", media_type="application/json"), 75, None),
        ("listing", JSONResponse({"success": True, "data": "nope"}), 75, None),
        ("patch", Response("{oops", media_type="application/json"), 1, "invalid_answer"),
        ("patch", JSONResponse({"success": False, "data": {}}), 1, "invalid_answer"),
        ("patch", JSONResponse({"data": {}}, status_code=201), 1, "invalid_answer"),
        ("reread", Response("<html>", media_type="text/html"), 1, "invalid_answer"),
    ],
)
def test_broken_answers(
    stand_in: Platform,
    tmp_path: Path,
    where: str,
    answer: Response,
    code: int,
    reason: str | None,
) -> None:
    """Malformed JSON or a 2xx without success: true never counts as done."""
    seed(stand_in, 2)

    async def break_it(request: Request) -> Response | None:
        is_listing = request.url.path == LISTING
        if (
            (where == "listing" and is_listing)
            or (where == "patch" and request.method == "PATCH")
            or (where == "reread" and request.method == "GET" and not is_listing)
        ):
            return answer
        return None

    stand_in.hooks.append(break_it)
    result = run_once(stand_in, tmp_path)
    assert result.code == code  # type: ignore[attr-defined]
    if reason:
        failed = result.named("step.failed")  # type: ignore[attr-defined]
        assert [f["reason"] for f in failed] == [reason, reason]
    if where != "patch":
        assert stand_in.state.patches == []


def test_oversized_page_is_refused(stand_in: Platform, tmp_path: Path) -> None:
    """A listing page larger than the limit is refused, not read into memory: exit 75."""
    seed(stand_in, 1)
    huge = b'{"success": true, "data": [], "pad": "' + b"x" * (17 * 1024 * 1024) + b'"}'

    async def oversized(request: Request) -> Response | None:
        if request.url.path == LISTING:
            return Response(huge, media_type="application/json")
        return None

    stand_in.hooks.append(oversized)
    result = run_once(stand_in, tmp_path)
    assert result.code == 75  # type: ignore[attr-defined]
    assert "refused unread" in result.named("sweep.aborted")[0]["error"]  # type: ignore[attr-defined]


def test_storm_of_429_with_retry_after(stand_in: Platform, tmp_path: Path) -> None:
    """Half the answers are 429/503 (Retry-After: 0): every zombie marked exactly once, exit 0."""
    seed(stand_in, 20, live=5)
    stand_in.faults.error_rate = 0.5
    stand_in.faults.retry_after_seconds = 0
    # 503s carry no Retry-After: with no backoff the test spends no real time waiting.
    extra = "max_attempts = 30\nretry_backoff = 0\n"
    config = write_config(tmp_path, stand_in.base_url, extra)
    result = sweeper("--config", str(config), "run", "--once")
    assert result.code == 0, result.stderr
    assert set(patched(stand_in).values()) == {1}
    assert len(patched(stand_in)) == 20
    assert stand_in.counters.faults > 0


def test_missing_date_header_is_warned_once(stand_in: Platform, tmp_path: Path) -> None:
    """Without a Date header skew cannot be checked: one warning, and the sweep goes on."""
    seed(stand_in, 3)
    stand_in.faults.send_date = False
    result = run_once(stand_in, tmp_path)
    assert result.code == 0  # type: ignore[attr-defined]
    assert len(result.named("platform.date_missing")) == 1  # type: ignore[attr-defined]
    assert len(stand_in.state.patches) == 3


def test_platform_clock_jumps_mid_sweep(stand_in: Platform, tmp_path: Path) -> None:
    """The platform's clock jumps an hour after two writes: no further write, exit 3."""
    seed(stand_in, 8)

    async def jump(request: Request) -> Response | None:
        if len(stand_in.state.patches) >= 2:
            stand_in.faults.clock_skew = timedelta(hours=1)
        return None

    stand_in.hooks.append(jump)
    result = run_once(stand_in, tmp_path, "max_concurrency = 1\n")
    assert result.code == 3  # type: ignore[attr-defined]
    assert len(stand_in.state.patches) == 2
    assert result.named("sweep.refused")[0]["guard"] == "clock_skew"  # type: ignore[attr-defined]


# -- signals ---------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("mode", ["once", "daemon"])
@pytest.mark.parametrize("phase", ["listing", "writes"])
def test_signal_in_each_phase(
    stand_in: Platform, tmp_path: Path, signum: int, mode: str, phase: str
) -> None:
    """No write starts after the signal; writes in flight complete; 75 once, 0 daemon.

    (The guards run between the last page and the first write without yielding to
    the event loop, so a signal there is seen at the first write: the writes case.)
    """
    seed(stand_in, 20)
    stand_in.faults.latency = timedelta(milliseconds=80)
    extra = (
        "max_concurrency = 3\n[sweep]\npage_size = 1\n"
        if phase == "listing"
        else ("max_concurrency = 3\n")
    )
    if mode == "daemon":
        # A daemon forgives the time before its first answer but half a limit (outage
        # grace): with a limit of 2 s, the listing a second later finds every zombie.
        if phase == "writes":
            extra += '[sweep]\nstale_after = "2s"\n'
        extra += '[schedule]\ninterval = "1s"\nprecise = false\n'
    config = write_config(tmp_path, stand_in.base_url, extra)
    args = ["--config", str(config), "run"] + (["--once"] if mode == "once" else [])
    proc = start_sweeper(*args)
    if phase == "listing":
        wait_for(lambda: len(stand_in.arrivals("GET")) >= 3)
    else:
        wait_for(lambda: len(stand_in.state.patches) >= 2)
    arrived_before = len(stand_in.arrivals("PATCH"))
    result = signal_and_collect(proc, signum)
    assert result.code == (75 if mode == "once" else 0)
    sent = stand_in.arrivals("PATCH")
    # Only the (at most 3) writes in flight at the signal may arrive after it...
    assert len(sent) <= arrived_before + 3
    # ...and each write sent was completed; the rest were never started.
    assert len(stand_in.state.patches) == len(sent)
    finished = result.named("sweep.finished")[-1]
    assert finished["marked"] == len(sent)
    assert finished["skipped_shutdown"] == (0 if phase == "listing" else 20 - len(sent))
    if phase == "listing":
        assert sent == []
    assert finished["result"] == "interrupted"


def test_sigkill_then_restart_finishes_the_job(stand_in: Platform, tmp_path: Path) -> None:
    """Killed mid-writes, then run again: every zombie marked once, no live step touched."""
    seed(stand_in, 30, live=5)
    stand_in.faults.latency = timedelta(milliseconds=100)
    config = write_config(tmp_path, stand_in.base_url, "max_concurrency = 3\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "--config", str(config), "run", "--once"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
    )
    wait_for(lambda: len(stand_in.state.patches) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    first = len(stand_in.state.patches)
    assert first < 30
    stand_in.faults.latency = timedelta(0)
    again = sweeper("--config", str(config), "run", "--once")
    assert again.code == 0
    counts = patched(stand_in)
    assert len(counts) == 30 and set(counts.values()) == {1}
    assert all(not k.startswith("live") for k in counts)
    statuses = Counter(s["status"] for s in stand_in.state.steps.values())
    assert statuses == {"FAILED": 30, "RUNNING": 5}


def test_steps_that_change_during_the_sweep_keep_their_state(
    stand_in: Platform, tmp_path: Path
) -> None:
    """Finished or heartbeating after the listing: left alone; the others marked."""
    seed(stand_in, 6)
    now = datetime.now(UTC)

    async def race(request: Request) -> Response | None:
        # After the listing, before the re-reads: z001's worker finishes, z002's beats again.
        if request.method == "GET" and request.url.path != LISTING:
            stand_in.state.update("z001", status="SUCCEEDED")
            stand_in.state.update("z002", lastHeartbeatAt=now.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        return None

    stand_in.hooks.append(race)
    result = run_once(stand_in, tmp_path)
    assert result.code == 0  # type: ignore[attr-defined]
    assert "z001" not in patched(stand_in) and "z002" not in patched(stand_in)
    assert stand_in.state.steps["z001"]["status"] == "SUCCEEDED"
    reasons = {e["step_id"]: e["reason"] for e in result.named("step.skipped")}  # type: ignore[attr-defined]
    assert reasons == {"z001": "finished", "z002": "alive"}
