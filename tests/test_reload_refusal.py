"""A token refusal belongs to the (base URL, token) pair that was refused: through the real
daemon, a reload that points at the right platform sweeps it at the next listing."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sweeper.devserver.server import serve_in_thread
from sweeper.devserver.state import PlatformState
from tests.e2e import Platform, start_daemon, stop_daemon, wait_for, write_config
from tests.fakes import record


@pytest.mark.parametrize("interval", ["1s", "1h"])
def test_a_reload_that_fixes_base_url_sweeps_the_right_platform(
    stand_in: Platform, tmp_path: Path, interval: str
) -> None:
    """The wrong environment answers 401 (another token); the operator fixes api.base_url
    and reloads: the right platform is listed at once (not an interval later) and its
    zombies are marked."""
    now = datetime.now(UTC)
    for i in range(3):
        stand_in.state.add(record(f"z{i}", now=now, started=timedelta(hours=5)))
    # Another base_url is another platform: outage memory starts afresh, as at a start,
    # so its zombies are due half a limit after its first answer. With a 1 h interval a
    # precise timer marks them then; periodic sweeps would wait for the next listing.
    precise = "false" if interval == "1s" else "true"
    with serve_in_thread(PlatformState(), "another-environments-token") as wrong:
        extra = (
            f'[schedule]\ninterval = "{interval}"\nprecise = {precise}\n'
            '[sweep]\nstale_after = "2s"\n'
        )
        config = write_config(tmp_path, wrong.base_url, extra)
        proc, lines = start_daemon(config, tmp_path)
        try:
            wait_for(lambda: len(lines.named("sweep.finished")) >= (2 if interval == "1s" else 1))
            assert {e["result"] for e in lines.named("sweep.finished")} == {"token_refused"}
            config.write_text(config.read_text().replace(wrong.base_url, stand_in.base_url))
            wait_for(lambda: len(stand_in.state.patches) == 3, timeout=60)
            (reloaded, *_) = lines.named("config.reloaded")
            assert "api.base_url" in reloaded["changed"]  # type: ignore[operator]
        finally:
            proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
            proc.wait(timeout=30)  # type: ignore[attr-defined]
    assert proc.returncode == 0  # type: ignore[attr-defined]


def test_a_reload_to_another_refusing_url_keeps_no_old_refusal_but_learns_its_own(
    tmp_path: Path,
) -> None:
    """Two wrong environments in turn: each is asked once, refuses, and is not asked again
    while the (URL, token) pair stays the same."""
    with (
        serve_in_thread(PlatformState(), "token-of-a") as first,
        serve_in_thread(PlatformState(), "token-of-b") as second,
    ):
        extra = '[schedule]\ninterval = "1s"\nprecise = false\n'
        config = write_config(tmp_path, first.base_url, extra)
        proc, lines = start_daemon(config, tmp_path)
        try:
            wait_for(lambda: len(lines.named("sweep.finished")) >= 2)
            config.write_text(config.read_text().replace(first.base_url, second.base_url))
            wait_for(lambda: len(lines.named("config.reloaded")) == 1)
            wait_for(lambda: second.app.state.counters.requests >= 1, timeout=60)
            swept = len(lines.named("sweep.finished"))
            wait_for(lambda: len(lines.named("sweep.finished")) >= swept + 2)
        finally:
            proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
            proc.wait(timeout=30)  # type: ignore[attr-defined]
        # One refused listing each: the latch holds for each pair once it is refused.
        assert first.app.state.counters.requests == 1
        assert second.app.state.counters.requests == 1
    assert proc.returncode == 0  # type: ignore[attr-defined]


def test_an_unrelated_reload_keeps_a_refused_token_unsent(
    stand_in: Platform, tmp_path: Path
) -> None:
    """A refused token is not sent again while it is the same, even when a reload of an
    unrelated key (sweep.page_size) builds a new client: no request after the 401."""
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
