"""The long-running process, built in one place: listings on the schedule, health,
metrics, and reload.

Reload (operations.md, "Reload"): SIGHUP, or a change in the content of the
configuration file or the token file (checked before each listing), loads the
configuration again and validates it whole. A wrong one is logged and the one in
force stays; a good one applies from the next listing, while writes in flight
finish under the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import structlog
from prometheus_client import CollectorRegistry, ProcessCollector

from sweeper.api import PlatformClient
from sweeper.app import build_sweeper, http_client
from sweeper.election import Leadership, build_leadership
from sweeper.errors import ConfigError, Result, SweeperError
from sweeper.leader import EngineError, LeaderEvents
from sweeper.listings import LISTING_MARGIN as LISTING_MARGIN
from sweeper.listings import Cadence, cadence_of
from sweeper.logs import Redactor, configure_logging
from sweeper.notify import SystemdNotifier
from sweeper.ops import Health, Metrics, OpsServer, wsgi_app
from sweeper.outages import OutageLog, watch_gap
from sweeper.precise import Interval
from sweeper.refusals import TokenRefusals
from sweeper.report import ExitCode, SweepReport
from sweeper.schedule import DaemonState, install_stop_handlers, list_now, run_daemon
from sweeper.settings import Settings, config_path_of, load_settings
from sweeper.sweep import Sweeper
from sweeper.timers import TimerHeap

log = structlog.get_logger("sweeper.daemon")

#: Keys that only a restart can change (a section's name: every key in it).
RESTART_ONLY = ("server.listen", "leader")
#: The probe lists the steps that started before this: none, a cheap answer.
PROBE_BEFORE = datetime(1970, 1, 1, tzinfo=UTC)
#: Probes in flight at most (more hang only while the platform does not answer).
MAX_PROBES = 4
#: While the token is refused, how often its file is checked for a replacement.
TOKEN_WATCH_SECONDS = 5.0


def schedule_of(settings: Settings, now: datetime | None = None) -> Cadence:
    """The schedule's trigger, its misfire grace, and the gap between two listings."""
    return cadence_of(settings.schedule, now)


def steady_clock() -> Callable[[], datetime]:
    """The monotonic clock as a UTC datetime (read once at the start, never stepped):
    what outage memory stamps its samples with."""
    origin, at = datetime.now(UTC), time.monotonic()
    return lambda: origin + timedelta(seconds=time.monotonic() - at)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted names of the keys whose values differ (never the values themselves)."""
    before, after = _flatten(old.redacted()), _flatten(new.redacted())
    names = [
        name for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)
    ]
    if old.token() != new.token() and "api.token" not in names:
        names.append("api.token")
    return names


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _fingerprint(paths: list[Path | None]) -> bytes:
    """What the configuration and token files hold now (unreadable counts as a state)."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}".encode())
        digest.update(b"\0")
    return digest.digest()


@dataclass
class _Generation:
    """One configuration in force, with the client and sweeper built from it."""

    settings: Settings
    http: httpx.AsyncClient
    sweeper: Sweeper


