"""The platform API: listing, re-read and PATCH, with retries, limits and error translation.

With the modules below it, the only place that knows the platform's URLs and answer
shapes; everything leaving it is a Step, a plain dict or a `sweeper.errors` exception.
The client holds configuration and the pool; the rest is split as httpx splits its
client, transports and exceptions:

    api        PlatformClient: listing, re-read, write; reads retried here
     |-- exchange   one request and its answer, mapped once (the only httpx errors)
     |-- pages      the answer shapes and the paging loop (pure)
     |-- retries    RetryPolicy: attempts, backoff, Retry-After cap (frozen)
     |-- pacing     the rate limiter, the stop, waits a stop ends
     `-- refusals   TokenRefusals: refused (base URL, token) pairs, owned by the
                    side that runs sweeps (the daemon keeps one across reloads)

The `httpx.AsyncClient` (and so the transport, the token header and TLS) is built
outside and passed in; so are the clock check and the token refusals, which belong to
the sweeps, not to one client.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import structlog
from tenacity import RetryCallState

from sweeper import __version__
from sweeper.errors import (
    DeadlineReached,
    GuardRefused,
    InvalidAnswer,
    ListingNotFound,
    OutOfTime,
    PlatformUnavailable,
    StepNotFound,
    TokenRefused,
    Transient,
    WriteAppliedUnderSkew,
    WriteUnanswered,
)
from sweeper.exchange import STEPS_PATH, Clock, Exchange, Observers, utc_now
from sweeper.gate import LeaseGate
from sweeper.guards import ClockCheck
from sweeper.model import Step
from sweeper.pacing import Pacing
from sweeper.pages import Page, follow, step_of, written
from sweeper.policy import StepUpdate
from sweeper.refusals import TokenRefusals, credentials
from sweeper.retries import RetryPolicy

__all__ = ["STEPS_PATH", "Clock", "PlatformClient", "build_http_client", "step_url", "utc_now"]

log = structlog.get_logger("sweeper.api")
#: One encoder for every request body (json.dumps with separators builds one a call).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def step_url(step_id: str) -> str:
    """The step's URL path; the id is one percent-encoded segment, whatever it holds."""
    segment = quote(step_id, safe="")
    if segment in (".", ".."):
        # Dot segments would be resolved away by URL normalization.
        segment = segment.replace(".", "%2E")
    return f"{STEPS_PATH}/{segment}"


