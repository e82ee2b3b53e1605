"""The platform API: listing, re-read and PATCH, with retries, limits and error translation.

This is the only module that knows the platform's URLs and answer shapes, and the
only one that touches httpx exceptions: everything leaving it is a Step, a plain
dict or a `sweeper.errors` exception. The `httpx.AsyncClient` (and so the
transport, the token header and TLS) is built outside and passed in.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import httpx
import structlog
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from sweeper import __version__
from sweeper.answers import DEEP, TOKEN_STATUSES, classify, platform_refusal
from sweeper.encodings import Decoded, EncodingError
from sweeper.errors import (
    ClockSkewRefused,
    DeadlineReached,
    GuardRefused,
    Interrupted,
    InvalidAnswer,
    InvalidListing,
    ListingNotFound,
    OutOfTime,
    PlatformUnavailable,
    StepNotFound,
    SweeperError,
    TokenRefused,
    Transient,
    WriteAppliedUnderSkew,
    WriteUnanswered,
)
from sweeper.gate import LeaseGate
from sweeper.guards import ClockCheck
from sweeper.model import Step, format_timestamp, parse_step
from sweeper.policy import StepUpdate

STEPS_PATH = "/api/data-platform/workflow-run-steps"
#: Larger answers are refused unread: a page of 1,000 steps is well under 1 MiB.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
RequestObserver = Callable[[str, str], None]
RetryObserver = Callable[[str, str], None]


class RequestWatch(Protocol):
    """Outage memory's view of every request (outages.OutageLog): when it went out, and
    whether the platform itself answered it."""

    def sent(self) -> datetime: ...

    def answered(self, sent_at: datetime, reachable: bool) -> None: ...


#: A refused token is tried again after this long even if it did not change:
#: a platform whose token list was fixed should not need every sweeper restarted.
TOKEN_RETRY_SECONDS = 3600.0

log = structlog.get_logger("sweeper.api")
#: One encoder for every request body (json.dumps with separators builds one a call).
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def utc_now() -> datetime:
    return datetime.now(UTC)


def sleep_until_stopped(stop: asyncio.Event | None) -> Sleep:
    """A sleep that a stop request ends early (retry waits, the rate limiter's)."""

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            return

    return sleep


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

    async def acquire(self, slots: int = 1, give_up_at: float | None = None) -> None:
        """Wait for `slots` requests' worth of budget, then send them back to back.

        OutOfTime, reserving nothing, when the slot comes at or after `give_up_at`.
        """
        if not self._interval:
            return
        now = self._monotonic()
        slot = max(now, self._next)
        if give_up_at is not None and slot >= give_up_at:
            raise OutOfTime(f"the rate limit's next slot is {slot - now:.1f}s away")
        self._next = slot + self._interval * slots
        if slot > now:
            await self._sleep(slot - now)


class PlatformClient:
    """Calls the platform through a prepared httpx.AsyncClient.

    Reads retry transient failures themselves. A write is one attempt: whether
    and when to try it again is the sweep's call, because every new attempt must
    follow its own re-read of the step.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_attempts: int = 5,
        max_retry_after: timedelta = timedelta(seconds=60),
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        request_timeout: timedelta | None = None,
        limiter: RateLimiter | None = None,
        clock_check: ClockCheck | None = None,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep | None = None,
        stop: asyncio.Event | None = None,
        observer: RequestObserver | None = None,
        on_retry: RetryObserver | None = None,
        gate: LeaseGate | None = None,
        watch: RequestWatch | None = None,
    ) -> None:
        self._http = http
        self._watch = watch
        #: [leader]: asked just before each request goes out (LeaseLost: not sent).
        self.gate = gate
        # Requests are built from one absolute URL string: httpx then parses it
        # once, instead of parsing, merging with base_url and re-parsing for params.
        self._base = str(http.base_url).rstrip("/")
        self.max_attempts = max_attempts
        self._max_retry_after = max_retry_after.total_seconds()
        self._backoff = wait_random_exponential(multiplier=backoff_initial, max=backoff_max)
        timeout = request_timeout.total_seconds() if request_timeout else http.timeout.read
        self._timeout = timeout or None
        self._limiter = limiter or RateLimiter(0)
        self.clock_check = clock_check
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep or sleep_until_stopped(stop)
        self._stop = stop
        self._observer = observer
        self._on_retry = on_retry
        self._token_refused_at: float | None = None
        #: Every (base URL, token) pair refused by this client or those it replaced, by
        #: digest (no old token kept): a reload back to one stays refused.
        self._refused_pairs: dict[str, float] = {}

    @property
    def token_refused(self) -> bool:
        return self._token_refused_at is not None

    def begin_sweep(self) -> None:
        """Each sweep warns afresh about a missing Date; a refused token stays refused
        for TOKEN_RETRY_SECONDS (a new token comes with a new client: a reload)."""
        if (
            self._token_refused_at is not None
            and self._monotonic() - self._token_refused_at >= TOKEN_RETRY_SECONDS
        ):
            self._token_refused_at = None
        if self.clock_check is not None:
            self.clock_check.begin_sweep()

    def carry_refusal(self, previous: PlatformClient) -> None:
        """A client rebuilt (a reload) keeps the refusal of the one it replaces only when
        both send the same token to the same base URL: a refusal belongs to that pair,
        and a fixed URL or a new token gets its chance at once."""
        now = self._monotonic()
        refused = dict(previous._refused_pairs)
        if previous._token_refused_at is not None:
            refused[previous._credentials()] = previous._token_refused_at
        self._refused_pairs = {
            pair: at for pair, at in refused.items() if now - at < TOKEN_RETRY_SECONDS
        }
        self._token_refused_at = self._refused_pairs.pop(self._credentials(), None)

    def _credentials(self) -> str:
        pair = f"{self._base}\n{self._http.headers.get('authorization')}"
        return hashlib.sha256(pair.encode()).hexdigest()

    # -- the read side -------------------------------------------------------

    async def list_running(
        self, started_before: datetime, page_size: int, give_up_at: float | None = None
    ) -> AsyncIterator[Page]:
        """Every page of RUNNING steps that started before the given moment.

        A cursor seen before means a listing that never ends: InvalidListing.
        """
        cursor: str | None = None
        seen: set[str] = set()
        pages = 0
        while True:
            params = {
                "status": "RUNNING",
                "startedBefore": format_timestamp(started_before),
                "limit": str(page_size),
            }
            if cursor is not None:
                params["cursor"] = cursor
            try:
                answer = await self._call("GET", STEPS_PATH, params=params, give_up_at=give_up_at)
            except StepNotFound as exc:
                raise ListingNotFound(
                    f"GET {self._base}{STEPS_PATH}: HTTP 404: api.base_url points at no"
                    " platform (or at another version of it)",
                    http_status=404,
                    attempts=exc.attempts,
                ) from None
            page = _parse_page(answer)
            del answer  # one page in memory at a time, not two
            pages += 1
            next_cursor = page.next_cursor
            yield page
            del page
            if next_cursor is None:
                return
            if next_cursor in seen:
                raise InvalidListing(
                    f"listing: page {pages} repeats a nextCursor already followed"
                    " (the listing would never end)"
                )
            seen.add(next_cursor)
            cursor = next_cursor

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
        return _step_of(answer, step_id, organization_id)

    async def settle_read(self, step_id: str, organization_id: str) -> Step | None:
        """One read of a step whose last write went unconfirmed, to settle its fate.

        One try, paced like any request; a stop request does not cancel it (it writes
        nothing and lasts at most api.timeout), nor does a deadline.
        """
        path = step_url(step_id)
        try:
            answer = await self._try_once(
                "GET", path, {"organizationId": organization_id}, None, 1, even_stopping=True
            )
        except StepNotFound:
            return None
        except Transient as exc:
            raise PlatformUnavailable(
                f"GET {self._base}{path}: {exc} (settling read)", http_status=exc.http_status
            ) from None
        return _step_of(answer, step_id, organization_id)

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
                "PATCH", path, None, body, 1, paced=not reserved, give_up_at=give_up_at
            )
        except OutOfTime as exc:
            raise DeadlineReached(f"PATCH {path}: not sent, {exc}", attempts=0) from None
        except Transient as exc:
            raise WriteUnanswered(
                f"PATCH {path}: {exc}", http_status=exc.http_status, retry_after=exc.retry_after
            ) from None
        except WriteAppliedUnderSkew as exc:
            try:
                exc.data = _written(path, exc.data, update, step_id)
            except InvalidAnswer:
                # Not applied as sent, as far as the answer says: the guard still fires.
                raise GuardRefused(exc.guard, str(exc), **exc.figures) from None
            raise
        return _written(path, answer, update, step_id)

    async def wait_to_retry(
        self, method: str, path: str, failure: WriteUnanswered, attempt: int
    ) -> None:
        """The wait before attempt `attempt + 1` of a write: Retry-After or backoff."""
        wait = failure.retry_after
        if wait is None:
            state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
            state.attempt_number = attempt
            wait = float(self._backoff(state))
        self._retried(method, path, failure.http_status, str(failure), attempt, wait)
        await self._sleep(wait)

    # -- one request, with its retries ---------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        slots: int = 1,
        give_up_at: float | None = None,
    ) -> dict[str, Any]:
        def before_sleep(state: RetryCallState) -> None:
            wait = state.next_action.sleep if state.next_action else 0.0
            if give_up_at is not None and self._monotonic() + wait >= give_up_at:
                raise OutOfTime(f"the next try would wait past the deadline ({wait:.1f}s)")
            self._before_retry(method, path, state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(Transient),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return await self._try_once(
                        method, path, params, body, attempts, slots=slots, give_up_at=give_up_at
                    )
        except Transient as exc:
            raise PlatformUnavailable(
                f"{method} {self._base}{path}: {exc} (after {attempts} tries)",
                http_status=exc.http_status,
                attempts=attempts,
            ) from None
        except OutOfTime as exc:
            raise DeadlineReached(
                f"{method} {self._base}{path}: given up, {exc} (after {attempts} tries)",
                attempts=attempts,
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

    def _before_retry(self, method: str, path: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        status = exc.http_status if isinstance(exc, Transient) else None
        self._retried(method, path, status, str(exc), state.attempt_number, wait)

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
        if self._on_retry is not None:
            self._on_retry(method, str(http_status) if http_status is not None else "error")

    async def _try_once(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        attempt: int,
        *,
        slots: int = 1,
        paced: bool = True,
        give_up_at: float | None = None,
        even_stopping: bool = False,
    ) -> dict[str, Any]:
        if self._token_refused_at is not None:
            raise TokenRefused(f"{method} {path}: not sent, the token was refused", attempts=0)
        stop = None if even_stopping else self._stop  # a settling read goes out anyway
        if stop is not None and stop.is_set():
            raise Interrupted(f"{method} {path}: not sent, stopping")
        if paced:
            await self._limiter.acquire(slots, give_up_at)
            if stop is not None and stop.is_set():
                raise Interrupted(f"{method} {path}: not sent, stopping")
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
        # A settling read reports the step as the platform holds it, whatever its Date
        # says (the next request's answer trips the clock guard all the same).
        any_date = even_stopping
        if self._watch is None:
            return await self._exchange_once(
                method, path, url, payload, headers, attempt, any_date=any_date
            )
        sent_at = self._watch.sent()
        reachable = [False]
        try:
            return await self._exchange_once(
                method, path, url, payload, headers, attempt, reachable, any_date=any_date
            )
        finally:
            # After the Date check, so that the sample is laid on the platform's clock as
            # this answer showed it.
            self._watch.answered(sent_at, reachable[0])

    async def _exchange_once(
        self,
        method: str,
        path: str,
        url: str,
        payload: bytes | None,
        headers: dict[str, str] | None,
        attempt: int,
        reachable: list[bool] | None = None,
        *,
        any_date: bool = False,
    ) -> dict[str, Any]:
        """One request and its answer. `reachable` is set when the platform itself
        answered: a success, or a refusal in its own words (outage memory counts every
        other answer, a gateway's page included, as the platform being away)."""
        try:
            # api.timeout bounds the whole request: connecting, sending, and reading
            # the answer to its last byte (a trickling answer cannot hold a sweep).
            async with asyncio.timeout(self._timeout):
                status, response_headers, content = await self._exchange(
                    method, url, payload, headers
                )
        except TimeoutError:
            self._observe(method, "timeout")
            raise Transient(
                f"no complete answer within api.timeout ({self._timeout:g}s)", None, None
            ) from None
        date = response_headers.get("date")
        problem = self.clock_check.check(date) if self.clock_check is not None else None
        if any_date or (status in TOKEN_STATUSES and platform_refusal(status, content)):
            problem = None  # a refused token is the answer that matters: stop everything
        if problem is not None and not (method == "PATCH" and 200 <= status < 300):
            raise problem
        try:
            answer = classify(
                f"{method} {path}",
                status,
                response_headers,
                content,
                attempt=attempt,
                now=self._clock(),
                max_retry_after=self._max_retry_after,
            )
        except SweeperError as exc:
            if reachable is not None:
                # A 404 on the listing itself is never the platform's: a gateway's.
                listing_gone = path == STEPS_PATH and status == 404
                reachable[0] = not listing_gone and platform_refusal(status, content)
            if isinstance(exc, TokenRefused):
                self._token_refused_at = self._monotonic()  # no further call with it
                raise
            if problem is not None:
                raise problem from None  # a 2xx write that is no success: the guard wins
            raise
        if reachable is not None:
            reachable[0] = True
        if isinstance(problem, ClockSkewRefused):
            # The platform applied the write: say so, and let the guard stop the rest.
            raise WriteAppliedUnderSkew(problem, answer)
        return answer

    async def _exchange(
        self, method: str, url: str, payload: bytes | None, headers: dict[str, str] | None
    ) -> tuple[int, httpx.Headers, bytes]:
        try:
            response = await self._http.send(
                self._http.build_request(method, url, content=payload, headers=headers),
                stream=True,
            )
        except httpx.TimeoutException:
            self._observe(method, "timeout")
            raise Transient(f"timed out ({_where(url)})", None, None) from None
        except httpx.HTTPError as exc:
            self._observe(method, "error")
            raise Transient(
                f"{describe_transport_error(exc)} ({_where(url)})", None, None
            ) from None
        try:
            self._observe(method, str(response.status_code))
            content = await self._read_capped(response, method, url)
        finally:
            await response.aclose()
        return response.status_code, response.headers, content

    async def _read_capped(self, response: httpx.Response, method: str, url: str) -> bytes:
        """The answer's body, decoded, refused once it passes MAX_ANSWER_BYTES: the bytes
        received are counted as they come, and so is every Content-Encoding layer's
        output, a bounded piece at a time (a small gzip bomb never inflates in memory)."""
        declared = response.headers.get("content-length")
        too_large = declared is not None and declared.isascii() and declared.isdigit()
        if too_large and int(declared or 0) > MAX_ANSWER_BYTES:
            raise InvalidAnswer(f"{method} {url}: answer of {declared} bytes refused unread")
        chunks: list[bytes] = []
        received = 0
        encodings, body = _raw_body(response)
        try:
            decoded = Decoded(encodings, MAX_ANSWER_BYTES)
            async for raw in body:
                received += len(raw)
                if received > MAX_ANSWER_BYTES:
                    raise InvalidAnswer(f"{method} {url}: answer over {MAX_ANSWER_BYTES} bytes")
                chunks.extend(decoded.feed(raw))
            decoded.finish()
        except EncodingError as exc:
            raise InvalidAnswer(
                f"{method} {url}: the answer's Content-Encoding could not be decoded ({exc})",
                http_status=response.status_code,
            ) from None
        except httpx.TimeoutException:
            raise Transient("timed out reading the answer", response.status_code, None) from None
        except httpx.HTTPError as exc:
            raise Transient(
                f"answer cut off ({type(exc).__name__})", response.status_code, None
            ) from None
        return b"".join(chunks)

    def _observe(self, method: str, status: str) -> None:
        if self._observer is not None:
            self._observer(method, status)


def _raw_body(response: httpx.Response) -> tuple[list[str], AsyncIterator[bytes]]:
    """The body as received, before any decoding, and the encodings to undo. An answer
    httpx has already read (a MockTransport's `content=`) is decoded already."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        return response.headers.get_list("content-encoding", split_commas=True), (
            response.aiter_raw()
        )
    return [], _once(content)


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _where(url: str) -> str:
    parts = httpx.URL(url)
    return f"{parts.host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def describe_transport_error(exc: httpx.HTTPError) -> str:
    """A transport failure as a reason an operator can act on (refused, DNS, TLS ...)."""
    cause: BaseException | None = exc
    texts: list[str] = []
    while cause is not None and len(texts) < 4:
        text = str(cause)
        if text and text not in texts:
            texts.append(text)
        # `raise ... from None` hides the context on purpose (it may quote the answer).
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    detail = "; ".join(texts)
    lowered = detail.lower()
    if "refused" in lowered or "connect call failed" in lowered:
        kind = "connection refused"
    elif "certificate" in lowered or "sslerror" in lowered or "[ssl" in lowered:
        kind = "TLS error"
    elif "name or service not known" in lowered or "nodename" in lowered or "resolve" in lowered:
        kind = "DNS lookup failed"
    else:
        kind = f"transport error ({type(exc).__name__})"
    return f"{kind}: {detail[:300]}" if detail else kind


def _written(path: str, answer: dict[str, Any], update: StepUpdate, step_id: str) -> dict[str, Any]:
    """The updated step of a write's answer: it must show the status that was sent, and
    name this step (when it names one at all)."""
    data = answer.get("data")
    if isinstance(data, dict) and data.get("stepId", step_id) != step_id:
        raise InvalidAnswer(
            f"PATCH {path}: answered 2xx for step {data.get('stepId')!r}: not this write's",
            http_status=200,
        )
    if not isinstance(data, dict) or data.get("status") != update.status.value:
        shown = data.get("status") if isinstance(data, dict) else None
        raise InvalidAnswer(
            f"PATCH {path}: answered 2xx but data.status is {shown!r},"
            f" not {update.status.value!r}: the write was not applied as sent",
            http_status=200,
        )
    return data


def _step_of(answer: dict[str, Any], step_id: str, organization_id: str) -> Step:
    """The step a re-read answered: it must keep the contract and be the one asked for."""
    try:
        current = _parse_record(answer.get("data"))
    except Exception as exc:  # any broken record, however it breaks
        raise InvalidAnswer(f"re-read: the step breaks the contract ({problems(exc)})") from None
    if (current.organization_id, current.step_id) != (organization_id, step_id):
        raise InvalidAnswer(
            f"re-read of step {step_id!r} in {organization_id!r} answered step "
            f"{current.step_id!r} in {current.organization_id!r}"
        )
    return current


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
            records.append(_parse_record(record))
        except Exception as exc:  # one bad record never ends the page
            records.append(_invalid(record, exc))
    return Page(records=records, next_cursor=cursor)


def _parse_record(record: Any) -> Step:
    if record is DEEP:
        raise RecursionError("nesting too deep to parse")
    return parse_step(record)


def _invalid(record: Any, exc: Exception) -> InvalidRecord:
    step_id = org = None
    if isinstance(record, dict):
        step_id = record.get("stepId") if isinstance(record.get("stepId"), str) else None
        org = record.get("organizationId")
        org = org if isinstance(org, str) else None
    return InvalidRecord(step_id=step_id, organization_id=org, problems=problems(exc))


def problems(exc: Exception) -> str:
    """What was wrong with a record, never its values."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
    if isinstance(exc, RecursionError):
        return "record: nesting too deep to parse"
    if isinstance(exc, OverflowError):
        return "record: a time out of range once converted to UTC"
    return f"record: {type(exc).__name__}"


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
        verify=verify,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        transport=transport,
    )
