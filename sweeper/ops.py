"""What operators watch: Prometheus metrics, /healthz and /readyz, and the textfile export.

Metrics take a registry (tests pass a fresh one). The HTTP endpoint is the
standard library's WSGI server on a daemon thread: it never shares the event
loop with the sweeps, and it costs the daemon almost nothing at rest.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    make_wsgi_app,
    push_to_gateway,
    pushadd_to_gateway,
    write_to_textfile,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.parser import text_string_to_metric_families

from sweeper import __version__
from sweeper.durations import humanize
from sweeper.errors import Result
from sweeper.report import SweepReport

LAST_SUCCESS = "sweeper_last_success_timestamp_seconds"
#: The Pushgateway job of one-shot runs (`run --once --push-gateway URL`); the alerts
#: of deploy/prometheus/alerts.yaml's sweeper-pushgateway group select it.
PUSH_JOB = "sweeper-once"
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Precise marking aims at well under a second; a listing-bound mark takes up to an interval.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric operations.md lists, in base units with the `sweeper_` prefix."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        Info("sweeper_build", "The running release.", registry=registry).info(
            {"version": __version__}
        )
        self.sweeps = Counter("sweeper_sweeps", "Sweeps by result.", ["result"], registry=registry)
        self.steps = Counter(
            "sweeper_steps",
            "Zombie steps by outcome and the status decided for them.",
            ["outcome", "status"],
            registry=registry,
        )
        self.records_invalid = Counter(
            "sweeper_records_invalid", "Listing records that broke the contract.", registry=registry
        )
        self.duration = Histogram(
            "sweeper_sweep_duration_seconds",
            "Wall time of each sweep.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.last_success = Gauge(
            LAST_SUCCESS,
            "Unix time at which the last successful sweep finished.",
            registry=registry,
        )
        self.zombies = Gauge(
            "sweeper_zombies_found", "Zombies found by the last sweep.", registry=registry
        )
        # Runaways (past sweep.max_runtime) apart: they are in sweeper_steps_total too.
        self.runaways = Counter(
            "sweeper_runaways",
            "Runaway steps (past their max_runtime) by outcome and the status decided for them.",
            ["outcome", "status"],
            registry=registry,
        )
        self.runaways_found = Gauge(
            "sweeper_runaways_found", "Runaways found by the last sweep.", registry=registry
        )
        self.requests = Counter(
            "sweeper_http_requests",
            "Requests to the platform by method and HTTP status (or error).",
            ["method", "status"],
            registry=registry,
        )
        for result in Result:  # every result from the first scrape, so increase() sees the first
            self.sweeps.labels(result=result.value)
        self.retries = Counter(
            "sweeper_http_retries",
            "Retries of requests to the platform by method and what was retried (status or error).",
            ["method", "status"],
            registry=registry,
        )
        # Registered by the first observe_reload: a one-shot run (and its textfile) has no reload.
        self._reload_registered = False
        self.reload_ok = Gauge(
            "sweeper_config_last_reload_successful",
            "1 if the configuration's last load or reload succeeded, 0 if it failed.",
            registry=None,
        )
        self.reload_success = Gauge(
            "sweeper_config_last_reload_success_timestamp_seconds",
            "Unix time of the configuration's last successful load or reload.",
            registry=None,
        )
        self.detection_lag = Histogram(
            "sweeper_detection_lag_seconds",
            "Precise marking: seconds from a step crossing its limit, watched by a timer,"
            " to its write (a backlog found by a listing is not counted).",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.timers_armed = Gauge(
            "sweeper_timers_armed", "Precise-marking timers armed now.", registry=registry
        )
        # Registered by the first sweep: absent (not 0, "failed") until one has ended.
        self.last_sweep_ok = Gauge(
            "sweeper_last_sweep_successful",
            "1 if the last sweep ran to its end, 0 if it failed (an alert goes pending at once).",
            registry=None,
        )
        self._last_sweep_registered = False

        # Registered by enable_leader: only a copy with [leader] has an election to show.
        self.leader: Gauge | None = None

    def enable_leader(self, identity: str) -> None:
        """[leader]: who this copy is, whether it leads, its renewals and transitions."""
        registry = self.registry
        self.leader = Gauge(
            "sweeper_leader", "1 while this copy holds the lease, else 0.", registry=registry
        )
        Gauge(
            "sweeper_leader_identity_info",
            "This copy's leader.identity (always 1).",
            ["identity"],
            registry=registry,
        ).labels(identity=identity).set(1)
        self.leader_transitions = Counter(
            "sweeper_leader_transitions",
            "Times this copy took or lost the lease.",
            registry=registry,
        )
        self.lease_renewals = Counter(
            "sweeper_lease_renewals",
            "Renewals of the lease held, by result (ok, error, expired, conflict).",
            ["result"],
            registry=registry,
        )
        self.lease_blocked = Counter(
            "sweeper_lease_blocked_requests",
            "Requests (PATCH: writes) not started for want of lease time.",
            ["method"],
            registry=registry,
        )
        for method in ("GET", "PATCH"):
            self.lease_blocked.labels(method=method)
        for result in ("ok", "error", "expired", "conflict"):
            self.lease_renewals.labels(result=result)

    def set_leading(self, leading: bool) -> None:
        if self.leader is not None:
            self.leader.set(1 if leading else 0)
            self.leader_transitions.inc()

    def observe_renewal(self, result: str) -> None:
        if self.leader is not None:
            self.lease_renewals.labels(result=result).inc()

    def observe_lease_blocked(self, method: str) -> None:
        if self.leader is not None:
            self.lease_blocked.labels(method=method).inc()

    def observe_retry(self, method: str, status: str) -> None:
        self.retries.labels(method=method, status=status).inc()

    def observe_reload(self, ok: bool, at: datetime) -> None:
        if not self._reload_registered:
            self.registry.register(self.reload_ok)
            self.registry.register(self.reload_success)
            self._reload_registered = True
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_success.set(at.timestamp())

    def observe_detection_lag(self, seconds: float) -> None:
        self.detection_lag.observe(seconds)

    def set_timers_armed(self, n: int) -> None:
        self.timers_armed.set(n)

    def observe_request(self, method: str, status: str) -> None:
        self.requests.labels(method=method, status=status).inc()

    def observe_sweep(self, report: SweepReport) -> None:
        if not self._last_sweep_registered:
            self.registry.register(self.last_sweep_ok)
            self._last_sweep_registered = True
        self.last_sweep_ok.set(1 if report.succeeded else 0)
        self.sweeps.labels(result=report.result.value).inc()
        for entry in report.entries:
            self.steps.labels(outcome=entry.count_name, status=entry.status or "").inc()
            if entry.runaway:
                self.runaways.labels(outcome=entry.count_name, status=entry.status or "").inc()
            if entry.watched and entry.lagSeconds is not None:
                self.observe_detection_lag(max(entry.lagSeconds, 0.0))
        self.records_invalid.inc(report.counts["invalid"])
        self.zombies.set(report.counts["zombies"])
        self.runaways_found.set(report.counts["runaways"])
        if report.finished_at is not None:
            self.duration.observe((report.finished_at - report.started_at).total_seconds())
            if report.succeeded:
                self.last_success.set(report.finished_at.timestamp())

    def write_textfile(self, path: str) -> None:
        """For node_exporter's textfile collector; written to a temporary file, then renamed.

        A run that did not succeed keeps the last success the file already holds, so
        the textfile says when this host last swept successfully, as the daemon does.
        """
        if not self.registry.get_sample_value(LAST_SUCCESS):
            # 0 means "never succeeded here", as the daemon's gauge does at start.
            self.last_success.set(previous_last_success(Path(path)) or 0.0)
        self._carry_counters(Path(path))
        write_to_textfile(path, self.registry)

    def _carry_counters(self, path: Path) -> None:
        """Add the counts of the file this run replaces: counters that restarted at every
        run would read ~0 in increase() and rate(); kept, they count since the first run
        on this host (a removed file is a counter reset, which increase() handles)."""
        counters = {
            "sweeper_sweeps": self.sweeps,
            "sweeper_steps": self.steps,
            "sweeper_records_invalid": self.records_invalid,
            "sweeper_http_requests": self.requests,
            "sweeper_http_retries": self.retries,
        }
        try:
            families = list(text_string_to_metric_families(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, UnicodeDecodeError):
            return  # no file, or not one of ours: start from this run's counts
        for family in families:
            counter = counters.get(family.name)
            if counter is None or family.type != "counter":
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total") or not 0 <= sample.value < math.inf:
                    continue
                child = counter.labels(**sample.labels) if sample.labels else counter
                child.inc(sample.value)

    def push(self, gateway: str, job: str = PUSH_JOB) -> None:
        """To a Pushgateway, for batch jobs with no file to leave (a Kubernetes CronJob).

        A run that did not succeed leaves the group's last success as it is: it replaces
        only the metrics it sends (POST), without sweeper_last_success_timestamp_seconds.
        """
        if self.registry.get_sample_value(LAST_SUCCESS):
            push_to_gateway(gateway, job=job, registry=self.registry, timeout=10)
            return
        self.registry.unregister(self.last_success)
        try:
            pushadd_to_gateway(gateway, job=job, registry=self.registry, timeout=10)
        finally:
            self.registry.register(self.last_success)


class Health:
    """Liveness and readiness, read from the daemon's state."""

    def __init__(
        self,
        is_running: Callable[[], bool],
        last_success: Callable[[], datetime | None],
        ready_within: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        blocked: Callable[[], str | None] = lambda: None,
        following: Callable[[], bool] = lambda: False,
    ) -> None:
        self.is_running = is_running
        self.following = following
        self.blocked = blocked
        self.last_success = last_success
        self.ready_within = ready_within
        self.clock = clock
        self.started_at = clock()

    def live(self) -> bool:
        return self.is_running()

    def ready(self) -> bool:
        """Not ready when the last successful sweep (or the start) is older than the window,
        or at once after a sweep whose token was refused or that crashed."""
        return self.why_not_ready() is None

    def why_not_ready(self) -> str | None:
        """What /readyz says when it answers 503; None when ready."""
        if not self.is_running():
            return "the scheduler is not running"
        if self.following():
            return None  # [leader]: a follower sweeps nothing, by design
        blocked = self.blocked()
        if blocked:
            return f"the last sweep ended {blocked}; ready again when a sweep succeeds"
        since = self.last_success()
        # started_at moves to the moment this copy took the lease ([leader]).
        age = self.clock() - max(since or self.started_at, self.started_at)
        if age > self.ready_within:
            what = "no successful sweep for" if since else "no sweep has succeeded since start,"
            return (
                f"{what} {humanize(age)} (more than {humanize(self.ready_within)}, three "
                "intervals): see the sweep.aborted events"
            )
        return None


