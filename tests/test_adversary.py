"""Adversarial review: each test is one way an earlier main broke its contract.

Each failed when the review found it; the assertion states what operations.md /
platform-api.md / the README promise, and now holds. (Docstrings still tell what
used to happen.)
Sweeps go through the real PlatformClient over httpx.MockTransport (as in
tests/test_sweep.py and tests/test_hostile.py), or through the real CLI.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sweeper.api import STEPS_PATH, RateLimiter
from sweeper.model import StepStatus, format_timestamp
from sweeper.policy import DEFAULT_ERROR_MESSAGE, Rule, Rules
from sweeper.report import ExitCode, Outcome, Result, SweepReport
from tests.builders import build_sweeper, precise, run
from tests.e2e import (
    Platform,
    environment,
    start_daemon,
    start_sweeper,
    stop_daemon,
    wait_for,
    write_config,
)
from tests.fakes import TOKEN, FakeClock, FakePlatform, record

H = timedelta(hours=1)
M = timedelta(minutes=1)
RULES = Rules((), Rule("default", 2 * H, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE))


def date_header(clock: FakeClock, skew: timedelta = timedelta(0)) -> str:
    return email.utils.format_datetime(clock() + skew, usegmt=True)


def apply_then_lose(platform: FakePlatform, step_id: str) -> Callable[[httpx.Request], Any]:
    """The first PATCH of `step_id` is applied by the platform, and its answer lost (502)."""
    done: list[bool] = []

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and request.url.path.endswith("/" + step_id) and not done:
            done.append(True)
            platform.state.patch_step(step_id, request.content)  # applied...
            return httpx.Response(502)  # ...answer lost
        return None

    return hook


def entry_of(report: SweepReport, step_id: str) -> Any:
    (entry,) = [e for e in report.entries if e.stepId == step_id]
    return entry


def applied_by_us(platform: FakePlatform, step_id: str, report: SweepReport) -> bool:
    details = platform.state.steps[step_id].get("errorDetails") or {}
    return details.get("sweepId") == report.sweep_id


# -- (a) an applied write reported as skipped ---------------------------------------------


def test_lost_write_then_deadline_is_failed_not_skipped(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A write applied whose answer was lost, then the deadline passes during the backoff:
    the zombie is reported `skipped_deadline` ("not started"), though the platform applied it.

    Contract (README "Account"): "a write sent whose fate no answer told is `failed`,
    never `refused` or `not_attempted`" - and certainly not skipped, which claims it
    was left alone. Expected: `failed` (or `marked` after a re-read), never skipped.
    """
    random.seed(1)  # tenacity's full jitter: any backoff above 1 ms crosses the deadline
    platform.add(record("z1"))
    lose = apply_then_lose(platform, "z1")

    def slow_lost_write(request: httpx.Request) -> httpx.Response | None:
        answer = lose(request)
        if answer is not None:
            # The lost answer arrives 1 ms before the deadline (60 s after the start).
            clock.advance(timedelta(seconds=60) - timedelta(milliseconds=1))
        return answer

    platform.before.append(slow_lost_write)
    report = run(
        build_sweeper(
            platform,
            clock,
            max_attempts=5,
            sleep=clock.sleep,
            rules=RULES,
            deadline=timedelta(seconds=60),
        )
    )
    assert applied_by_us(platform, "z1", report)  # the platform applied our write
    entry = entry_of(report, "z1")
    assert entry.attempts == 1
    assert entry.outcome in (Outcome.FAILED, Outcome.MARKED), (entry.outcome, entry.reason)


