"""The platform API: listing, re-read and PATCH, with retries, limits and error translation.

This is the only module that knows the platform's URLs and answer shapes, and the
only one that touches httpx exceptions: everything leaving it is a Step, a plain
dict or a `sweeper.errors` exception. The `httpx.AsyncClient` (and so the
transport, the token header and TLS) is built outside and passed in.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from sweeper import __version__
from sweeper.answers import Transient, classify
from sweeper.errors import (
    Interrupted,
    InvalidAnswer,
    PlatformUnavailable,
    StepNotFound,
    TokenRefused,
)
from sweeper.guards import ClockCheck
from sweeper.model import Step, format_timestamp, parse_step
from sweeper.policy import StepUpdate

STEPS_PATH = "/api/data-platform/workflow-run-steps"
#: Larger answers are refused unread: a page of 1,000 steps is well under 1 MiB.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
RequestObserver = Callable[[str, str], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


def step_url(step_id: str) -> str:
    """The step's URL path; the id is one percent-encoded segment, whatever it holds."""
    segment = quote(step_id, safe="")
    if segment in (".", ".."):
        # Dot segments would be resolved away by URL normalization.
        segment = segment.replace(".", "%2E")
    return f"{STEPS_PATH}/{segment}"


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A listing record that broke the contract, with what was wrong (never its values)."""

    step_id: str | None
    organization_id: str | None
    problems: str


@dataclass(frozen=True, slots=True)
class Page:
    records: list[Step | InvalidRecord]
    next_cursor: str | None


class RateLimiter:
    """At most `rate` requests per second, spaced evenly; 0 means no limit."""

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._monotonic = monotonic
        self._sleep = sleep
        self._next = 0.0

    async def acquire(self) -> None:
        if not self._interval:
            return
        now = self._monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)


class PlatformClient:
    """Calls the platform through a prepared httpx.AsyncClient."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_attempts: int = 5,
        max_retry_after: timedelta = timedelta(seconds=60),
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        limiter: RateLimiter | None = None,
        clock_check: ClockCheck | None = None,
        clock: Clock = utc_now,
        sleep: Sleep | None = None,
        stop: asyncio.Event | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._http = http
        # Requests are built from one absolute URL string: httpx then parses it
        # once, instead of parsing, merging with base_url and re-parsing for params.
        self._base = str(http.base_url).rstrip("/")
        self._max_attempts = max_attempts
        self._max_retry_after = max_retry_after.total_seconds()
        self._backoff = wait_random_exponential(multiplier=backoff_initial, max=backoff_max)
        self._limiter = limiter or RateLimiter(0)
        self.clock_check = clock_check
        self._clock = clock
        self._sleep = sleep or self._interruptible_sleep
        self._stop = stop
        self._observer = observer
        self.token_refused = False

    def begin_sweep(self) -> None:
        """Each sweep warns afresh about a missing Date and tries the token again."""
        self.token_refused = False
        if self.clock_check is not None:
            self.clock_check.begin_sweep()

    # -- the read side -------------------------------------------------------

    async def list_running(self, started_before: datetime, page_size: int) -> AsyncIterator[Page]:
        """Every page of RUNNING steps that started before the given moment."""
        cursor: str | None = None
        while True:
            params = {
                "status": "RUNNING",
                "startedBefore": format_timestamp(started_before),
                "limit": str(page_size),
            }
            if cursor is not None:
                params["cursor"] = cursor
            page = _parse_page(await self._call("GET", STEPS_PATH, params=params))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_step(self, step_id: str, organization_id: str) -> Step | None:
        """The step as it is now, or None when it is not in that organization."""
        try:
            answer = await self._call(
                "GET", step_url(step_id), params={"organizationId": organization_id}
            )
        except StepNotFound:
            return None
        try:
            return parse_step(answer.get("data"))
        except ValidationError as exc:
            raise InvalidAnswer(
                f"re-read: the step breaks the contract ({_problems(exc)})"
            ) from None

    # -- the write side ------------------------------------------------------

    async def patch_step(self, step_id: str, update: StepUpdate) -> dict[str, Any]:
        """Send the write; returns the platform's `data` (the updated step)."""
        body = {
            "organizationId": update.organization_id,
            "status": update.status.value,
            "completedAt": update.completed_at,
            "errorCode": update.error_code,
            "errorMessage": update.error_message,
            "errorDetails": update.error_details,
        }
        answer = await self._call("PATCH", step_url(step_id), body=body)
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    # -- one request, with its retries ---------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(Transient),
            sleep=self._sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return await self._try_once(method, path, params, body, attempts)
        except Transient as exc:
            raise PlatformUnavailable(
                f"{method} {path}: {exc} (after {attempts} tries)",
                http_status=exc.http_status,
                attempts=attempts,
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

    async def _interruptible_sleep(self, seconds: float) -> None:
        if self._stop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            return

    async def _try_once(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        attempt: int,
    ) -> dict[str, Any]:
        if self.token_refused:
            raise TokenRefused(f"{method} {path}: not sent, the token was refused", attempts=0)
        if self._stop is not None and self._stop.is_set():
            raise Interrupted(f"{method} {path}: not sent, stopping")
        await self._limiter.acquire()
        url = self._base + path
        if params:
            url += "?" + urlencode(params, quote_via=quote)
        headers = None
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
        try:
            response = await self._http.send(
                self._http.build_request(method, url, content=payload, headers=headers),
                stream=True,
            )
        except httpx.TimeoutException:
            self._observe(method, "timeout")
            raise Transient("timed out", None, None) from None
        except httpx.TransportError as exc:
            self._observe(method, "error")
            raise Transient(f"transport error ({type(exc).__name__})", None, None) from None
        try:
            self._observe(method, str(response.status_code))
            if self.clock_check is not None:
                self.clock_check.observe(response.headers.get("date"))
            content = await self._read_capped(response, method, path)
        finally:
            await response.aclose()
        try:
            return classify(
                f"{method} {path}",
                response.status_code,
                response.headers,
                content,
                attempt=attempt,
                now=self._clock(),
                max_retry_after=self._max_retry_after,
            )
        except TokenRefused:
            self.token_refused = True  # no further call with a refused token
            raise

    async def _read_capped(self, response: httpx.Response, method: str, path: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            raise InvalidAnswer(f"{method} {path}: answer of {declared} bytes refused unread")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise InvalidAnswer(f"{method} {path}: answer over {MAX_ANSWER_BYTES} bytes")
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise Transient("timed out reading the answer", response.status_code, None) from None
        except httpx.TransportError as exc:
            raise Transient(
                f"answer cut off ({type(exc).__name__})", response.status_code, None
            ) from None
        return b"".join(chunks)

    def _observe(self, method: str, status: str) -> None:
        if self._observer is not None:
            self._observer(method, status)


def _parse_page(answer: dict[str, Any]) -> Page:
    data = answer.get("data")
    if not isinstance(data, list):
        raise InvalidAnswer("listing: data is not a list")
    cursor = answer.get("nextCursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise InvalidAnswer("listing: nextCursor is neither a string nor null")
    records: list[Step | InvalidRecord] = []
    for record in data:
        try:
            records.append(parse_step(record))
        except ValidationError as exc:
            records.append(_invalid(record, exc))
    return Page(records=records, next_cursor=cursor)


def _invalid(record: Any, exc: ValidationError) -> InvalidRecord:
    step_id = org = None
    if isinstance(record, dict):
        step_id = record.get("stepId") if isinstance(record.get("stepId"), str) else None
        org = record.get("organizationId")
        org = org if isinstance(org, str) else None
    return InvalidRecord(step_id=step_id, organization_id=org, problems=_problems(exc))


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    )


def build_http_client(
    base_url: str,
    token: str,
    *,
    timeout: timedelta,
    max_connections: int,
    verify: bool | ssl.SSLContext = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one place the bearer token is attached; redirects are never followed."""
    if transport is None:
        from sweeper.transport import AiohttpTransport

        transport = AiohttpTransport(max_connections=max_connections, verify=verify)
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}", "User-Agent": f"sweeper/{__version__}"},
        timeout=timeout.total_seconds(),
        follow_redirects=False,
        verify=verify,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
    )
