"""The lease's last look, where the bytes are written, over real loopback sockets.

The client checks the gate before it waits for a connection; the transport checks
it once more just before the request's bytes are written (for a PATCH that is a
loop turn later, after any wait for a free connection). A process paused in between (a
SIGSTOP, a VM pause) must not send on a lease that ran out meanwhile: after the
pause the ready write would run before any timeout could cancel it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from starlette.requests import Request
from starlette.responses import Response

from sweeper.api import STEPS_PATH, PlatformClient, build_http_client
from sweeper.app import before_write, build_sweeper, http_client
from sweeper.devserver.server import RunningServer, serve_in_thread
from sweeper.devserver.state import PlatformState
from sweeper.errors import LeaseLost
from sweeper.leader import Gate, LeaseClock
from sweeper.model import StepStatus
from sweeper.policy import StepUpdate
from sweeper.report import Outcome
from sweeper.retries import RetryPolicy
from sweeper.settings import load_settings
from sweeper.transport import Transport
from tests.fakes import TOKEN, record

UPDATE = StepUpdate(
    organization_id="org-a",
    status=StepStatus.FAILED,
    completed_at="2026-05-23T12:00:00.000Z",
    error_code="ZOMBIE_STEP_TIMEOUT",
    error_message="gone quiet",
    error_details={"sweepId": "x"},
)


class Now:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


class StallsAfterCheck(Gate):
    """The client's check passes; then the process stalls past the lease (a pause)."""

    def __init__(self, lease: LeaseClock, need: float, now: Now, stall: float) -> None:
        super().__init__(lease, need)
        self.now, self.stall, self.checks = now, stall, 0

    def check(self, method: str) -> None:
        super().check(method)
        self.checks += 1
        if self.checks == 1:
            self.now.value += self.stall  # after the first check, before the write


@pytest.fixture(name="debug_logs")
def _debug_logs() -> Iterator[list[dict[str, Any]]]:
    """Captured logs at debug level, whatever an earlier test configured."""
    config = structlog.get_config()
    structlog.reset_defaults()
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**config)