class Daemon:
    """`sweeper run`: everything the long-running process needs, and its reload."""

    def __init__(
        self,
        settings: Settings,
        redactor: Redactor,
        *,
        config_path: Path | None,
        overrides: dict[str, Any],
        environ: Mapping[str, str] | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.redactor = redactor
        self.config_path = config_path
        self.overrides = overrides
        self.environ = environ
        self.notifier = notifier or SystemdNotifier()
        self.stop = asyncio.Event()
        self.state = DaemonState()
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_*: memory, CPU, open files, start time
        self.metrics = Metrics(registry)
        self.state.listeners.append(self.metrics.observe_sweep)
        self.state.listeners.append(self._status)
        self.generation: _Generation | None = None
        # Samples on the monotonic clock, windows laid on the platform's (which step
        # timestamps are judged against) when asked for: no clock step moves a sample.
        self.outages = OutageLog(steady_clock(), platform=self._platform_now)
        self._watch_outages(settings)
        #: Set when the limits change, so that the prober looks at its cadence again.
        self._rewatch = asyncio.Event()
        self.pending: Settings | None = None
        #: The (base URL, token) pairs the platform refused, kept across reloads: a
        #: reload to another pair gets its chance, a reload back finds it refused.
        self.refusals = TokenRefusals()
        self.health: Health | None = None
        self.timers = TimerHeap(settings.sweep.max_steps)
        self._closing: set[asyncio.Future[None]] = set()
        self.leadership: Leadership | None = None
        self.current_interval: Interval | None = None
        self._seen = self._files_now()

    # -- wiring ------------------------------------------------------------------

    def _files_now(self) -> bytes:
        return _fingerprint([self.config_path, self.settings.token_path])

    def _watch_outages(self, settings: Settings) -> None:
        """Outage grace follows the limits in force: its gap, and how long it remembers."""
        limits = settings.sweep.build_rules().limits
        self.outages.configure(
            watch_gap(min(limits, default=None)),
            2 * max(limits) if limits else None,
        )

    async def _keep_watching(self) -> None:
        """Sample the platform when nothing else did for half the outage gap: a silence
        longer than the gap counts as an outage (unwatched), which only delays marks.

        A probe is waited for half a gap at most: one that hangs is late (a failure to
        outage memory) and the next goes out all the same, so that one hung request
        among answers is a single failure, not a silence (at most MAX_PROBES at once)."""
        probes: set[asyncio.Task[None]] = set()
        try:
            while not self.stop.is_set():
                self._rewatch.clear()
                due = self.outages.probe_due()
                wait = None if due is None else (due - self.outages.now()).total_seconds()
                if wait is None or wait > 0:
                    await _first_of(self.stop, self._rewatch, seconds=wait)
                    continue
                assert self.generation is not None and self.outages.gap is not None
                half = self.outages.gap.total_seconds() / 2
                if len(probes) < MAX_PROBES:
                    probe = asyncio.create_task(self._probe(self.generation.sweeper.client))
                    probes.add(probe)
                    probe.add_done_callback(probes.discard)
                    await asyncio.wait({probe}, timeout=half)
                # A probe that sent nothing (a refused token, a stop) is no sample: wait
                # all the same, or this loop would spin.
                await _first_of(self.stop, self._rewatch, seconds=half)
        finally:
            for probe in probes:
                probe.cancel()  # only reads
            await asyncio.gather(*probes, return_exceptions=True)

    @staticmethod
    async def _probe(client: PlatformClient) -> None:
        """One listing page of steps that started before 1970: a cheap answer."""
        try:
            async for _ in client.list_running(PROBE_BEFORE, 1):
                return
        except SweeperError as exc:
            log.debug("outage.probe_failed", error=str(exc))
        except Exception as exc:  # never the end of watching; the listings go on
            log.error("outage.probe_failed", error=f"{type(exc).__name__}: {exc}")

    def _platform_now(self) -> datetime:
        generation = self.generation
        return generation.sweeper.platform_now() if generation else datetime.now(UTC)

    def build_generation(self, settings: Settings) -> _Generation:
        """The HTTP client and the sweeper of one configuration (nothing sent)."""
        gate = self.leadership.gate if self.leadership is not None else None
        http = http_client(settings, gate=gate)
        sweeper = build_sweeper(
            settings,
            http,
            stop=self.stop,
            observer=self.metrics.observe_request,
            on_retry=self.metrics.observe_retry,
            outages=self.outages.windows,
            gate=gate,
            watch=self.outages,
            refusals=self.refusals,
        )
        return _Generation(settings, http, sweeper)

    async def run(self) -> int:
        cadence = schedule_of(self.settings)

        def hangup() -> None:
            self.reload("SIGHUP")

        install_stop_handlers(self.stop, on_hangup=hangup)
        if self.settings.leader.enabled:
            try:
                self.leadership = self._leadership()
            except EngineError as exc:  # e.g. no namespace to be found outside a pod
                log.error("config.invalid", error=str(exc))
                return ExitCode.CONFIG
        self.metrics.observe_reload(True, datetime.now(UTC))
        ops = None
        if self.settings.server.listen:
            host, port = self.settings.server.host_port
            self.health = Health(
                lambda: self.state.running,
                lambda: self.state.last_success_at,
                3 * cadence.gap,
                blocked=lambda: (
                    None if self.state.blocked_by is None else self.state.blocked_by.value
                ),
                following=self._following,
            )
            try:
                ops = OpsServer(host, port, wsgi_app(self.metrics, self.health)).start()
            except OSError as exc:
                log.error(
                    "server.unavailable", listen=self.settings.server.listen, error=exc.strerror
                )
                return ExitCode.UNAVAILABLE
            shown = f"[{host}]" if ":" in host else host
            log.info("server.listening", listen=f"{shown}:{ops.port}")
        self.generation = self.build_generation(self.settings)
        watcher = asyncio.ensure_future(self._watch_token(TOKEN_WATCH_SECONDS))
        electing = None
        if self.leadership is not None:
            electing = asyncio.ensure_future(self.leadership.elector.run())
        watching = asyncio.ensure_future(self._keep_watching())
        try:
            await run_daemon(
                self.new_sweep,
                stop=self.stop,
                trigger=cadence.trigger,
                misfire_grace=cadence.misfire,
                state=self.state,
                notifier=self.notifier,
                may_list=self._may_list,
            )
        finally:
            watcher.cancel()
            if self.leadership is not None:
                # run_daemon has drained the writes in flight: now hand the lease over.
                await self.leadership.close(electing)
            watching.cancel()  # a probe in flight is only a read
            await asyncio.gather(watching, return_exceptions=True)
            await self.generation.http.aclose()
            if ops is not None:
                ops.stop()
        return ExitCode.OK

    def _blocked_by(self) -> str | None:
        blocked = self.state.blocked_by
        return None if blocked is None else blocked.value

    def _status(self, report: SweepReport) -> None:
        """systemd's STATUS=, which `systemctl status sweeper` shows: the last sweep."""
        self.notifier.notify(f"STATUS={status_line(report)}")

    async def _watch_token(self, every: float) -> None:
        """While the token is refused, notice a replaced token file and sweep at once
        (otherwise the change is seen only at the next listing)."""
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), every)
            if self.state.blocked_by is Result.TOKEN_REFUSED and self._files_now() != self._seen:
                self.reload("file changed")

    # -- the election ([leader]) --------------------------------------------------

    def _leadership(self) -> Leadership:
        identity = self.settings.leader.identity or ""
        self.metrics.enable_leader(identity)
        self.metrics.leader.set(0)  # type: ignore[union-attr]
        events = LeaderEvents(
            acquired=self._acquired,
            lost=self._lost,
            renewal=self.metrics.observe_renewal,
        )
        leadership = build_leadership(self.settings, events)
        leadership.gate.on_blocked = self.metrics.observe_lease_blocked
        return leadership

    def _may_list(self) -> bool:
        return self.leadership is None or self.leadership.gate.holding()

    def _following(self) -> bool:
        return self.leadership is not None and not self.leadership.elector.leading.is_set()

    def _acquired(self) -> None:
        self.metrics.set_leading(True)
        if self.health is not None:
            self.health.started_at = datetime.now(UTC)  # readiness counts from now
        if not self.stop.is_set():
            # At once, or when a sweep still finishing (from before a loss) has ended.
            list_now(self.state)

    def _lost(self, reason: str) -> None:
        self.metrics.set_leading(False)
        interval = self.current_interval
        if interval is not None:
            interval.wake.set()  # the timers see the loss now, not at their next due

    # -- each listing ------------------------------------------------------------

    def new_sweep(self) -> tuple[SweepReport, Any]:
        """Called before each listing: pick up a changed file, apply a pending reload."""
        if self._files_now() != self._seen:
            self.reload("file changed")
        if self.pending is not None:
            self._apply(self.pending)
        assert self.generation is not None
        sweeper = self.generation.sweeper
        report = sweeper.new_report()
        return report, sweeper.run(report, self._interval())

    def _interval(self) -> Interval | None:
        """Precise marking: timers run until just before the next listing."""
        until = self.state.schedule.interval_end(LISTING_MARGIN)
        if not self.settings.schedule.precise or until is None:
            return None
        self.timers.max_steps = self.settings.sweep.max_steps
        self.current_interval = Interval(
            until=until,
            timers=self.timers,
            on_armed=self.metrics.set_timers_armed,
            holding=self._may_list,
        )
        return self.current_interval

    def _apply(self, settings: Settings) -> None:
        """The new configuration takes over from this listing on."""
        old = self.generation
        self.pending = None
        try:
            generation = self.build_generation(settings)
        except Exception as exc:  # e.g. a CA bundle that changed since it was validated
            log.error("config.reload_failed", trigger="apply", error=f"{type(exc).__name__}: {exc}")
            self.metrics.observe_reload(False, datetime.now(UTC))
            return  # the one in force stays, whole
        self.settings = settings
        self.generation = generation
        new_check, old_check = generation.sweeper.clock_check, None
        if old is not None and old.settings.api.base_url == settings.api.base_url:
            old_check = old.sweeper.clock_check
        if new_check is not None and old_check is not None:
            new_check.carry(old_check)  # the same platform's clock, until it answers
        if old is not None and old.settings.api.base_url != settings.api.base_url:
            # Another platform: nothing is known of its outages, as at a start (marks wait
            # half a limit after its first answer rather than trust the old one's record).
            self.outages.forget()
        self._watch_outages(settings)
        self._rewatch.set()
        if old is not None:
            # A refusal belongs to its (base URL, token) pair: the new pair is asked
            # about before each request; one old enough is tried again (as a sweep's start).
            self.refusals.expire()
            # The previous sweep has ended (one listing at a time): nothing uses it now.
            closing = asyncio.ensure_future(old.http.aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        cadence = schedule_of(settings)
        if old is None or old.settings.schedule != settings.schedule:
            self.state.schedule.reschedule(cadence.trigger, cadence.misfire)
        if self.health is not None:
            self.health.ready_within = 3 * cadence.gap

    # -- reload ------------------------------------------------------------------

    def reload(self, why: str) -> bool:
        """Load and validate the configuration again; keep it for the next listing."""
        self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            return self._reload(why)
        finally:
            self.notifier.notify("READY=1")

    def _reload(self, why: str) -> bool:
        current = self.pending or self.settings
        try:
            settings, warnings = load_settings(self.config_path, self.overrides, self.environ)
        except ConfigError as exc:
            self._seen = self._files_now()  # said once per change, not at every listing
            log.error("config.reload_failed", trigger=why, error=str(exc))
            self.metrics.observe_reload(False, datetime.now(UTC))
            return False
        # A new token is a secret from the moment it is read.
        self.redactor.add(settings.token())
        for warning in warnings:
            log.warning("config.warning", detail=warning)
        changed = changed_keys(current, settings)
        for key in RESTART_ONLY:
            for name in changed:
                if name == key or name.startswith(key + "."):
                    log.warning("config.warning", detail=f"{name} changes only with a restart")
        if settings.leader != current.leader:
            # The election in force was built at start: keep its settings whole.
            settings = settings.model_copy(update={"leader": current.leader})
        self.metrics.observe_reload(True, datetime.now(UTC))
        log.info("config.reloaded", trigger=why, changed=changed)
        if (settings.log.format, settings.log.level) != (current.log.format, current.log.level):
            # After config.reloaded, so that a higher log.level does not hide it.
            configure_logging(settings.log.format, settings.log.level, redactor=self.redactor)
        if changed:
            # A new token gets a new client, so a fresh chance, at the next listing;
            # the client in force keeps its refusal until then.
            self.pending = settings
        self._seen = _fingerprint([self.config_path, settings.token_path])
        refused_pair = {"api.token", "api.base_url"}  # a refusal belongs to the pair
        if refused_pair & set(changed) and self.state.blocked_by is Result.TOKEN_REFUSED:
            # The refused pair changed: no need to wait an interval. At once, or when a
            # listing still running has ended.
            list_now(self.state)
        return True


def status_line(report: SweepReport) -> str:
    """One line on the last sweep, for systemd's STATUS=."""
    counts = report.counts
    at = (report.finished_at or report.started_at).strftime("%H:%M:%SZ")
    return (
        f"last sweep {report.result.value} at {at}: {counts['zombies']} zombies, "
        f"{counts['marked']} marked, {counts['failed']} failed"
    )


async def _first_of(*events: asyncio.Event, seconds: float | None) -> None:
    """Wait until one of the events is set, or `seconds` pass."""
    waiters = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def run(
    settings: Settings, redactor: Redactor, config: Path | None, overrides: dict[str, Any]
) -> int:
    config_path = config_path_of(config, os.environ)
    daemon = Daemon(settings, redactor, config_path=config_path, overrides=overrides)
    return asyncio.run(daemon.run())
