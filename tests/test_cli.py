"""The real CLI against the stand-in platform: every exit code, signals, and no token leaks."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.e2e import (
    NOWHERE,
    Platform,
    signal_and_collect,
    start_sweeper,
    sweeper,
    wait_for,
    write_config,
)
from tests.fakes import TOKEN, record


def seed_zombies(stand_in: Platform, n: int, prefix: str = "z") -> None:
    now = datetime.now(UTC)
    for i in range(n):
        stand_in.state.add(record(f"{prefix}{i:03d}", now=now, started=timedelta(hours=5)))


def test_exit_0_marks_zombies_and_logs_json(stand_in: Platform, tmp_path: Path) -> None:
    """A clean sweep: zombies FAILED, live steps untouched, JSON events, report, exit 0."""
    stand_in.state.seed(zombies=6, live=3, seed=1)
    config = write_config(tmp_path, stand_in.base_url)
    report = tmp_path / "report.json"
    result = sweeper("--config", str(config), "run", "--once", "--report", str(report))
    assert result.code == 0, result.stderr
    statuses = [s["status"] for s in stand_in.state.steps.values()]
    assert statuses.count("RUNNING") == 3
    assert len(stand_in.state.patches) == 6
    for event in result.events:
        assert {"timestamp", "level", "event"} <= event.keys()
        assert event["timestamp"].endswith("Z")
    assert len(result.named("step.marked")) == 6
    data = json.loads(report.read_text())
    assert data["summary"]["exitCode"] == 0
    assert len(data["steps"]) == 6


def test_python_dash_m_and_console_script_are_the_same_program() -> None:
    """`sweeper --version` and `python -m sweeper --version` agree."""
    import subprocess
    import sys

    from sweeper import __version__

    out = subprocess.run(
        [sys.executable, "-m", "sweeper", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"sweeper {__version__}"
    script = Path(sys.executable).parent / "sweeper"
    out2 = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out2.stdout == out.stdout


def test_exit_1_when_a_step_is_refused(stand_in: Platform, tmp_path: Path) -> None:
    """One write refused with 400: the others are marked, exit 1, step.failed logged."""
    seed_zombies(stand_in, 3)

    async def refuse_one(request: Request) -> Response | None:
        if request.method == "PATCH" and request.url.path.endswith("/z001"):
            return JSONResponse({"success": False, "error": {"message": "bad"}}, status_code=400)
        return None

    stand_in.hooks.append(refuse_one)
    result = sweeper("--config", str(write_config(tmp_path, stand_in.base_url)), "run", "--once")
    assert result.code == 1
    (failed,) = result.named("step.failed")
    assert (failed["step_id"], failed["reason"], failed["http_status"]) == ("z001", "rejected", 400)
    assert len(result.named("step.marked")) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--bogus"],
        ["mark", "s1"],  # --org is required
        ["mark", "s1", "--org", "o", "--status", "SUCCEEDED"],
        ["mark", "s1", "--org", "o", "--error-code", "X" * 65],
        ["run", "--max-steps", "-1"],
        ["run", "--metrics-file", "/tmp/m.prom"],  # only with --once
        ["run", "--report", "/tmp/r.json"],  # only with --once: the daemon runs many sweeps
        ["run", "--dry-run", "--report", "/tmp/r.json"],
        ["run", "--token", TOKEN],  # the token is never a flag
        ["mark", "s1", "--org", "o", "--message", "{idle.x}"],  # the configuration's rule
        ["mark", "s1", "--org", "o", "--message", "{idle:>999999999}"],
        ["mark", "s1", "--org", "o", "--message", "{nope}"],
        [],
    ],
)
def test_exit_2_on_wrong_usage(args: list[str]) -> None:
    """Command-line mistakes exit 2 with argparse's message, before anything else."""
    result = sweeper(*args)
    assert result.code == 2
    assert "usage:" in result.stderr
    assert TOKEN not in result.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["run", "--once", "--report", "/nonexistent-dir/report.json"], "(ENOENT)"),
        (["run", "--once", "--metrics-file", "/nonexistent-dir/sweeper.prom"], "(ENOENT)"),
        (["run", "--once", "--report", "/"], "/ is a directory"),
        (["mark", "s1", "--org", "o", "--report", "/proc/nope/x.json"], "(ENOENT)"),
    ],
)
def test_exit_78_when_an_output_file_cannot_be_written(args: list[str], reason: str) -> None:
    """A --report or --metrics-file that cannot be written: exit 78 with the path and errno,
    before the sweep, no usage banner."""
    result = sweeper(*args)
    assert result.code == 78, result.stderr
    (invalid,) = result.named("config.invalid")
    assert reason in invalid["error"]
    assert invalid["error"].startswith("--")
    assert "usage:" not in result.stderr


