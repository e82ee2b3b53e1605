"""The one fake of each outside thing for unit tests: a settable clock and a fake platform.

`FakePlatform` is the stand-in's own state (`PlatformState`) behind an
`httpx.MockTransport`, so unit tests go through the real HTTP path. Faults are hooks
(`before`) that may answer a request themselves; the common ones are built here
(`apply_then`, `answer_rereads`, `schedule`). End-to-end tests use the real stand-in
server on loopback instead (`tests/e2e.py`).
"""

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

    async def sleep(self, seconds: float) -> None:
        """A sleep that moves this clock instead of waiting (the client's `sleep=`)."""
        self.advance(timedelta(seconds=seconds))


async def no_sleep(seconds: float) -> None:
    """A sleep that neither waits nor moves any clock."""
    return None


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
Answer = Callable[[], httpx.Response]


def refusal(status: int = 401, **headers: str) -> httpx.Response:
    """The platform's own refusal of the token: 401/403 in its envelope."""
    body = {"success": False, "error": {"code": "UNAUTHORIZED", "message": "bad token"}}
    return httpx.Response(status, headers=headers, json=body)


def is_listing(request: httpx.Request) -> bool:
    return request.url.path == STEPS_PATH


def is_reread(request: httpx.Request) -> bool:
    """A GET of one step (not the listing)."""
    return request.method == "GET" and request.url.path != STEPS_PATH


def step_id_of(request: httpx.Request) -> str:
    return unquote(request.url.raw_path.decode().split("?")[0].rsplit("/", 1)[1])


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

    def sent(self, method: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # Faults -------------------------------------------------------------------------

    def apply_then(
        self,
        answer: Answer,
        *,
        step_id: str | None = None,
        from_attempt: int = 1,
        times: int | None = None,
    ) -> list[int]:
        """PATCHes (of `step_id`, or of any step) from the given attempt on are applied,
        then answered `answer()` (which may raise: a lost answer); earlier ones are
        refused unapplied (503); after `times` of them, the rest go through as usual.
        Returns the list of attempts seen."""
        seen: list[int] = []
        applied: list[int] = []

        def hook(request: httpx.Request) -> httpx.Response | None:
            if request.method != "PATCH":
                return None
            target = step_id_of(request)
            if step_id is not None and target != step_id:
                return None
            if times is not None and len(applied) >= times:
                return None
            seen.append(1)
            if len(seen) < from_attempt:
                return httpx.Response(503)
            applied.append(1)
            self.state.patch_step(target, request.content)
            return answer()

        self.before.append(hook)
        return seen

    def answer_rereads(self, response: httpx.Response) -> None:
        """Every re-read of a step (not the listing) is answered so."""

        def hook(request: httpx.Request) -> httpx.Response | None:
            return response if is_reread(request) else None

        self.before.append(hook)

    def beat_when_read(self, alive: Callable[[str], bool]) -> None:
        """The steps `alive` selects are alive: every re-read of one shows a heartbeat a
        second old (their workers beat all the time)."""

        def hook(request: httpx.Request) -> None:
            step_id = step_id_of(request)
            if is_reread(request) and alive(step_id):
                data = dict(self.state.steps[step_id])
                data["lastHeartbeatAt"] = format_timestamp(self.clock() - timedelta(seconds=1))
                self.state.add(data)

        self.before.append(hook)

    def schedule(
        self, *answers: Answer | None, when: Callable[[httpx.Request], bool] = lambda r: True
    ) -> None:
        """A fault schedule: the requests `when` selects get these answers in order
        (None lets that one through); after the schedule, every request goes through."""
        queue = list(answers)

        def hook(request: httpx.Request) -> httpx.Response | None:
            if not queue or not when(request):
                return None
            answer = queue.pop(0)
            return None if answer is None else answer()

        self.before.append(hook)

    # The stand-in behind the transport ------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self._route(request)
        if self.send_date:
            date = self.clock() + self.date_skew
            response.headers["Date"] = email.utils.format_datetime(date, usegmt=True)
        return response

    def _route(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return refusal()
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
