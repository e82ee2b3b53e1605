"""Fail closed, through the real CLI against the stand-in: answers nobody foresaw.

Each scenario is one of the faults found by trying sweeper as an adversary
would: it must end with a clear outcome and the right exit code, never a
traceback, a false success or a hang.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.e2e import (
    Platform,
    Result,
    environment,
    start_sweeper,
    sweeper,
    wait_for,
    write_config,
)
from tests.fakes import TOKEN, record

LISTING = "/api/data-platform/workflow-run-steps"


def run_once(stand_in: Platform, tmp_path: Path, extra: str = "") -> Result:
    config = write_config(tmp_path, stand_in.base_url, extra)
    return sweeper("--config", str(config), "run", "--once", "--report", str(tmp_path / "r.json"))


def report(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "r.json").read_text())  # type: ignore[no-any-return]


def zombie(stand_in: Platform, step_id: str = "z1") -> None:
    now = datetime.now(UTC)
    stand_in.state.add(record(step_id, now=now, started=timedelta(hours=5)))


def extra_records(stand_in: Platform, *raw: str) -> None:
    """Serve the listing with these raw JSON records added to the first page."""

    async def hostile(request: Request) -> Response | None:
        if request.url.path != LISTING or request.method != "GET":
            return None
        page = stand_in.state.list_steps(dict(request.query_params))
        text = json.dumps(page)
        records = ",".join(raw)
        text = text.replace('"data": [', f'"data": [{records},', 1)
        return Response(text, media_type="application/json")

    stand_in.hooks.append(hostile)


@pytest.mark.parametrize(
    "raw",
    [
        '{"stepId": "x", "organizationId": "org-a", "status": "RUNNING",'
        ' "startedAt": "0001-01-01T00:00:00+01:00"}',
        '{"stepId": "x", "organizationId": "org-a", "status": "RUNNING",'
        ' "startedAt": "9999-12-31T23:59:59-01:00"}',
        '{"stepId": "x", "organizationId": "org-a", "status": "RUNNING",'
        ' "startedAt": "2026-01-01T00:00:00Z", "extra": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
    ],
    ids=["year-1-ahead-of-utc", "year-9999-behind-utc", "nested-5000-deep"],
)
def test_a_hostile_record_is_invalid_and_the_rest_is_swept(
    stand_in: Platform, tmp_path: Path, raw: str
) -> None:
    """Times out of range once in UTC, nesting too deep: record.invalid, the zombie still marked."""
    zombie(stand_in)
    extra_records(stand_in, raw)
    result = run_once(stand_in, tmp_path)
    assert result.code == 0, result.stderr
    (invalid,) = result.named("record.invalid")
    assert invalid["step_id"] in ("x", None)
    assert stand_in.state.steps["z1"]["status"] == "FAILED"
    assert report(tmp_path)["summary"]["counts"]["invalid"] == 1  # type: ignore[index]


def test_a_corrupt_gzip_listing_is_unavailable_not_success(
    stand_in: Platform, tmp_path: Path
) -> None:
    """A body that says gzip and is not: exit 75, nothing written, no entry left pending."""
    zombie(stand_in)

    async def corrupt(request: Request) -> Response | None:
        if request.url.path == LISTING:
            return Response(b"\x1f\x8b\x08not-gzip", headers={"Content-Encoding": "gzip"})
        return None

    stand_in.hooks.append(corrupt)
    result = run_once(stand_in, tmp_path)
    assert result.code == 75, result.stderr
    (aborted,) = result.named("sweep.aborted")
    assert aborted["result"] == "unavailable"
    assert "decoded" in aborted["error"]
    assert stand_in.state.patches == []


def test_a_repeating_cursor_ends_the_listing(stand_in: Platform, tmp_path: Path) -> None:
    """A nextCursor that cycles: invalid_listing, exit 75, nothing written, no hang."""
    for i in range(4):
        zombie(stand_in, f"z{i}")

    async def cycle(request: Request) -> Response | None:
        if request.url.path != LISTING:
            return None
        query = dict(request.query_params)
        query.pop("cursor", None)
        page = stand_in.state.list_steps(query)
        page["nextCursor"] = "same-cursor-again"
        page["data"] = page["data"][:1]
        return JSONResponse(page)

    stand_in.hooks.append(cycle)
    result = run_once(stand_in, tmp_path)
    assert result.code == 75, result.stderr
    (aborted,) = result.named("sweep.aborted")
    assert aborted["result"] == "invalid_listing"
    assert stand_in.state.patches == []
    assert report(tmp_path)["summary"]["result"] == "invalid_listing"  # type: ignore[index]


def test_api_timeout_bounds_the_whole_request(stand_in: Platform, tmp_path: Path) -> None:
    """An answer trickling a byte at a time is cut at api.timeout, however often bytes come."""
    zombie(stand_in)

    async def trickle(request: Request) -> Response | None:
        if request.url.path != LISTING:
            return None

        async def body():  # type: ignore[no-untyped-def]
            while True:  # a trickle that never ends: only api.timeout can end the request
                yield b" "
                await asyncio.sleep(0.1)

        return StreamingResponse(body(), media_type="application/json")

    stand_in.hooks.append(trickle)
    result = run_once(stand_in, tmp_path, 'timeout = "1s"\n')
    assert result.code == 75, result.stderr
    assert "api.timeout" in result.named("sweep.aborted")[0]["error"]


def test_a_write_retried_after_the_step_finished_is_not_sent(
    stand_in: Platform, tmp_path: Path
) -> None:
    """503 Retry-After, the worker finishes meanwhile: the retry's re-read sees it; no 2nd PATCH."""
    zombie(stand_in)

    async def finish_during_wait(request: Request) -> Response | None:
        if request.method == "PATCH":
            stand_in.state.update("z1", status="SUCCEEDED")
            return Response(status_code=503, headers={"Retry-After": "0"})
        return None

    stand_in.hooks.append(finish_during_wait)
    result = run_once(stand_in, tmp_path, "max_attempts = 3\n")
    assert result.code == 0, result.stderr
    assert stand_in.state.steps["z1"]["status"] == "SUCCEEDED"
    assert len(stand_in.arrivals("PATCH")) == 1
    (skipped,) = result.named("step.skipped")
    assert skipped["reason"] == "finished"
    (retried,) = result.named("request.retried")
    assert (retried["method"], retried["http_status"]) == ("PATCH", 503)


