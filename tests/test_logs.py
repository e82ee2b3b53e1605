"""Logging: JSON lines with ISO UTC timestamps, library records routed, secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from sweeper.logs import REDACTED, Redactor, configure_logging
from tests.e2e import sweeper, write_config
from tests.fakes import TOKEN


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_iso_utc_timestamps() -> None:
    """One JSON object per line: timestamp (UTC, Z), level, event, fields."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    structlog.get_logger().info("step.marked", step_id="s1", idle_seconds=5)
    (line,) = lines(out)
    assert line["event"] == "step.marked"
    assert line["level"] == "info"
    assert str(line["timestamp"]).endswith("Z")
    assert line["step_id"] == "s1"


def test_auto_is_json_when_not_a_terminal() -> None:
    """log.format = auto renders JSON to a pipe or file."""
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    structlog.get_logger().info("x")
    assert lines(out)[0]["event"] == "x"


def test_console_format_is_readable() -> None:
    """log.format = console prints key=value lines."""
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    structlog.get_logger().info("sweep.started", dry_run=True)
    assert "sweep.started" in out.getvalue()
    assert "dry_run=True" in out.getvalue()


def test_level_filters() -> None:
    """Below log.level nothing is written."""
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    assert [line["event"] for line in lines(out)] == ["loud"]


def test_library_records_use_the_same_format() -> None:
    """Standard-library records (httpx, APScheduler) come out as the same JSON."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    logging.getLogger("apscheduler.jobstores").warning("job %s missed", "sweep")
    (line,) = lines(out)
    assert line["event"] == "job sweep missed"
    assert line["logger"] == "apscheduler.jobstores"
    assert str(line["timestamp"]).endswith("Z")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_token_is_scrubbed_from_every_line(fmt: str) -> None:
    """Even a message or exception we did not write cannot show the token."""
    out = io.StringIO()
    configure_logging(fmt, "debug", secrets=[TOKEN], stream=out)
    log = structlog.get_logger()
    log.info("oops", header=f"Bearer {TOKEN}")
    logging.getLogger("httpx").error("sent Authorization: Bearer %s", TOKEN)
    try:
        secret_local = TOKEN  # a frame local: tracebacks must not show it
        raise ValueError(f"failed with {secret_local}")
    except ValueError:
        log.exception("crash")
    text = out.getvalue()
    assert TOKEN not in text
    assert REDACTED in text
    assert "crash" in text


def test_tracebacks_do_not_include_frame_locals() -> None:
    """JSON tracebacks are structured, without locals."""
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        hidden = "value-in-a-local"
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger().exception("crash")
    assert hidden not in out.getvalue()
    (line,) = lines(out)
    assert line["exception"][0]["exc_type"] == "RuntimeError"  # type: ignore[index]


def test_redactor_grows_and_ignores_empty() -> None:
    """Secrets can be added later; an empty secret never blanks the line."""
    redactor = Redactor([""])
    assert redactor("abc") == "abc"
    redactor.add("b")
    assert redactor("abc") == f"a{REDACTED}c"


def test_journal_lines_carry_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under systemd (JOURNAL_STREAM names stderr), each line starts with `<N>`: journalctl -p
    sees warnings and errors; ours and the standard library's alike."""
    path = tmp_path / "journal"
    with path.open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        configure_logging("json", "debug", stream=stream)
        structlog.get_logger("t").info("a.info")
        structlog.get_logger("t").warning("a.warning")
        structlog.get_logger("t").error("a.error")
        logging.getLogger("lib").warning("from a library")
    lines = path.read_text().splitlines()
    assert [line[:4] for line in lines] == ["<6>{", "<4>{", "<3>{", "<4>{"]


def test_no_priority_prefix_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JOURNAL_STREAM that names another stream (inherited by a child) adds nothing."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    path = tmp_path / "plain"
    with path.open("w") as stream:
        configure_logging("json", "info", stream=stream)
        structlog.get_logger("t").warning("a.warning")
    assert path.read_text().startswith("{")


QUOTED_TOKEN = 'ops-"tok\\en-4f9a1c'  # printable, no whitespace: check_token accepts it


def test_a_token_with_a_quote_or_backslash_is_redacted_json_escaped(tmp_path: Path) -> None:
    """A token holding `"` or `\\`, quoted back by the platform in an error message, is
    scrubbed in every encoding: neither stderr (JSON-escaped) nor the --report holds it."""
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
        done = sweeper("--config", str(config), "run", "--once", "--report", str(report))
    finally:
        server.stop()
    escaped = json.dumps(QUOTED_TOKEN)[1:-1]  # ops-\"tok\\en-4f9a1c
    leaks = {
        "stderr": escaped in done.stderr or QUOTED_TOKEN in done.stderr,
        "report": escaped in report.read_text() or QUOTED_TOKEN in report.read_text(),
    }
    assert leaks == {"stderr": False, "report": False}, done.stderr[-400:]