@pytest.mark.parametrize("flag", ["--report", "--metrics-file"])
def test_daemon_refuses_a_one_sweep_output_file(flag: str, tmp_path: Path) -> None:
    """run without --once refuses --report and --metrics-file by name, writing nothing."""
    target = tmp_path / "out"
    result = sweeper("run", flag, str(target))
    assert result.code == 2
    assert f"{flag} goes with --once" in result.stderr
    assert not target.exists()


def test_exit_3_when_too_many_zombies(stand_in: Platform, tmp_path: Path) -> None:
    """--max-steps lower than the zombies found: nothing written, exit 3."""
    seed_zombies(stand_in, 5)
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "run", "--once", "--max-steps", "4")
    assert result.code == 3
    assert stand_in.state.patches == []
    (refused,) = result.named("sweep.refused")
    assert refused["guard"] == "max_steps"


def test_exit_3_on_clock_skew(stand_in: Platform, tmp_path: Path) -> None:
    """The platform's clock 10 minutes behind: nothing written, exit 3."""
    seed_zombies(stand_in, 2)
    stand_in.faults.clock_skew = timedelta(minutes=-10)
    result = sweeper("--config", str(write_config(tmp_path, stand_in.base_url)), "run", "--once")
    assert result.code == 3
    assert stand_in.state.patches == []
    assert result.named("sweep.refused")[0]["guard"] == "clock_skew"