def wsgi_app(metrics: Metrics, health: Health) -> Callable[..., Iterable[bytes]]:
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return prometheus(environ, start_response)  # type: ignore[no-any-return]
        if path in ("/healthz", "/readyz"):
            if path == "/healthz":
                why = None if health.live() else "the scheduler is not running"
            else:
                why = health.why_not_ready()
            status = "200 OK" if why is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if why is None else f"unavailable: {why}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would drown the events; say nothing."""


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def _server_class(host: str, port: int) -> type[ThreadingWSGIServer]:
    """The server for the address family `host` resolves to (socketserver binds IPv4 only)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if infos and infos[0][0] == socket.AF_INET6:
        return _IPv6Server
    return ThreadingWSGIServer


class OpsServer:
    """/metrics, /healthz and /readyz on `server.listen`, on a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        app: Callable[..., Iterable[bytes]],
        poll_interval: float = 0.5,
    ) -> None:
        self._server = make_server(
            host, port, app, server_class=_server_class(host, port), handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(poll_interval,),
            name="sweeper-ops",
            daemon=True,
        )

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def previous_last_success(path: Path) -> float | None:
    """The last success time in an earlier metrics file, if it holds a usable one.

    A missing, unreadable or foreign file is no previous value, never an error.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name != LAST_SUCCESS:
            continue
        try:
            seconds = float(value.split()[0])
        except (ValueError, IndexError):
            return None
        return seconds if math.isfinite(seconds) and seconds > 0 else None
    return None