@pytest.mark.parametrize("retry_answer", [None, 409])
def test_a_write_whose_answer_was_lost_is_marked(
    stand_in: Platform, tmp_path: Path, retry_answer: int | None
) -> None:
    """Applied, then 502: the re-read shows this sweep's write: marked, not written again."""
    zombie(stand_in)
    patches = []

    async def lose_answer(request: Request) -> Response | None:
        if request.method != "PATCH":
            return None
        patches.append(1)
        if len(patches) == 1:
            stand_in.state.patch_step("z1", await request.body())
            return Response(status_code=502)
        return Response(status_code=retry_answer or 500)

    stand_in.hooks.append(lose_answer)
    result = run_once(stand_in, tmp_path, "max_attempts = 3\n")
    assert result.code == 0, result.stderr
    assert len(patches) == 1  # the re-read before the retry settled it
    (marked,) = result.named("step.marked")
    assert marked["detail"] == "applied_earlier"
    assert report(tmp_path)["steps"][0]["outcome"] == "marked"  # type: ignore[index]


def test_a_reread_naming_another_step_is_not_believed(stand_in: Platform, tmp_path: Path) -> None:
    """The re-read answers another tenant's step: failed invalid_answer, nothing written."""
    zombie(stand_in)

    async def other_tenant(request: Request) -> Response | None:
        if request.method == "GET" and request.url.path != LISTING:
            data = dict(stand_in.state.steps["z1"], organizationId="org-other")
            return JSONResponse({"success": True, "data": data})
        return None

    stand_in.hooks.append(other_tenant)
    result = run_once(stand_in, tmp_path)
    assert result.code == 1, result.stderr
    (failed,) = result.named("step.failed")
    assert failed["reason"] == "invalid_answer"
    assert stand_in.state.patches == []


def test_a_patch_answered_still_running_is_not_marked(stand_in: Platform, tmp_path: Path) -> None:
    """200 whose data.status is RUNNING: the write was not applied as sent."""
    zombie(stand_in)

    async def not_applied(request: Request) -> Response | None:
        if request.method == "PATCH":
            return JSONResponse({"success": True, "data": stand_in.state.steps["z1"]})
        return None

    stand_in.hooks.append(not_applied)
    result = run_once(stand_in, tmp_path)
    assert result.code == 1, result.stderr
    assert result.named("step.failed")[0]["reason"] == "invalid_answer"
    assert result.named("step.marked") == []