def test_exit_75_when_the_platform_is_unreachable(tmp_path: Path) -> None:
    """Nothing listening on the port: exit 75 after all tries."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path, f"http://127.0.0.1:{port}")
    result = sweeper("--config", str(config), "run", "--once")
    assert result.code == 75
    assert result.named("sweep.aborted")[0]["result"] == "unavailable"


def test_exit_75_when_sigterm_stops_a_once_run(stand_in: Platform, tmp_path: Path) -> None:
    """SIGTERM mid-writes: the writes in flight complete, none starts after, exit 75."""
    seed_zombies(stand_in, 30)
    stand_in.faults.latency = timedelta(milliseconds=150)
    config = write_config(tmp_path, stand_in.base_url, "max_concurrency = 3\n")
    proc = start_sweeper("--config", str(config), "run", "--once")
    wait_for(lambda: len(stand_in.state.patches) >= 2)
    arrived_before = len(stand_in.arrivals("PATCH"))
    result = signal_and_collect(proc)
    assert result.code == 75
    sent = stand_in.arrivals("PATCH")
    # At most the 3 writes in flight when the signal came can arrive after it.
    assert len(sent) <= arrived_before + 3
    assert len(stand_in.state.patches) == len(sent) < 30  # every write sent was completed
    finished = result.named("sweep.finished")[0]
    assert finished["result"] == "interrupted"
    assert finished["marked"] == len(sent)
    assert finished["skipped_shutdown"] == 30 - len(sent)


def test_daemon_stops_cleanly_on_sigterm(stand_in: Platform, tmp_path: Path) -> None:
    """The daemon marks from its start; SIGINT mid-writes finishes in-flight writes, exits 0.

    (Outage grace forgives the time before the daemon's first answer but half a limit:
    with a limit of 2 s, the timers mark the zombies a second after the first listing.)"""
    seed_zombies(stand_in, 30)
    stand_in.faults.latency = timedelta(milliseconds=150)
    extra = '[schedule]\ninterval = "1h"\n[sweep]\nstale_after = "2s"\n'
    config = write_config(tmp_path, stand_in.base_url, extra).read_text()
    config = config.replace("[api]", "[api]").replace(
        'timeout = "5s"', 'timeout = "5s"\nmax_concurrency = 2'
    )
    path = tmp_path / "daemon.toml"
    path.write_text(config)
    path.chmod(0o600)
    proc = start_sweeper("--config", str(path), "run")
    wait_for(lambda: len(stand_in.state.patches) >= 2)
    arrived_before = len(stand_in.arrivals("PATCH"))
    result = signal_and_collect(proc, signal.SIGINT)
    assert result.code == 0
    assert len(stand_in.arrivals("PATCH")) <= arrived_before + 2  # max_concurrency = 2
    assert len(stand_in.state.patches) == len(stand_in.arrivals("PATCH"))
    assert result.named("sweep.finished")[0]["result"] == "interrupted"
    assert result.named("daemon.stopped")[0]["sweeps"] == 1


def test_daemon_survives_a_failed_sweep(stand_in: Platform, tmp_path: Path) -> None:
    """A sweep that cannot reach the platform is logged; the daemon keeps running."""
    stand_in.faults.error_rate = 1.0
    config = write_config(tmp_path, stand_in.base_url, '[schedule]\ninterval = "1h"\n')
    proc = start_sweeper("--config", str(config), "run")
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # read until the failed sweep has ended
        seen.append(line)
        if '"sweep.finished"' in line:
            break
    result = signal_and_collect(proc)
    # A daemon that died with its sweep would not exit 0 nor log daemon.stopped.
    assert result.code == 0
    assert '"result": "unavailable"' in seen[-1]
    assert result.named("daemon.stopped")[0]["sweeps"] == 1


def test_exit_77_when_the_token_is_refused(stand_in: Platform, tmp_path: Path) -> None:
    """A wrong token: one request, exit 77."""
    seed_zombies(stand_in, 3)
    config = write_config(tmp_path, stand_in.base_url, token="not-the-token")
    result = sweeper("--config", str(config), "run", "--once")
    assert result.code == 77
    assert stand_in.counters.requests == 1


def test_a_gateways_403_page_is_the_platform_away_not_a_refused_token(
    stand_in: Platform, tmp_path: Path
) -> None:
    """A 403 HTML page from a firewall in front of the platform is no token refusal: the
    listing is tried again (api.max_attempts) and the run ends unavailable (75), not 77."""
    seed_zombies(stand_in, 3)

    async def firewall(request: Request) -> Response | None:
        page = "<html><body><h1>403 Forbidden</h1>blocked by policy</body></html>"
        return Response(page, status_code=403, media_type="text/html")

    stand_in.hooks.append(firewall)
    extra = "max_attempts = 3\nretry_backoff = 0.01\nretry_backoff_max = 0.01\n"
    config = write_config(tmp_path, stand_in.base_url, extra)
    result = sweeper("--config", str(config), "run", "--once", "--report", str(tmp_path / "r.json"))
    assert result.code == 75
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["result"] == "unavailable"
    assert stand_in.counters.by_method.get("GET", 0) == 3  # tried again: nothing latched
    assert stand_in.counters.by_method.get("PATCH", 0) == 0


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("bogus = 1\n", "api.bogus"),
        ('[sweep]\nstale_after = "forever"\n', "sweep.stale_after"),
        ('[schedule]\ninterval = "5m"\ncron = "* * * * *"\n', "schedule.interval"),
        ('[sweep]\nerror_code = "' + "E" * 65 + '"\n', "sweep.error_code"),
    ],
)
def test_exit_78_on_bad_configuration(
    stand_in: Platform, tmp_path: Path, extra: str, key: str
) -> None:
    """An invalid configuration exits 78, names the key, and calls no platform."""
    config = write_config(tmp_path, stand_in.base_url, extra)
    for command in (["run", "--once"], ["run"], ["check-config"], ["mark", "s", "--org", "o"]):
        result = sweeper("--config", str(config), *command)
        assert result.code == 78, command
        (invalid,) = result.named("config.invalid")
        assert key in invalid["error"]
    assert stand_in.counters.requests == 0


def test_exit_78_when_the_config_file_is_missing(tmp_path: Path) -> None:
    """--config pointing nowhere is a configuration error."""
    result = sweeper("--config", str(tmp_path / "nope.toml"), "run", "--once")
    assert result.code == 78
    assert "does not exist" in result.named("config.invalid")[0]["error"]


def test_check_config_prints_settings_without_the_token(tmp_path: Path) -> None:
    """check-config prints the effective settings as JSON, token redacted, exit 0."""
    config = write_config(tmp_path, "https://platform.example.test")
    config.write_text(config.read_text().replace("token_file", "# token_file"))
    from tests.e2e import environment

    result = sweeper(
        "--config", str(config), "check-config", env=environment(SWEEPER_API__TOKEN=TOKEN)
    )
    assert result.code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["api"]["token"] == "**********"
    assert shown["sweep"]["stale_after"] == "2h"
    assert TOKEN not in result.stdout + result.stderr


def test_mark_by_hand(stand_in: Platform, tmp_path: Path) -> None:
    """`mark` writes one RUNNING step with the given status, code and message."""
    now = datetime.now(UTC)
    stand_in.state.add(record("one/two", org="org-x", now=now, started=timedelta(minutes=3)))
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper(
        "--config",
        str(config),
        "mark",
        "one/two",
        "--org",
        "org-x",
        "--status",
        "CANCELLED",
        "--error-code",
        "OPS_CANCELLED",
        "--message",
        "stuck since {idle}",
        "--force",  # 3 minutes idle is within the default 2h
    )
    assert result.code == 0, result.stderr
    step = stand_in.state.steps["one/two"]
    assert (step["status"], step["errorCode"]) == ("CANCELLED", "OPS_CANCELLED")
    assert step["errorMessage"].startswith("stuck since 3m")
    again = sweeper("--config", str(config), "mark", "one/two", "--org", "org-x")
    assert again.code == 1  # not marked: the operator must hear it
    assert again.named("step.skipped")[0]["reason"] == "finished"
    wrong_org = sweeper("--config", str(config), "mark", "one/two", "--org", "org-y")
    assert wrong_org.code == 1
    assert wrong_org.named("step.skipped")[0]["reason"] == "gone"


def test_mark_writes_a_step_that_still_heartbeats(stand_in: Platform, tmp_path: Path) -> None:
    """With --force, a mark is intent: a step heartbeating ahead of our clock is marked."""
    now = datetime.now(UTC)
    stand_in.state.add(record("wedged", now=now, heartbeat=-timedelta(minutes=2)))
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "mark", "wedged", "--org", "org-a", "--force")
    assert result.code == 0, result.stderr
    assert stand_in.state.steps["wedged"]["status"] == "FAILED"


def test_dry_run_flag(stand_in: Platform, tmp_path: Path) -> None:
    """--dry-run: would_mark events, no PATCH, exit 0."""
    seed_zombies(stand_in, 2)
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "run", "--once", "--dry-run")
    assert result.code == 0
    assert stand_in.counters.by_method.get("PATCH", 0) == 0
    assert len(result.named("step.would_mark")) == 2


def test_token_never_leaks_from_failing_runs(stand_in: Platform, tmp_path: Path) -> None:
    """Refused token, 500s, bad config, crashes: the token is in no output or report."""
    seed_zombies(stand_in, 3)
    outputs: list[str] = []

    async def explode(request: Request) -> Response | None:
        return Response(f"internal error for Bearer {TOKEN}", status_code=500)

    runs = [
        ("run", "--once", "--report", str(tmp_path / "r1.json")),
        ("--log-level", "debug", "run", "--once", "--report", str(tmp_path / "r2.json")),
        ("mark", "z000", "--org", "org-a"),
    ]
    stand_in.hooks.append(explode)
    for args in runs:
        result = sweeper("--config", str(write_config(tmp_path, stand_in.base_url)), *args)
        assert result.code in (1, 75)
        outputs += [result.stdout, result.stderr]
    stand_in.hooks.clear()

    async def echo_token(request: Request) -> Response | None:
        message = f"token Bearer {TOKEN} is not allowed"
        return JSONResponse({"success": False, "error": {"message": message}}, status_code=403)

    stand_in.hooks.append(echo_token)
    config = write_config(tmp_path, stand_in.base_url)
    echoed = sweeper(
        "--config", str(config), "run", "--once", "--report", str(tmp_path / "r3.json")
    )
    assert echoed.code == 77
    assert "is not allowed" in (tmp_path / "r3.json").read_text()  # the message is kept...
    outputs += [echoed.stdout, echoed.stderr]
    stand_in.hooks.clear()
    bad_token = write_config(tmp_path, stand_in.base_url, token=TOKEN + "-old")
    outputs += [sweeper("--config", str(bad_token), "--log-level", "debug", "run", "--once").stderr]
    broken = write_config(tmp_path, stand_in.base_url, 'timeout = "x"\n')
    broken.write_text(broken.read_text().replace("token_file", f'token = "{TOKEN}"\n# '))
    outputs += [sweeper("--config", str(broken), "run", "--once").stderr]
    outputs += [p.read_text() for p in tmp_path.glob("r*.json")]
    assert outputs
    everything = "\n".join(outputs)
    assert TOKEN not in everything


def test_metrics_file_after_a_once_run(stand_in: Platform, tmp_path: Path) -> None:
    """--metrics-file writes the sweep's metrics in Prometheus text format."""
    seed_zombies(stand_in, 2)
    target = tmp_path / "sweeper.prom"
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "run", "--once", "--metrics-file", str(target))
    assert result.code == 0
    text = target.read_text()
    assert 'sweeper_steps_total{outcome="marked",status="FAILED"} 2.0' in text
    assert 'sweeper_http_requests_total{method="PATCH",status="200"} 2.0' in text
    assert 'sweeper_sweeps_total{result="completed"} 1.0' in text