@pytest.fixture(name="server")
def _server() -> Iterator[tuple[RunningServer, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []

    async def intercept(request: Request) -> Response | None:
        seen.append((request.method, request.url.path))
        return None

    state = PlatformState()
    state.add(record("z1", now=datetime.now(UTC)))
    with serve_in_thread(state, TOKEN, intercept=intercept) as server:
        yield server, seen


def gate_with(now: Now, stall: float, need: float = 2.0, lease: float = 4.0) -> StallsAfterCheck:
    clock = LeaseClock(now)
    clock.renewed(now(), lease)
    return StallsAfterCheck(clock, need, now, stall)


def client_of(base_url: str, gate: Gate, *, debug: bool = False) -> tuple[Any, PlatformClient]:
    http = build_http_client(
        base_url,
        TOKEN,
        timeout=timedelta(seconds=1),
        max_connections=2,
        before_write=before_write(gate, debug=debug),
    )
    return http, PlatformClient(http, retry=RetryPolicy(max_attempts=1), gate=gate)


async def _listing(client: PlatformClient) -> None:
    async for _ in client.list_running(datetime.now(UTC), 10):
        return


async def _reread(client: PlatformClient) -> None:
    await client.get_step("z1", "org-a")


async def _settle(client: PlatformClient) -> None:
    await client.settle_read("z1", "org-a")


async def _patch(client: PlatformClient) -> None:
    await client.patch_step("z1", UPDATE)


@pytest.mark.parametrize(
    "request_kind",
    [_listing, _reread, _settle, _patch],
    ids=["listing page", "re-read", "settling re-read", "PATCH"],
)
def test_a_lease_that_runs_out_between_the_check_and_the_write_sends_nothing(
    server: tuple[RunningServer, list[tuple[str, str]]], request_kind: Any
) -> None:
    """Checked with 4 s left (2 s needed), then 3 s pass before the write: 1 s is left,
    less than api.timeout + 1 s, so the transport's last look refuses it, unsent."""
    running, seen = server
    now = Now()
    gate = gate_with(now, stall=3.0)
    blocked: list[str] = []
    gate.on_blocked = blocked.append

    async def scenario() -> None:
        http, client = client_of(running.base_url, gate)
        async with http:
            with pytest.raises(LeaseLost, match=r"less than api\.timeout"):
                await request_kind(client)

    asyncio.run(scenario())
    assert seen == []
    assert gate.checks == 1 and len(blocked) == 1  # the first look passed, the last refused


@pytest.mark.parametrize(
    "request_kind", [_listing, _reread, _patch], ids=["listing page", "re-read", "PATCH"]
)
def test_with_the_lease_held_at_the_write_the_request_goes_out_and_is_stamped(
    server: tuple[RunningServer, list[tuple[str, str]]],
    request_kind: Any,
    debug_logs: list[dict[str, Any]],
) -> None:
    """A short stall that leaves enough lease: sent; at debug level `request.sent` says
    when (monotonic), once per request, after the last look passed."""
    running, seen = server
    now = Now()
    gate = gate_with(now, stall=1.0, lease=10.0)

    async def scenario() -> None:
        http, client = client_of(running.base_url, gate, debug=True)
        async with http:
            await request_kind(client)

    asyncio.run(scenario())
    assert len(seen) == 1 and gate.checks == 2
    (stamp,) = [e for e in debug_logs if e["event"] == "request.sent"]
    assert (stamp["method"], stamp["path"]) == seen[0]
    assert isinstance(stamp["monotonic"], float)


def test_a_write_refused_at_the_last_look_is_not_attempted_in_a_sweep() -> None:
    """Through a whole sweep on the real transport: the PATCH refused at the write is
    `not_attempted` (lease_lost) with 0 tries, as one refused before its wait."""
    seen: list[tuple[str, str]] = []

    async def intercept(request: Request) -> Response | None:
        seen.append((request.method, request.url.path))
        return None

    state = PlatformState()
    state.add(record("z1", now=datetime.now(UTC), heartbeat=timedelta(hours=3)))
    now = Now()
    clock = LeaseClock(now)
    clock.renewed(now(), 60.0)

    class PausesBeforeThePatch(Gate):
        def check(self, method: str) -> None:
            super().check(method)
            if method == "PATCH":
                now.value += 59.0  # paused after the client's check of the PATCH

    gate = PausesBeforeThePatch(clock, 2.0)

    with serve_in_thread(state, TOKEN, intercept=intercept) as running:
        settings, _ = load_settings(
            None,
            {"api": {"base_url": running.base_url, "token": TOKEN, "timeout": "1s"}},
            {},
        )

        async def scenario() -> Any:
            async with http_client(settings, gate=gate) as http:
                sweeper = build_sweeper(settings, http, stop=asyncio.Event(), gate=gate)
                return await sweeper.run(sweeper.new_report())

        report = asyncio.run(scenario())
    assert [m for m, _ in seen] == ["GET", "GET"]  # the listing and the re-read
    (entry,) = report.entries
    assert (entry.outcome, entry.reason, entry.attempts) == (
        Outcome.NOT_ATTEMPTED,
        "lease_lost",
        0,
    )
    assert state.steps["z1"]["status"] == "RUNNING"


def test_without_a_lease_debug_alone_stamps_every_request(
    server: tuple[RunningServer, list[tuple[str, str]]], debug_logs: list[dict[str, Any]]
) -> None:
    """No [leader]: at debug level the hook only says when each request left."""
    running, seen = server

    async def scenario() -> None:
        async with build_http_client(
            running.base_url, TOKEN, timeout=timedelta(seconds=5), max_connections=1,
            before_write=before_write(None, debug=True),
        ) as http:  # fmt: skip
            await PlatformClient(http, retry=RetryPolicy(max_attempts=1)).patch_step("z1", UPDATE)

    asyncio.run(scenario())
    stamps = [(e["method"], e["path"]) for e in debug_logs if e["event"] == "request.sent"]
    assert stamps == seen == [("PATCH", STEPS_PATH + "/z1")]


def test_without_a_gate_or_debug_no_trace_hook_runs() -> None:
    """The hooks cost nothing where nothing asks for them."""
    assert before_write(None, debug=False) is None
    transport = Transport(max_connections=1)
    assert transport._before_write is None


def test_an_error_raised_before_a_body_is_written_leaves_as_raised(
    server: tuple[RunningServer, list[tuple[str, str]]],
) -> None:
    """What the hook raises leaves the transport as raised, nothing written, and the
    connection pool serves the next request."""
    running, seen = server
    refuse = [True]

    class Refused(Exception):
        pass

    def hook(method: str, path: str) -> None:
        if refuse[0]:
            raise Refused(f"{method} {path}")

    async def scenario() -> None:
        transport = Transport(max_connections=1, before_write=hook)
        async with build_http_client(
            running.base_url, TOKEN, timeout=timedelta(seconds=5), max_connections=1,
            transport=transport,
        ) as http:  # fmt: skip
            with pytest.raises(Refused, match="PATCH"):
                await http.patch(STEPS_PATH + "/z1", json={"x": 1})
            with pytest.raises(Refused, match="GET"):
                await http.get(STEPS_PATH)
            refuse[0] = False
            assert (await http.get(STEPS_PATH, params={"status": "RUNNING"})).status_code < 500

    asyncio.run(scenario())
    assert seen == [("GET", STEPS_PATH)]
