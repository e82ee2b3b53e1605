"""Shared test doubles: a settable clock and a fake platform behind httpx.MockTransport."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx

from sweeper.api import STEPS_PATH
from sweeper.devserver.state import PlatformState, Refusal
from sweeper.model import Step, format_timestamp

TOKEN = "s3cr3t-T0KEN-value-xyz"
NOW = datetime(2026, 5, 23, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """UTC wall clock and monotonic seconds that move only when told."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.seconds = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.seconds

    def advance(self, delta: timedelta) -> None:
        self.now += delta
        self.seconds += delta.total_seconds()


def step(
    step_id: str = "s1",
    *,
    org: str = "org-a",
    status: str = "RUNNING",
    started: timedelta = timedelta(hours=5),
    updated: timedelta | None = None,
    heartbeat: timedelta | None = None,
    now: datetime = NOW,
    **extra: Any,
) -> Step:
    """A Step whose times are given as 'this long before now'."""
    return Step(
        step_id=step_id,
        organization_id=org,
        status=status,
        started_at=now - started,
        updated_at=None if updated is None else now - updated,
        last_heartbeat_at=None if heartbeat is None else now - heartbeat,
        **extra,
    )


def record(
    step_id: str,
    *,
    org: str = "org-a",
    started: timedelta = timedelta(hours=5),
    heartbeat: timedelta | None = None,
    now: datetime = NOW,
    **extra: Any,
) -> dict[str, Any]:
    """A wire record, as the read side sends it."""
    out: dict[str, Any] = {
        "stepId": step_id,
        "organizationId": org,
        "status": "RUNNING",
        "startedAt": format_timestamp(now - started),
    }
    if heartbeat is not None:
        out["lastHeartbeatAt"] = format_timestamp(now - heartbeat)
    out.update(extra)
    return out


Handler = Callable[[httpx.Request], httpx.Response | None]


@dataclass
class FakePlatform:
    """The stand-in's state behind a MockTransport; records every request it sees.

    `before` hooks may answer a request themselves (return a Response) or let it
    through (return None). Answers carry a Date header from the given clock.
    """

    clock: FakeClock
    token: str = TOKEN
    state: PlatformState = field(init=False)
    requests: list[httpx.Request] = field(default_factory=list)
    before: list[Handler] = field(default_factory=list)
    date_skew: timedelta = timedelta(0)
    send_date: bool = True

    def __post_init__(self) -> None:
        self.state = PlatformState(clock=self.clock)

    def add(self, *records: dict[str, Any]) -> None:
        for r in records:
            self.state.add(dict(r))

    @property
    def patches(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "PATCH"]

    def patch_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.patches]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self._route(request)
        if self.send_date:
            date = self.clock() + self.date_skew
            response.headers["Date"] = email.utils.format_datetime(date, usegmt=True)
        return response

    def _route(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json={"success": False})
        for hook in self.before:
            answer = hook(request)
            if answer is not None:
                return answer
        raw_path = request.url.raw_path.decode().split("?")[0]
        try:
            if raw_path == STEPS_PATH:
                return httpx.Response(200, json=self.state.list_steps(dict(request.url.params)))
            segment = raw_path.removeprefix(STEPS_PATH + "/")
            assert "/" not in segment, "a step id must travel as one path segment"
            step_id = unquote(segment)
            if request.method == "GET":
                org = request.url.params.get("organizationId")
                return httpx.Response(200, json=self.state.get_step(step_id, org))
            return httpx.Response(200, json=self.state.patch_step(step_id, request.content))
        except Refusal as exc:
            return httpx.Response(
                exc.status,
                json={"success": False, "error": {"code": exc.code, "message": exc.message}},
            )