def test_daemon_serves_metrics_health_and_readiness(stand_in: Platform, tmp_path: Path) -> None:
    """With server.listen the daemon answers /metrics, /healthz and /readyz."""
    import socket

    import httpx

    seed_zombies(stand_in, 2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    extra = (
        '[schedule]\ninterval = "1s"\nprecise = false\n[sweep]\nstale_after = "2s"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
    )
    proc = start_sweeper("--config", str(write_config(tmp_path, stand_in.base_url, extra)), "run")
    try:
        base = f"http://127.0.0.1:{port}"
        marked = 'sweeper_steps_total{outcome="marked",status="FAILED"} 2.0'

        def swept() -> bool:
            try:
                return marked in httpx.get(base + "/metrics").text
            except httpx.TransportError:
                return False

        wait_for(swept)
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/readyz").status_code == 200
    finally:
        result = signal_and_collect(proc)
    assert result.code == 0


@pytest.mark.parametrize("host", ["[::1]", "localhost"])
def test_daemon_serves_on_ipv6_and_on_a_name(stand_in: Platform, tmp_path: Path, host: str) -> None:
    """server.listen "[::1]:PORT" (and a name) passes check-config and is served, no exit 75."""
    import socket

    import httpx

    family, bind_host = (socket.AF_INET6, "::1") if host == "[::1]" else (socket.AF_INET, host)
    with socket.socket(family) as sock:
        sock.bind((bind_host, 0))
        port = sock.getsockname()[1]
    extra = f'[schedule]\ninterval = "1h"\n[server]\nlisten = "{host}:{port}"\n'
    config = str(write_config(tmp_path, stand_in.base_url, extra))
    assert sweeper("--config", config, "check-config").code == 0
    proc = start_sweeper("--config", config, "run")
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://{host}:{port}/healthz").status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # an exit ends the wait; asserted below

        wait_for(healthy)
        assert proc.poll() is None
    finally:
        result = signal_and_collect(proc)
    assert result.code == 0
    (listening,) = result.named("server.listening")
    assert listening["listen"] == f"{host}:{port}"


def test_daemon_speaks_the_systemd_notify_protocol(stand_in: Platform, tmp_path: Path) -> None:
    """READY=1 once running, WATCHDOG=1 from the scheduler loop, STATUS= after each sweep,
    STOPPING=1 on SIGTERM."""
    import socket
    import subprocess
    import sys

    from tests.e2e import environment

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(20)
        config = write_config(tmp_path, stand_in.base_url, '[schedule]\ninterval = "1h"\n')
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000"),
        )
        received: list[bytes] = []

        def next_message() -> bytes:
            message = listener.recv(4096)
            received.append(message)
            return message

        messages = [next_message()]
        while (message := next_message()).startswith(b"STATUS="):
            pass
        messages.append(message)  # the first WATCHDOG=1
        while not any(m.startswith(b"STATUS=") for m in received):
            next_message()  # the first sweep's STATUS= line
        result = signal_and_collect(proc)
        while (message := next_message()) == b"WATCHDOG=1" or message.startswith(b"STATUS="):
            pass
        messages.append(message)
    assert messages == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]
    (status,) = [m for m in received if m.startswith(b"STATUS=")][:1]
    assert status.startswith(b"STATUS=last sweep completed at ")
    assert b"0 zombies, 0 marked, 0 failed" in status
    assert result.code == 0


def test_an_unwritable_log_stream_exits_70(tmp_path: Path) -> None:
    """A log stream that cannot be written (stderr on a full disk) ends the run with exit
    70, never Python's default 1 (which sweeper-once.service counts as success)."""
    config = write_config(tmp_path, NOWHERE)
    with open("/dev/full", "w") as full:
        done = sweeper(
            "--config", str(config), "run", "--once", "--report", str(tmp_path / "r.json"),
            stderr=full,
        )  # fmt: skip
    assert done.code == 70, done.code
