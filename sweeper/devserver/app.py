"""The stand-in platform as an ASGI app (starlette): auth, faults, Date header, routes."""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sweeper.devserver.state import PlatformState, Refusal

STEPS_PATH = "/api/data-platform/workflow-run-steps"

#: A test hook: return a Response to answer with it instead of the platform.
Intercept = Callable[[Request], Awaitable[Response | None]]


@dataclass
class Faults:
    """Faults on demand: latency on every answer, a share of 503/429, a skewed clock."""

    latency: timedelta = timedelta(0)
    error_rate: float = 0.0
    clock_skew: timedelta = timedelta(0)
    retry_after_seconds: int = 1
    send_date: bool = True
    seed: int | str = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"faults-{self.seed}")


@dataclass
class Counters:
    """What the stand-in saw: requests by method, faults injected, and arrivals in order."""

    requests: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    faults: int = 0
    arrivals: list[tuple[float, str, str]] = field(default_factory=list)
    #: When the state was read or written for each request (after any latency).
    handled: list[tuple[float, str, str]] = field(default_factory=list)
    keep_arrivals: bool = False


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _refusal(exc: Refusal) -> Response:
    return _json(
        exc.status, {"success": False, "error": {"code": exc.code, "message": exc.message}}
    )


def _no_such_route() -> dict[str, Any]:
    raise Refusal(404, "NOT_FOUND", "no such route")


def create_app(
    state: PlatformState,
    token: str,
    faults: Faults | None = None,
    intercept: Intercept | None = None,
    also_tokens: Sequence[str] = (),
) -> Starlette:
    """`also_tokens`: more tokens accepted, so that each client (say, each copy of a
    daemon under leader election) can be told apart by its own."""
    faults = faults or Faults()
    counters = Counters()
    accepted = [f"Bearer {t}".encode() for t in (token, *also_tokens)]

    async def answer(request: Request, handle: Callable[[], dict[str, Any]]) -> Response:
        counters.requests += 1
        counters.by_method[request.method] = counters.by_method.get(request.method, 0) + 1
        if counters.keep_arrivals:
            counters.arrivals.append((time.time(), request.method, request.url.path))
        if faults.latency:
            await asyncio.sleep(faults.latency.total_seconds())
        response = await _answer(request, handle)
        if faults.send_date:
            date = state.clock() + faults.clock_skew
            response.headers["Date"] = email.utils.format_datetime(date, usegmt=True)
        return response

    async def _answer(request: Request, handle: Callable[[], dict[str, Any]]) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not any([hmac.compare_digest(given, expected) for expected in accepted]):
            return _json(
                401,
                {
                    "success": False,
                    "error": {"code": "UNAUTHORIZED", "message": "bad or missing bearer token"},
                },
            )
        if intercept is not None and (custom := await intercept(request)) is not None:
            return custom
        if faults.error_rate and faults.rng.random() < faults.error_rate:
            counters.faults += 1
            if faults.rng.random() < 0.5:
                return _json(
                    429,
                    {"success": False, "error": {"code": "RATE_LIMITED", "message": "slow down"}},
                    headers={"Retry-After": str(faults.retry_after_seconds)},
                )
            return _json(
                503, {"success": False, "error": {"code": "UNAVAILABLE", "message": "try again"}}
            )
        try:
            if counters.keep_arrivals:
                counters.handled.append((time.time(), request.method, request.url.path))
            return _json(200, handle())
        except Refusal as exc:
            return _refusal(exc)

    async def list_steps(request: Request) -> Response:
        return await answer(request, lambda: state.list_steps(dict(request.query_params)))

    async def one_step(request: Request) -> Response:
        # The id is one percent-encoded segment: read it from the raw path, where
        # an encoded "/" is still distinguishable from a real one.
        raw = request.scope.get("raw_path") or request.url.path.encode()
        segment = raw.decode("ascii", "replace").split("?", 1)[0][len(STEPS_PATH) + 1 :]
        if not segment or "/" in segment:
            return await answer(request, _no_such_route)
        step_id = unquote(segment, errors="strict")
        if request.method == "GET":
            org = request.query_params.get("organizationId")
            return await answer(request, lambda: state.get_step(step_id, org))
        body = await request.body()
        return await answer(request, lambda: state.patch_step(step_id, body))

    app = Starlette(
        routes=[
            Route(STEPS_PATH, list_steps, methods=["GET"]),
            Route(STEPS_PATH + "/{step_id:path}", one_step, methods=["GET", "PATCH"]),
        ]
    )
    app.state.platform = state
    app.state.counters = counters
    app.state.faults = faults
    return app