class PlatformClient:
    """Calls the platform through a prepared httpx.AsyncClient.

    Reads retry transient failures themselves. A write is one attempt: whether
    and when to try it again is the sweep's call, because every new attempt must
    follow its own re-read of the step.

    What it is handed and does not own: the lease `gate` ([leader]: asked just before
    each request goes out, LeaseLost: not sent), the `clock_check` (each answer's Date)
    and the token `refusals` (asked before each request; a refusal in the platform's
    own words is recorded there).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        pacing: Pacing | None = None,
        request_timeout: timedelta | None = None,
        gate: LeaseGate | None = None,
        clock_check: ClockCheck | None = None,
        refusals: TokenRefusals | None = None,
        observers: Observers | None = None,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # Requests are built from one absolute URL string: httpx then parses it
        # once, instead of parsing, merging with base_url and re-parsing for params.
        self._base = str(http.base_url).rstrip("/")
        self.retry = retry or RetryPolicy()
        self._pacing = pacing or Pacing()
        self.gate = gate
        self._refusals = refusals or TokenRefusals(monotonic)
        #: The (base URL, token) pair this client sends, by digest (refusals' key).
        self.credentials = credentials(self._base, http.headers.get("authorization"))
        self._monotonic = monotonic
        self._observers = observers or Observers()
        timeout = request_timeout.total_seconds() if request_timeout else http.timeout.read
        self._exchange = Exchange(
            http,
            timeout=timeout or None,
            max_retry_after=self.retry.max_retry_after,
            clock=clock,
            clock_check=clock_check,
            observers=self._observers,
        )

    @property
    def token_refused(self) -> bool:
        return self._refusals.refused(self.credentials)

    # -- the read side -------------------------------------------------------

    def list_running(
        self, started_before: datetime, page_size: int, give_up_at: float | None = None
    ) -> AsyncIterator[Page]:
        """Every page of RUNNING steps that started before the given moment.

        A cursor seen before means a listing that never ends: InvalidListing.
        """

        async def get(params: dict[str, str]) -> dict[str, Any]:
            try:
                return await self._call("GET", STEPS_PATH, params=params, give_up_at=give_up_at)
            except StepNotFound as exc:
                raise ListingNotFound(
                    f"GET {self._base}{STEPS_PATH}: HTTP 404: api.base_url points at no"
                    " platform (or at another version of it)",
                    http_status=404,
                    attempts=exc.attempts,
                ) from None

        return follow(get, started_before, page_size)

    async def get_step(
        self,
        step_id: str,
        organization_id: str,
        *,
        then_write: bool = False,
        give_up_at: float | None = None,
    ) -> Step | None:
        """The step as it is now, or None when it is not in that organization.

        `then_write` reserves the rate-limit slot of the write that follows, so
        that nothing waits between this answer and that write. No wait (retry,
        rate limit) runs past `give_up_at` (monotonic seconds): the read has failed.
        """
        try:
            answer = await self._call(
                "GET",
                step_url(step_id),
                params={"organizationId": organization_id},
                slots=2 if then_write else 1,
                give_up_at=give_up_at,
            )
        except StepNotFound:
            return None
        return step_of(answer, step_id, organization_id)

    async def settle_read(self, step_id: str, organization_id: str) -> Step | None:
        """One read of a step whose last write went unconfirmed, to settle its fate.

        One try, paced like any request; a stop request does not cancel it (it writes
        nothing and lasts at most api.timeout), nor does a deadline. It reports the step
        as the platform holds it, whatever the answer's Date says (the next request's
        answer trips the clock guard all the same).
        """
        path = step_url(step_id)
        try:
            answer = await self._try_once(
                "GET", path, {"organizationId": organization_id}, None, 1, settling=True
            )
        except StepNotFound:
            return None
        except Transient as exc:
            raise PlatformUnavailable(
                f"GET {self._base}{path}: {exc} (settling read)", http_status=exc.http_status
            ) from None
        return step_of(answer, step_id, organization_id)

    # -- the write side ------------------------------------------------------

    async def patch_step(
        self,
        step_id: str,
        update: StepUpdate,
        *,
        reserved: bool = False,
        give_up_at: float | None = None,
    ) -> dict[str, Any]:
        """Send the write once; returns the platform's `data` (the updated step).

        `reserved`: the re-read right before it (`then_write`) holds its rate-limit
        slot; otherwise the write waits for one (api.max_rate bounds every request),
        and DeadlineReached, nothing sent, when that slot comes after `give_up_at`.
        A transient failure is WriteUnanswered (the write may or may not have been
        applied); an answer whose `data.status` is not the status sent is
        InvalidAnswer.
        """
        body = {
            "organizationId": update.organization_id,
            "status": update.status.value,
            "completedAt": update.completed_at,
            "errorCode": update.error_code,
            "errorMessage": update.error_message,
            "errorDetails": update.error_details,
        }
        path = step_url(step_id)
        try:
            answer = await self._try_once(
                "PATCH", path, None, body, 1, slots=0 if reserved else 1, give_up_at=give_up_at
            )
        except OutOfTime as exc:
            raise DeadlineReached(f"PATCH {path}: not sent, {exc}", attempts=0) from None
        except Transient as exc:
            raise WriteUnanswered(
                f"PATCH {path}: {exc}", http_status=exc.http_status, retry_after=exc.retry_after
            ) from None
        except WriteAppliedUnderSkew as exc:
            try:
                exc.data = written(path, exc.data, update, step_id)
            except InvalidAnswer:
                # Not applied as sent, as far as the answer says: the guard still fires.
                raise GuardRefused(exc.guard, str(exc), **exc.figures) from None
            raise
        return written(path, answer, update, step_id)

    async def wait_to_retry(
        self, method: str, path: str, failure: WriteUnanswered, attempt: int
    ) -> None:
        """The wait before attempt `attempt + 1` of a write: Retry-After or backoff."""
        wait = self.retry.wait(attempt, failure.retry_after)
        self._retried(method, path, failure.http_status, str(failure), attempt, wait)
        await self._pacing.wait(wait)

    # -- one request, with its retries ---------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        slots: int = 1,
        give_up_at: float | None = None,
    ) -> dict[str, Any]:
        """A read, tried again after each transient failure as the retry policy says."""

        def before_sleep(state: RetryCallState) -> None:
            wait = state.upcoming_sleep  # tenacity's wait, decided before this call
            if give_up_at is not None and self._monotonic() + wait >= give_up_at:
                raise OutOfTime(f"the next try would wait past the deadline ({wait:.1f}s)")
            # tenacity sleeps only after an outcome (`and` only satisfies mypy).
            exc = state.outcome and state.outcome.exception()
            status = exc.http_status if isinstance(exc, Transient) else None
            self._retried(method, path, status, str(exc), state.attempt_number, wait)

        attempt = 0
        try:
            async for tried in self.retry.retrying(self._pacing.wait, before_sleep):
                with tried:
                    attempt = tried.retry_state.attempt_number
                    return await self._try_once(
                        method, path, params, None, attempt, slots=slots, give_up_at=give_up_at
                    )
        except Transient as exc:
            raise PlatformUnavailable(
                f"{method} {self._base}{path}: {exc} (after {attempt} tries)",
                http_status=exc.http_status,
                attempts=attempt,
            ) from None
        except OutOfTime as exc:
            raise DeadlineReached(
                f"{method} {self._base}{path}: given up, {exc} (after {attempt} tries)",
                attempts=attempt,
            ) from None
        raise AssertionError  # pragma: no cover  (unreachable: tenacity returns or raises)

    def _retried(
        self,
        method: str,
        path: str,
        http_status: int | None,
        error: str,
        attempt: int,
        wait: float,
    ) -> None:
        fields: dict[str, Any] = (
            {"http_status": http_status} if http_status is not None else {"error": error}
        )
        log.info(
            "request.retried",
            method=method,
            path=path,
            attempt=attempt,
            wait_seconds=round(wait, 3),
            **fields,
        )
        if self._observers.retry is not None:
            self._observers.retry(method, str(http_status) if http_status is not None else "error")

    async def _try_once(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        attempt: int,
        *,
        slots: int = 1,
        give_up_at: float | None = None,
        settling: bool = False,
    ) -> dict[str, Any]:
        """One try: not sent with a refused token, nor while stopping (but a settling
        read), nor before its rate-limit slot (`slots` 0: reserved by the re-read before)."""
        if self._refusals.refused(self.credentials):
            raise TokenRefused(f"{method} {path}: not sent, the token was refused", attempts=0)
        await self._pacing.ready(f"{method} {path}", slots, give_up_at, even_stopping=settling)
        url = self._base + path
        if params:
            url += "?" + urlencode(params, quote_via=quote)
        headers = None
        payload = None
        if body is not None:
            payload = _COMPACT_JSON.encode(body).encode()
            headers = {"Content-Type": "application/json"}
        if self.gate is not None:
            # As late as possible: after every wait (rate limit, retry), with nothing
            # that waits between this check and the send, which api.timeout bounds.
            self.gate.check(method)
        try:
            return await self._exchange.send(
                method, path, url, payload, headers, attempt, any_date=settling
            )
        except TokenRefused:
            self._refusals.refuse(self.credentials)  # no further call with it
            raise


def build_http_client(
    base_url: str,
    token: str,
    *,
    timeout: timedelta,
    max_connections: int,
    verify: bool | ssl.SSLContext = True,
    transport: httpx.AsyncBaseTransport | None = None,
    before_write: Callable[[str, str], None] | None = None,
) -> httpx.AsyncClient:
    """The one place the bearer token is attached; redirects are never followed.

    `before_write(method, path)`: called just before each request's bytes are written
    (see `sweeper.transport.BeforeWrite`)."""
    if transport is None:
        from sweeper.transport import Transport

        transport = Transport(
            max_connections=max_connections, verify=verify, before_write=before_write
        )
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {token}", "User-Agent": f"sweeper/{__version__}"},
        timeout=timeout.total_seconds(),
        follow_redirects=False,
        # TLS and the pool's limits are the transport's: httpx applies its own only to
        # a transport it builds (and env proxies only then), never to one passed in.
        transport=transport,
    )
