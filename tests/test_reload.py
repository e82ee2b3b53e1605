"""Reload through the real daemon: a changed file or SIGHUP, validated whole, applied later."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from sweeper.daemon import changed_keys
from sweeper.refusals import TOKEN_RETRY_SECONDS
from sweeper.settings import load_settings
from tests.e2e import (
    Platform,
    signal_and_collect,
    start_daemon,
    start_sweeper,
    stop_daemon,
    wait_for,
    write_config,
)
from tests.fakes import TOKEN, record
from tests.listing_clock import LATER, Clock, wish_during_a_listing


def zombies(stand_in: Platform, n: int, hours: float = 5) -> None:
    now = datetime.now(UTC)
    for i in range(n):
        stand_in.state.add(record(f"z{i}", now=now, started=timedelta(hours=hours)))


def test_a_changed_rule_threshold_applies_from_the_next_listing(
    stand_in: Platform, tmp_path: Path
) -> None:
    """stale_after 10h -> 2s in the file: config.reloaded names the key; the next listing marks
    (the time before the daemon's first answer is forgiven but half a limit)."""
    zombies(stand_in, 3)
    extra = '[schedule]\ninterval = "1s"\n[sweep]\nstale_after = "10h"\n'
    config = write_config(tmp_path, stand_in.base_url, extra)
    proc, lines = start_daemon(config, tmp_path)
    try:
        wait_for(lambda: len(lines.named("sweep.finished")) >= 1)
        assert stand_in.state.patches == []
        config.write_text(config.read_text().replace('"10h"', '"2s"'))
        wait_for(lambda: len(stand_in.state.patches) == 3)
        (reloaded,) = lines.named("config.reloaded")
        assert reloaded["changed"] == ["sweep.stale_after"]
        assert reloaded["trigger"] == "file changed"
        started = lines.named("sweep.started")
        assert started[0]["stale_after"] == "10h"
        assert started[-1]["stale_after"] == "2s"
    finally:
        proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        proc.wait(timeout=30)  # type: ignore[attr-defined]
    assert proc.returncode == 0  # type: ignore[attr-defined]


def test_a_broken_file_is_refused_and_the_old_one_kept(stand_in: Platform, tmp_path: Path) -> None:
    """A wrong key: config.reload_failed naming it; the daemon goes on with the old values."""
    extra = '[schedule]\ninterval = "1s"\n[sweep]\nstale_after = "2s"\n'
    config = write_config(tmp_path, stand_in.base_url, extra)
    good = config.read_text()
    proc, lines = start_daemon(config, tmp_path)
    try:
        wait_for(lambda: len(lines.named("sweep.finished")) >= 1)
        config.write_text(good.replace('stale_after = "2s"', 'stale_after = "0s"\nbogus = 1'))
        wait_for(lambda: len(lines.named("config.reload_failed")) == 1)
        (failed,) = lines.named("config.reload_failed")
        assert "sweep.stale_after" in str(failed["error"])
        assert "sweep.bogus" in str(failed["error"])
        sweeps = len(lines.named("sweep.finished"))
        wait_for(lambda: len(lines.named("sweep.finished")) >= sweeps + 2)
        assert lines.named("sweep.started")[-1]["stale_after"] == "2s"
        assert len(lines.named("config.reload_failed")) == 1  # once per change, not per listing
        zombies(stand_in, 1, hours=20)
        wait_for(lambda: len(stand_in.state.patches) == 1)  # still sweeping, old limits
    finally:
        proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        proc.wait(timeout=30)  # type: ignore[attr-defined]
    assert proc.returncode == 0  # type: ignore[attr-defined]


def test_sighup_reloads_and_loses_no_write(stand_in: Platform, tmp_path: Path) -> None:
    """SIGHUP mid-writes: every write is logged, the daemon goes on, the new limit applies."""
    zombies(stand_in, 12)
    stand_in.faults.latency = timedelta(milliseconds=60)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    extra = (
        'max_concurrency = 2\n[schedule]\ninterval = "1h"\n[sweep]\nstale_after = "2s"\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n'
    )
    config = write_config(tmp_path, stand_in.base_url, extra)
    proc = start_sweeper("--config", str(config), "run")
    wait_for(lambda: len(stand_in.state.patches) >= 2)
    config.write_text(config.read_text().replace("max_concurrency = 2", "max_concurrency = 4"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(stand_in.state.patches) == 12)
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert "sweeper_config_last_reload_successful 1.0" in metrics
    result = signal_and_collect(proc)
    assert result.code == 0, result.stderr
    (reloaded,) = result.named("config.reloaded")
    assert (reloaded["trigger"], reloaded["changed"]) == ("SIGHUP", ["api.max_concurrency"])
    assert len(result.named("step.marked")) == 12


def test_changed_keys_names_keys_never_values(tmp_path: Path) -> None:
    """Dotted key names only; a new token is named api.token, its value never shown."""
    base = tmp_path / "a.toml"
    base.write_text('[api]\nbase_url = "https://p.test"\ntoken = "one-secret"\n')
    other = tmp_path / "b.toml"
    other.write_text(
        '[api]\nbase_url = "https://p.test"\ntoken = "two-secret"\n'
        '[sweep]\nstale_after = "3h"\n[server]\nlisten = "127.0.0.1:9100"\n'
    )
    old, _ = load_settings(base, environ={})
    new, _ = load_settings(other, environ={})
    names = changed_keys(old, new)
    assert names == ["server.listen", "sweep.stale_after", "api.token"]
    assert "secret" not in " ".join(names)


class Recorder:
    """A systemd notifier that keeps what it was told."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, message: str) -> bool:
        self.messages.append(message)
        return True


def test_reload_tells_systemd_and_warns_about_restart_only_keys(
    tmp_path: Path, logs: list[dict[str, object]]
) -> None:
    """RELOADING=1 with MONOTONIC_USEC, then READY=1; server.listen needs a restart."""
    import asyncio

    from sweeper.daemon import Daemon
    from sweeper.logs import Redactor

    config = tmp_path / "c.toml"
    config.write_text('[api]\nbase_url = "https://p.test"\ntoken = "old-secret"\n')
    settings, _ = load_settings(config, environ={})
    recorder = Recorder()

    async def reload() -> Daemon:
        daemon = Daemon(
            settings,
            Redactor(),
            config_path=config,
            overrides={},
            environ={},
            notifier=recorder,  # type: ignore[arg-type]
        )
        config.write_text(
            '[api]\nbase_url = "https://p.test"\ntoken = "new-secret"\n'
            '[server]\nlisten = "127.0.0.1:9999"\n'
        )
        assert daemon.reload("SIGHUP")
        return daemon

    daemon = asyncio.run(reload())
    assert recorder.messages[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert recorder.messages[-1] == "READY=1"
    assert daemon.pending is not None
    assert daemon.redactor("new-secret") == "[REDACTED]"
    warnings = [str(e["detail"]) for e in logs if e["event"] == "config.warning"]
    assert "server.listen changes only with a restart" in warnings
    (reloaded,) = [e for e in logs if e["event"] == "config.reloaded"]
    assert reloaded["changed"] == ["server.listen", "api.token"]


@pytest.mark.parametrize(
    ("token", "url", "refused"),
    [
        ("same-secret", "https://p.test", True),
        ("new-secret", "https://p.test", False),
        ("same-secret", "https://right.test", False),
        ("new-secret", "https://right.test", False),
    ],
)
def test_a_reload_keeps_a_refusal_only_for_the_same_url_and_token(
    tmp_path: Path, token: str, url: str, refused: bool
) -> None:
    """A new token or a new base URL gets a fresh client and one more try; the same pair
    stays refused."""
    import asyncio

    from sweeper.daemon import Daemon
    from sweeper.logs import Redactor

    config = tmp_path / "c.toml"
    body = '[api]\nbase_url = "{url}"\ntoken = "{token}"\n'
    config.write_text(body.format(url="https://p.test", token="same-secret"))
    settings, _ = load_settings(config, environ={})

    async def scenario() -> bool:
        daemon = Daemon(settings, Redactor(), config_path=config, overrides={}, environ={})
        daemon.generation = daemon.build_generation(settings)
        client = daemon.generation.sweeper.client
        daemon.refusals.refuse(client.credentials)  # a 401 was seen just now
        config.write_text(body.format(url=url, token=token) + "[sweep]\npage_size = 7\n")
        assert daemon.reload("SIGHUP")
        _, work = daemon.new_sweep()
        work.close()
        return daemon.generation.sweeper.client.token_refused

    assert asyncio.run(scenario()) is refused


@pytest.mark.parametrize(
    ("token", "url"),
    [
        ("new-secret", "https://p.test"),  # a new token, then back
        ("same-secret", "https://right.test"),  # a fixed URL, then back
        ("new-secret", "https://right.test"),  # both, then back
    ],
)
@pytest.mark.parametrize(("ago", "back_refused"), [(0.0, True), (3600.0, False)])
def test_a_reload_back_to_a_refused_pair_keeps_it_refused(
    tmp_path: Path, token: str, url: str, ago: float, back_refused: bool
) -> None:
    """A refusal belongs to the (base URL, token) pair, not to the client that saw it: after
    reloads to another pair and back again, the refused pair is still refused (no request
    goes out with it until its retry time), while the other pair was free in between. A
    refusal as old as the retry time (TOKEN_RETRY_SECONDS) is not kept."""
    import asyncio

    from sweeper.daemon import Daemon
    from sweeper.logs import Redactor

    config = tmp_path / "c.toml"
    body = '[api]\nbase_url = "{url}"\ntoken = "{token}"\n[sweep]\npage_size = {size}\n'
    config.write_text(body.format(url="https://p.test", token="same-secret", size=5))
    settings, _ = load_settings(config, environ={})

    async def scenario() -> list[bool]:
        daemon = Daemon(settings, Redactor(), config_path=config, overrides={}, environ={})
        daemon.generation = daemon.build_generation(settings)
        client = daemon.generation.sweeper.client
        assert ago in (0.0, TOKEN_RETRY_SECONDS)
        daemon.refusals.refuse(client.credentials, at=time.monotonic() - ago)  # a 401 then
        seen = []
        for size, (u, t) in enumerate([(url, token), ("https://p.test", "same-secret")], 6):
            config.write_text(body.format(url=u, token=t, size=size))
            assert daemon.reload("SIGHUP")
            _, work = daemon.new_sweep()
            work.close()
            seen.append(daemon.generation.sweeper.client.token_refused)
        return seen

    assert asyncio.run(scenario()) == [False, back_refused]


def test_a_new_token_during_a_listing_lists_again_when_that_listing_ends(
    tmp_path: Path,
) -> None:
    """After a refusal, a new token read while a listing still runs (a sweep finishing
    its writes) is listed with as soon as that listing ends, not an interval later, and
    never while it runs (one listing at a time)."""
    from sweeper.daemon import Daemon
    from sweeper.errors import Result
    from sweeper.listings import ListingSchedule
    from sweeper.logs import Redactor

    clock = Clock(datetime.now(UTC))  # the first listing runs at once
    ended = LATER + timedelta(hours=7)

    config = tmp_path / "c.toml"
    body = '[api]\nbase_url = "https://p.test"\ntoken = "{token}"\n'
    config.write_text(body.format(token="refused-secret"))
    settings, _ = load_settings(config, environ={})

    async def scenario() -> tuple[datetime | None, datetime | None]:
        daemon = Daemon(settings, Redactor(), config_path=config, overrides={}, environ={})
        daemon.state.schedule = ListingSchedule(clock)

        def new_token() -> None:
            daemon.state.current = asyncio.get_running_loop().create_future()  # a sweep runs
            daemon.state.blocked_by = Result.TOKEN_REFUSED
            config.write_text(body.format(token="new-secret"))
            assert daemon.reload("file changed")

        return await wish_during_a_listing(daemon.state.schedule, clock, ended, new_token)

    during, after = asyncio.run(scenario())
    assert during == LATER  # not while the listing runs
    assert after == ended  # at once when it has ended


def test_reload_to_an_unusable_token_is_refused_and_the_old_one_kept(
    stand_in: Platform, tmp_path: Path
) -> None:
    """A reload to a token file whose token cannot be sent (`tokén`) is refused whole
    (config.reload_failed), the token in force stays, and no listing is lost."""
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
    events = err.events
    names = [e["event"] for e in events]
    crashed_jobs = [e["event"] for e in events if "raised an exception" in e["event"]]
    assert "config.reload_failed" in names and crashed_jobs == [], (
        [e for e in events if e["event"].startswith("config.")],
        crashed_jobs,
    )


def test_sighup_with_a_deeply_nested_config_is_reported_failed(
    stand_in: Platform, tmp_path: Path
) -> None:
    """SIGHUP with a file nested too deeply for the TOML reader is logged as
    config.reload_failed, and the daemon goes on listing with the configuration in force."""
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
    names = [e["event"] for e in err.events]
    assert "config.reload_failed" in names, [n[:80] for n in names if "sweep." not in n]


def test_a_reload_whose_apply_fails_keeps_the_old_one_whole(tmp_path: Path) -> None:
    """A reload validated whole whose apply then fails (the CA bundle replaced mid-rotation)
    keeps the old generation whole; a later reload of the same file, once the bundle is
    good again, applies it: the rules in force are the new ones."""
    import shutil

    import certifi

    from sweeper.daemon import Daemon
    from sweeper.logs import Redactor
    from sweeper.settings import load_settings

    ca = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), ca)
    config = tmp_path / "c.toml"
    body = '[api]\nbase_url = "https://p.test"\ntoken = "t0ken-value"\nca_bundle = "{ca}"\n'
    config.write_text(body.format(ca=ca) + '[sweep]\nstale_after = "10h"\n')
    settings, _ = load_settings(config, environ={})

    async def scenario() -> tuple[Daemon, list[str]]:
        daemon = Daemon(settings, Redactor(), config_path=config, overrides={}, environ={})
        daemon.generation = daemon.build_generation(settings)
        config.write_text(body.format(ca=ca) + '[sweep]\nstale_after = "1h"\n')
        assert daemon.reload("SIGHUP")
        ca.write_text("not a certificate\n")  # rotation in progress at the listing
        errors = []
        try:
            _, first = daemon.new_sweep()  # the apply fails: the old generation sweeps
            first.close()  # type: ignore[attr-defined]
        except Exception as exc:  # the old generation must sweep instead
            errors.append(type(exc).__name__)
        shutil.copy(certifi.where(), ca)  # rotation done
        daemon.reload("SIGHUP")  # the operator tries again
        _, work = daemon.new_sweep()
        work.close()  # type: ignore[attr-defined]
        return daemon, errors

    daemon, errors = asyncio.run(scenario())
    assert daemon.generation is not None
    in_force = daemon.generation.sweeper.config.rules.default.stale_after
    assert daemon.settings.sweep.stale_after == timedelta(hours=1)
    assert in_force == timedelta(hours=1), (errors, in_force)