def test_an_unforeseen_error_exits_70_never_0_or_1(stand_in: Platform, tmp_path: Path) -> None:
    """A bug mid-sweep: sweep.aborted result=crashed, exit 70, no frame locals, token redacted."""
    zombie(stand_in)
    config = write_config(tmp_path, stand_in.base_url)
    program = (
        "import sys, sweeper.writer as s\n"
        "def broken(*a, **k):\n"
        f"    secret = {TOKEN!r}\n"
        "    raise RuntimeError('bug near ' + secret)\n"
        "s.build_update = broken\n"
        "from sweeper.__main__ import main\n"
        "main(sys.argv[1:])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, "--log-format", "json", "--config", str(config), "run",
         "--once", "--report", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=60, env=environment(), check=False,
    )  # fmt: skip
    assert done.returncode == 70, done.stderr
    assert TOKEN not in done.stderr
    assert TOKEN not in (tmp_path / "r.json").read_text()
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (aborted,) = [e for e in events if e["event"] == "sweep.aborted"]
    assert aborted["result"] == "crashed"
    assert "RuntimeError" in aborted["error"]
    assert '"locals"' not in done.stderr
    summary = report(tmp_path)
    assert summary["summary"]["result"] == "crashed"  # type: ignore[index]
    assert [s["outcome"] for s in summary["steps"]] == ["not_attempted"]  # type: ignore[index]
    assert stand_in.state.patches == []


def test_sighup_never_kills_a_one_shot_sweep(stand_in: Platform, tmp_path: Path) -> None:
    """SIGHUP mid-writes is logged and ignored: every write is logged, the sweep finishes."""
    for i in range(12):
        zombie(stand_in, f"z{i:02d}")
    stand_in.faults.latency = timedelta(milliseconds=60)
    config = write_config(tmp_path, stand_in.base_url, "max_concurrency = 2\n")
    proc = start_sweeper("--config", str(config), "run", "--once")
    wait_for(lambda: len(stand_in.state.patches) >= 2)
    proc.send_signal(signal.SIGHUP)
    stdout, stderr = proc.communicate(timeout=60)
    result = Result(proc.returncode, stdout, stderr)
    assert result.code == 0, stderr
    assert result.named("signal.ignored")[0]["signal"] == "SIGHUP"
    assert len(result.named("step.marked")) == 12 == len(stand_in.state.patches)


def test_a_base_url_that_points_at_no_platform_is_a_configuration_error(
    stand_in: Platform, tmp_path: Path
) -> None:
    """The listing answers 404: exit 78 (not retried forever as 75), naming the full URL."""

    async def no_platform_here(request: Request) -> Response | None:
        return Response(status_code=404) if request.url.path == LISTING else None

    stand_in.hooks.append(no_platform_here)
    config = write_config(tmp_path, stand_in.base_url)
    result = sweeper("--config", str(config), "run", "--once")
    assert result.code == 78, result.stderr
    (aborted,) = result.named("sweep.aborted")
    assert aborted["result"] == "misconfigured"
    assert f"{stand_in.base_url}/api/data-platform" in aborted["error"]


def test_retries_are_logged_and_counted(stand_in: Platform, tmp_path: Path) -> None:
    """Each retry is a request.retried event and a sweeper_http_retries_total sample."""
    zombie(stand_in)
    answers = iter([503, 429])

    async def flaky(request: Request) -> Response | None:
        if request.url.path == LISTING:
            status = next(answers, None)
            if status is not None:
                return Response(status_code=status, headers={"Retry-After": "0"})
        return None

    stand_in.hooks.append(flaky)
    config = write_config(tmp_path, stand_in.base_url, "max_attempts = 3\n")
    metrics = tmp_path / "sweeper.prom"
    result = sweeper("--config", str(config), "run", "--once", "--metrics-file", str(metrics))
    assert result.code == 0, result.stderr
    retried = result.named("request.retried")
    assert [(e["method"], e["http_status"], e["attempt"]) for e in retried] == [
        ("GET", 503, 1),
        ("GET", 429, 2),
    ]
    assert all(e["path"] == LISTING and e["wait_seconds"] == 0 for e in retried)
    text = metrics.read_text()
    assert 'sweeper_http_retries_total{method="GET",status="503"} 1.0' in text
    assert 'sweeper_http_retries_total{method="GET",status="429"} 1.0' in text