def test_lost_write_then_sigterm_during_reread_is_failed_not_skipped(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A write applied whose answer was lost; its re-read before the retry gets a 503, and
    SIGTERM arrives during that re-read's backoff. The zombie is reported
    `skipped_shutdown` (README: "a zombie not started because SIGTERM/SIGINT arrived"),
    though a write was sent and applied. Expected: `failed` (fate unknown), per
    "a write sent whose fate no answer told is failed".
    """
    stop = asyncio.Event()
    platform.add(record("z1"))
    platform.before.append(apply_then_lose(platform, "z1"))
    gets = {"n": 0}

    def reread_503(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/z1"):
            gets["n"] += 1
            if gets["n"] == 2:  # the re-read before the retry
                return httpx.Response(503)
        return None

    platform.before.append(reread_503)
    sleeps = {"n": 0}

    async def sleep(seconds: float) -> None:
        sleeps["n"] += 1
        clock.advance(timedelta(seconds=seconds))
        if sleeps["n"] == 2:  # the backoff of the re-read: SIGTERM arrives
            stop.set()

    report = run(
        build_sweeper(platform, clock, max_attempts=5, rules=RULES, stop=stop, sleep=sleep)
    )
    assert applied_by_us(platform, "z1", report)
    entry = entry_of(report, "z1")
    assert entry.attempts == 1
    assert entry.outcome in (Outcome.FAILED, Outcome.MARKED), (entry.outcome, entry.reason)


# -- (c) writes after a guard fired ------------------------------------------------------


def skewed_patch_answer(
    platform: FakePlatform, clock: FakeClock, step_id: str, body: dict[str, Any]
) -> Callable[[httpx.Request], Any]:
    """The PATCH of `step_id` is answered 200 with `body` and a Date an hour ahead."""

    def hook(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and request.url.path.endswith("/" + step_id):
            answer = httpx.Response(200, json=body)
            platform.date_skew = timedelta(hours=1)  # FakePlatform stamps Date from this
            return answer
        platform.date_skew = timedelta(0)
        return None

    return hook


@pytest.mark.parametrize(
    "body",
    [
        {"success": False},  # 2xx without success: true
        {"success": True, "data": {"stepId": "z1", "status": "RUNNING"}},  # data.status wrong
    ],
    ids=["success-false", "wrong-data-status"],
)
def test_clock_skew_on_a_2xx_write_answer_that_is_not_a_success_still_refuses(
    platform: FakePlatform, clock: FakeClock, body: dict[str, Any]
) -> None:
    """A PATCH answered 2xx with a Date an hour off, whose body is not a success: the skew is
    dropped (api.py `_try_once` skips the check for PATCH 2xx and only raises
    WriteAppliedUnderSkew when classify() and `_written` succeed), so the next zombie is
    re-read and written with the platform's clock an hour away.

    Contract (operations.md, sweep.max_clock_skew): "checked on every answer";
    README: "beyond sweep.max_clock_skew ... nothing more is written, guard=clock_skew,
    exit 3". Expected: z2 is not written; result refused, exit 3.
    """
    platform.add(record("z1"), record("z2"))
    platform.before.append(skewed_patch_answer(platform, clock, "z1", body))
    report = run(
        build_sweeper(
            platform, clock, max_attempts=5, sleep=clock.sleep, rules=RULES, max_concurrency=1
        )
    )
    written = [r.url.path.rsplit("/", 1)[1] for r in platform.patches]
    assert written == ["z1"], written
    assert report.result is Result.REFUSED and report.exit_code is ExitCode.GUARD_REFUSED


def test_a_401_with_an_unreadable_date_stops_the_token(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """A write answered 401 whose Date header is not an HTTP date: `_try_once` raises the
    Date problem (InvalidAnswer) before classify() sees the 401, so the token is never
    marked refused; the step is `failed invalid_answer` and the sweep goes on sending the
    refused token (re-read and PATCH of the next zombie), ending exit 1, not 77.

    Contract (platform-api.md): 401/403 "stop the whole sweep at once"; README: "nothing
    more is sent with that token (exit 77)". Expected: one PATCH, result token_refused.
    """
    platform.add(record("z1"), record("z2"))

    def refuse(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            return httpx.Response(401, json={"success": False})
        return None

    platform.before.append(refuse)
    original = platform.handle

    def handle(request: httpx.Request) -> httpx.Response:
        response = original(request)
        if request.method == "PATCH":
            response.headers["Date"] = "yesterday-ish"
        return response

    platform.handle = handle  # type: ignore[method-assign]
    report = run(
        build_sweeper(
            platform, clock, max_attempts=5, sleep=clock.sleep, rules=RULES, max_concurrency=1
        )
    )
    sent_after_401 = platform.requests[platform.requests.index(platform.patches[0]) + 1 :]
    assert sent_after_401 == [], [f"{r.method} {r.url.path}" for r in sent_after_401]
    assert report.result is Result.TOKEN_REFUSED
    assert report.exit_code is ExitCode.TOKEN_REFUSED


# -- (e) no end within deadline + 10 s -----------------------------------------------------


def test_reread_retries_end_by_the_deadline(platform: FakePlatform, clock: FakeClock) -> None:
    """With the defaults (max_attempts 5, max_retry_after 60s), a re-read started before
    sweep.deadline that is answered 503 Retry-After: 60 retries for 4 minutes past it:
    `_call` knows no deadline, only the listing is bounded by it.

    README runbook: "sweep.deadline should end its writes"; the review brief: a sweep must
    end within deadline + 10 s. Expected: the sweep ends by deadline + 10 s.
    """
    platform.add(record("z1"))

    def busy(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/z1"):
            return httpx.Response(503, headers={"Retry-After": "60"})
        return None

    platform.before.append(busy)
    deadline = timedelta(seconds=30)
    started = clock.monotonic()
    report = run(
        build_sweeper(
            platform, clock, max_attempts=5, sleep=clock.sleep, rules=RULES, deadline=deadline
        )
    )
    elapsed = clock.monotonic() - started
    assert elapsed <= deadline.total_seconds() + 10, (elapsed, report.counts)


def test_a_low_max_rate_ends_the_sweep_by_the_deadline(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """api.max_rate accepts any value above 0 (`ge=0`): with max_rate = 0.01 the rate
    limiter makes each re-read wait 200 s for its slot, deadline or not (the limiter's wait
    is before the re-read and is never checked against sweep.deadline).

    Expected: no sweep runs past deadline + 10 s (or the value is refused at load).
    """
    platform.add(record("z1"), record("z2"), record("z3"))

    async def advancing_sleep(seconds: float) -> None:
        clock.advance(timedelta(seconds=seconds))

    limiter = RateLimiter(0.01, monotonic=clock.monotonic, sleep=advancing_sleep)
    deadline = timedelta(seconds=60)
    started = clock.monotonic()
    run(
        build_sweeper(
            platform,
            clock,
            max_attempts=5,
            sleep=clock.sleep,
            rules=RULES,
            deadline=deadline,
            limiter=limiter,
            max_concurrency=1,
        )
    )
    elapsed = clock.monotonic() - started
    assert elapsed <= deadline.total_seconds() + 10, elapsed


# -- (f) a crash where a rule exists --------------------------------------------------------


def test_a_503_with_a_superscript_retry_after_is_retried(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """`Retry-After: \\xb2` (latin-1 '²'): str.isdigit() is True but float() raises, and the
    ValueError escapes classify(): the listing's 503 - a transient answer with a rule
    (retry, honour Retry-After "seconds or HTTP date", otherwise back off) - ends the sweep
    `crashed`, exit 70. Any other unreadable Retry-After ("soon") is retried with backoff.

    Expected: retried like any 503 with an unreadable Retry-After; the sweep completes.
    """
    platform.add(record("z1"))
    calls = {"n": 0}

    def flaky_listing(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path == STEPS_PATH and calls["n"] == 0:
            calls["n"] += 1
            return httpx.Response(503, headers=[(b"Retry-After", b"\xb2")])
        return None

    platform.before.append(flaky_listing)
    report = run(build_sweeper(platform, clock, max_attempts=5, sleep=clock.sleep, rules=RULES))
    assert report.result is Result.COMPLETED, report.error
    assert report.counts["marked"] == 1


# -- the real CLI: configuration, exit codes ----------------------------------------------

SWEEPER = [sys.executable, "-m", "sweeper", "--log-format", "json"]
NOWHERE = "http://127.0.0.1:9"  # nothing listens: these runs must stop before any call


def cli(*args: str, stderr: Any = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SWEEPER, *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=60,
        env=environment(),
        check=False,
    )


def events_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_non_ascii_token_is_a_configuration_error(tmp_path: Path) -> None:
    """A token file holding `tokén` passes validation (check-config exits 0: check_token only
    refuses whitespace and control characters), then `run --once` crashes building the
    Authorization header: UnicodeEncodeError, `sweeper.crashed` with a traceback, exit 70.

    Contract (operations.md): a configuration that is wrong in any way (... "a token file
    that cannot be read") "is reported with the key's name and the reason, in one message,
    and the program exits 78 before it calls the platform". Expected: 78 from both.
    """
    config = write_config(tmp_path, NOWHERE, token="s3cr3t-tok\u00e9n")
    checked = cli("--config", str(config), "check-config")
    ran = cli("--config", str(config), "run", "--once")
    assert (checked.returncode, ran.returncode) == (78, 78), (checked.returncode, ran.stderr[-600:])


def test_a_ca_bundle_that_is_not_pem_is_a_configuration_error(tmp_path: Path) -> None:
    """`api.ca_bundle` pointing at a file that is not PEM (an empty or DER file, a ConfigMap
    caught mid-update) passes validation (only `is_file()` is checked), then `run --once`
    crashes in ssl.create_default_context: SSLError, traceback, exit 70.

    Expected (operations.md): a wrong configuration exits 78 before calling the platform.
    """
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n", encoding="utf-8")
    config = write_config(tmp_path, NOWHERE, f'ca_bundle = "{bundle}"\n')
    checked = cli("--config", str(config), "check-config")
    ran = cli("--config", str(config), "run", "--once")
    assert (checked.returncode, ran.returncode) == (78, 78), (checked.returncode, ran.stderr[-600:])


def test_a_deeply_nested_config_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A TOML file with deeply nested arrays: tomllib raises RecursionError, which
    `_read_config_file` does not catch; check-config prints a ~2,500-line traceback and
    exits 70 (printed on stdout, check-config's machine-readable output).

    README: "no value, however absurd, ends in a traceback"; operations.md: a wrong
    configuration exits 78 with `config.invalid`. Expected: exit 78, no traceback.
    """
    config = write_config(tmp_path, NOWHERE)
    with config.open("a", encoding="utf-8") as handle:
        handle.write("[sweep]\norganizations = " + "[" * 3000 + "]" * 3000 + "\n")
    done = cli("--config", str(config), "check-config")
    assert done.returncode == 78, (done.returncode, done.stdout[:300])
    # (the crash is even logged to stdout, in console format, despite --log-format json:
    # logging is not configured yet when load_settings fails this way)
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unwritable_log_stream_exits_70(tmp_path: Path) -> None:
    """stderr on a full disk (here /dev/full): the first log line raises OSError ENOSPC;
    `main`'s last-resort handler logs again, raises again, and Python exits 1 - which
    sweeper-once.service counts as success (`SuccessExitStatus=1 3`). The --report is
    not written either.

    Contract (operations.md): "no failure of the program itself may ever exit 1: an
    uncaught exception exits 70, never Python's default 1". Expected: exit 70.
    """
    config = write_config(tmp_path, NOWHERE)
    with open("/dev/full", "w") as full:
        done = cli(
            "--config", str(config), "run", "--once", "--report", str(tmp_path / "r.json"),
            stderr=full,
        )  # fmt: skip
    assert done.returncode == 70, done.returncode


# -- (h) reload ------------------------------------------------------------------------------


def test_reload_to_an_unusable_token_is_refused_and_the_old_one_kept(
    stand_in: Platform, tmp_path: Path
) -> None:
    """The token file is rewritten with a token that validation accepts but httpx cannot
    send (`tokén`). The daemon logs `config.reloaded changed=["api.token"]` (and
    sweeper_config_last_reload_successful = 1), then building the new client raises inside
    the scheduled job: APScheduler logs 'Job "sweep" raised an exception', that listing has
    no sweep.started / sweep.finished and is counted nowhere, and every later listing
    silently goes on with the OLD token while `self.settings` holds the new one (a later
    SIGHUP reports `changed: []`).

    Contract (operations.md "Reload"): "The new configuration is validated whole first: a
    wrong one is logged as config.reload_failed naming every wrong key, the one in force
    stays". Expected: config.reload_failed, no sweep lost.
    """
    config = write_config(tmp_path, stand_in.base_url, '[schedule]\ninterval = "1s"\n')
    proc, err = start_daemon(config, tmp_path)
    try:
        wait_for(lambda: '"sweep.finished"' in err.read_text())
        (tmp_path / "api-token").write_text(TOKEN + "\u00e9\n", encoding="utf-8")
        wait_for(lambda: "config.reload" in err.read_text())
        listed = err.read_text().count('"sweep.finished"')
        # A few more listings (interval 1s): events, not a clock.
        wait_for(lambda: err.read_text().count('"sweep.finished"') >= listed + 3, timeout=60)
    finally:
        stop_daemon(proc)
    events = events_of(err.read_text())
    names = [e["event"] for e in events]
    crashed_jobs = [e["event"] for e in events if "raised an exception" in e["event"]]
    assert "config.reload_failed" in names and crashed_jobs == [], (
        [e for e in events if e["event"].startswith("config.")],
        crashed_jobs,
    )


def test_sighup_with_a_deeply_nested_config_is_reported_failed(
    stand_in: Platform, tmp_path: Path
) -> None:
    """SIGHUP after the file was replaced by deeply nested TOML: RecursionError escapes
    `Daemon._reload` inside the signal callback; asyncio logs "Exception in callback
    ...hangup()" with a traceback, no `config.reload_failed` is logged, and
    sweeper_config_last_reload_successful stays 1 (SweeperConfigReloadFailed cannot fire;
    the next restart exits).

    Expected (operations.md "Reload"): `config.reload_failed` naming the problem.
    """
    config = write_config(tmp_path, stand_in.base_url, '[schedule]\ninterval = "1s"\n')
    proc, err = start_daemon(config, tmp_path)
    try:
        wait_for(lambda: '"sweep.finished"' in err.read_text())
        text = config.read_text()
        config.write_text(text + "[sweep]\norganizations = " + "[" * 3000 + "]" * 3000 + "\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "hangup" in err.read_text() or "config.reload" in err.read_text())
        listed = err.read_text().count('"sweep.finished"')
        wait_for(lambda: err.read_text().count('"sweep.finished"') > listed, timeout=60)
    finally:
        stop_daemon(proc)
    names = [e["event"] for e in events_of(err.read_text())]
    assert "config.reload_failed" in names, [n[:80] for n in names if "sweep." not in n]


# -- (g) the token in logs and reports ---------------------------------------------------------

QUOTED_TOKEN = 'ops-"tok\\en-4f9a1c'  # printable, no whitespace: check_token accepts it


def test_a_token_with_a_quote_or_backslash_is_redacted_json_escaped(tmp_path: Path) -> None:
    """The redactor replaces the token in the *rendered* line, after JSON encoding: a token
    holding `"` or `\\` appears there as `\\"` / `\\\\`, is not matched, and is written out
    (trivially reversible). Here the platform's 400 on the listing quotes the Authorization
    it received (a gateway's "bad credential" message): the `sweep.aborted` event and the
    --report's summary.error both carry the JSON-escaped token.

    Contract (platform-api.md): "The token never appears in a log line, an error message, a
    report file"; README Security: "every log line ... is scrubbed of it". Expected: neither
    stderr nor the report holds the token in any encoding.
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from sweeper.devserver.server import serve_in_thread
    from sweeper.devserver.state import PlatformState

    async def echo_credential(request: Request) -> Response | None:
        credential = request.headers.get("authorization", "")
        message = f"credential {credential.removeprefix('Bearer ')} is not valid for this API"
        return JSONResponse({"success": False, "error": {"message": message}}, status_code=400)

    server = serve_in_thread(PlatformState(), QUOTED_TOKEN, intercept=echo_credential)
    try:
        config = write_config(tmp_path, server.base_url, token=QUOTED_TOKEN)
        report = tmp_path / "report.json"
        done = cli("--config", str(config), "run", "--once", "--report", str(report))
    finally:
        server.stop()
    escaped = json.dumps(QUOTED_TOKEN)[1:-1]  # ops-\"tok\\en-4f9a1c
    leaks = {
        "stderr": escaped in done.stderr or QUOTED_TOKEN in done.stderr,
        "report": escaped in report.read_text() or QUOTED_TOKEN in report.read_text(),
    }
    assert leaks == {"stderr": False, "report": False}, done.stderr[-400:]


def test_a_tiny_max_rate_is_a_configuration_error(stand_in: Platform, tmp_path: Path) -> None:
    """Through the real CLI: `api.max_rate = 1e-300` is accepted (ge=0, finite), and the
    first re-read waits 1e300 s in the rate limiter - an asyncio.sleep that neither
    sweep.deadline nor anything else bounds. With `sweep.deadline = "2s"` the run never
    ends on its own (here: killed after 20 s).

    Expected: the run ends within deadline + 10 s (or such a rate is refused at load, 78).
    """
    now = datetime.now(UTC)
    for i in range(3):
        stand_in.state.add(record(f"z{i}", now=now, started=timedelta(hours=5)))
    config = write_config(
        tmp_path, stand_in.base_url, 'max_rate = 1e-300\n[sweep]\ndeadline = "2s"\n'
    )
    proc = start_sweeper("--config", str(config), "run", "--once")
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert code is not None, "run --once did not end within 20 s of a 2 s deadline"


def test_a_base_url_with_an_impossible_port_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    """`api.base_url = "http://127.0.0.1:99999"`: check-config exits 0, `run --once` crashes
    (ValueError: Port out of range), `sweep.aborted result=crashed`, exit 70.

    Expected (operations.md): a wrong configuration is refused at load, exit 78.
    """
    config = write_config(tmp_path, "http://127.0.0.1:99999")
    checked = cli("--config", str(config), "check-config")
    ran = cli("--config", str(config), "run", "--once")
    assert (checked.returncode, ran.returncode) == (78, 78), (checked.returncode, ran.stderr[-300:])


def test_an_unrelated_reload_keeps_a_refused_token_unsent(
    stand_in: Platform, tmp_path: Path
) -> None:
    """The platform refuses the daemon's token (401): the next listings correctly send
    nothing. Then an unrelated key changes (sweep.page_size): the reload builds a new
    PlatformClient, which has forgotten the refusal, and the very next listing sends the
    refused token again.

    Contract (README, "Answers"): "the daemon sends that token again only once it changes
    (token file, reload) or after an hour"; runbook: "A refused token is not sent again until
    it changes, or for an hour". Expected: no request after the 401 while the token is the
    same.
    """
    config = write_config(
        tmp_path, stand_in.base_url, '[schedule]\ninterval = "1s"\n', token="revoked-token"
    )
    proc, err = start_daemon(config, tmp_path)
    try:
        wait_for(lambda: err.read_text().count('"sweep.finished"') >= 2)
        refused = stand_in.counters.requests
        assert refused == 1  # one 401, then nothing: as it should be
        config.write_text(config.read_text() + "[sweep]\npage_size = 100\n")
        wait_for(lambda: "config.reload" in err.read_text())
        listed = err.read_text().count('"sweep.finished"')
        # Two more listings at interval 1s: events, not a clock.
        wait_for(lambda: err.read_text().count('"sweep.finished"') >= listed + 2, timeout=60)
    finally:
        stop_daemon(proc)
    assert stand_in.counters.requests == refused, "the refused token was sent again"


# -- (a) marked on an answer about another step (contract silent: low) ----------------------


def test_a_write_answered_with_another_steps_data_is_invalid(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The PATCH of z1 is answered 200 `{"success": true, "data": {"stepId": "other",
    "status": "FAILED"}}` and nothing is applied to z1: `_written` checks only
    `data.status`, so z1 is reported `marked` (and logged step.marked) while it is still
    RUNNING on the platform.

    platform-api.md says `data` "holds the updated step", and treats a re-read naming
    another step or organization as a broken answer; the same should hold for the write's
    answer. Expected: `failed invalid_answer`, never `marked`.
    """
    platform.add(record("z1"))

    def misrouted(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH":
            data = {"stepId": "other", "organizationId": "org-b", "status": "FAILED"}
            return httpx.Response(200, json={"success": True, "data": data})
        return None

    platform.before.append(misrouted)
    report = run(build_sweeper(platform, clock, max_attempts=5, sleep=clock.sleep, rules=RULES))
    assert platform.state.steps["z1"]["status"] == "RUNNING"  # nothing applied to z1
    assert entry_of(report, "z1").outcome is not Outcome.MARKED


def test_lost_write_unconfirmed_when_the_read_side_omits_error_details(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """The read contract's record table (platform-api.md) has no `errorDetails`. Against a
    read side that serves exactly that table, a write applied whose answer was lost is
    re-read as `status: FAILED` without a sweepId, and reported `skipped_finished` ("finished
    between the listing and the write, real result kept") - though the FAILED it shows is
    this sweep's own write.

    README "Account": "a write sent whose fate no answer told is failed" (the hostile
    suite's invariant: never skipped). Expected: `failed` (or `marked`), not skipped.
    """
    platform.add(record("z1"))
    platform.before.append(apply_then_lose(platform, "z1"))

    def read_side_per_contract(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/z1"):
            fields = ("stepId", "organizationId", "status", "startedAt", "updatedAt")
            step = {k: v for k, v in platform.state.steps["z1"].items() if k in fields}
            return httpx.Response(200, json={"success": True, "data": step})
        return None

    platform.before.append(read_side_per_contract)
    report = run(build_sweeper(platform, clock, max_attempts=5, sleep=clock.sleep, rules=RULES))
    assert applied_by_us(platform, "z1", report)
    entry = entry_of(report, "z1")
    assert entry.outcome in (Outcome.FAILED, Outcome.MARKED), (entry.outcome, entry.reason)


# -- precise marking (daemon): the blast-radius guard counts healthy steps ---------------------


def test_precise_guard_does_not_count_healthy_heartbeating_steps(
    platform: FakePlatform, clock: FakeClock
) -> None:
    """Precise mode (daemon default), a limit shorter than the listing interval
    (stale_after 3m, interval 5m - what precise marking is for): every healthy step that
    heartbeated 10 s ago has a due moment (+2m50s) inside the interval, lands in `soon`,
    and is counted by check_blast_radius(len(zombies) + len(soon)). With more running
    steps than sweep.max_steps, every listing is `sweep.refused guard=max_steps` and the
    one real zombie is never marked, although nothing is wrong; the same configuration
    with schedule.precise = false marks it.

    Contract (operations.md, precise marking): "more *zombies* due in it than
    sweep.max_steps marks none of them". Expected: the zombie is marked; steps that keep
    beating are not zombies and do not trip the guard.
    """
    live = [f"live{n}" for n in range(4)]
    platform.add(record("dead", started=5 * H))
    platform.add(*(record(s, started=H, heartbeat=timedelta(seconds=10)) for s in live))

    def keep_beating(request: httpx.Request) -> None:
        for step_id in live:  # the workers are alive: they heartbeat all the time
            platform.state.steps[step_id]["lastHeartbeatAt"] = format_timestamp(clock())

    platform.before.append(keep_beating)
    rules = Rules((), Rule("default", 3 * M, StepStatus.FAILED, "Z", DEFAULT_ERROR_MESSAGE))
    sweeper = build_sweeper(
        platform, clock, max_attempts=5, sleep=clock.sleep, rules=rules, max_steps=3
    )
    report = run(sweeper, precise(sweeper, clock))
    assert report.result is not Result.REFUSED, report.error
    assert platform.state.steps["dead"]["status"] == "FAILED"
