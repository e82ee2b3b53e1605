"""One request to the platform and its answer, mapped once: a payload or an error.

The only module that touches httpx exceptions (as httpx's own `_exceptions` maps its
transports' errors in one place): a transport failure, a timeout, an answer cut off,
over MAX_ANSWER_BYTES or in a broken Content-Encoding leaves as `Transient` or
`InvalidAnswer`; every status goes through `answers.classify`. It also checks each
answer's Date (guards.ClockCheck) and tells outage memory whether the platform itself
answered. It waits for nothing but the request itself (api.timeout bounds it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from sweeper.answers import TOKEN_STATUSES, classify, platform_refusal
from sweeper.encodings import Decoded, EncodingError
from sweeper.errors import (
    ClockSkewRefused,
    InvalidAnswer,
    SweeperError,
    Transient,
    WriteAppliedUnderSkew,
)
from sweeper.guards import ClockCheck

STEPS_PATH = "/api/data-platform/workflow-run-steps"
#: Larger answers are refused unread: a page of 1,000 steps is well under 1 MiB.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

Clock = Callable[[], datetime]
RequestObserver = Callable[[str, str], None]
RetryObserver = Callable[[str, str], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


class RequestWatch(Protocol):
    """Outage memory's view of every request (outages.OutageLog): when it went out, and
    whether the platform itself answered it."""

    def sent(self) -> datetime: ...

    def answered(self, sent_at: datetime, reachable: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Observers:
    """Who hears of requests: metrics by method and status (`request`), retries
    (`retry`), and outage memory (`watch`)."""

    request: RequestObserver | None = None
    retry: RetryObserver | None = None
    watch: RequestWatch | None = None


class Exchange:
    """Sends one request through the pool and maps its answer."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        timeout: float | None,
        max_retry_after: float,
        clock: Clock,
        clock_check: ClockCheck | None,
        observers: Observers,
    ) -> None:
        self._http = http
        self._timeout = timeout
        self._max_retry_after = max_retry_after
        self._clock = clock
        self._clock_check = clock_check
        self._observer = observers.request
        self._watch = observers.watch

    async def send(
        self,
        method: str,
        path: str,
        url: str,
        payload: bytes | None,
        headers: dict[str, str] | None,
        attempt: int,
        *,
        any_date: bool = False,
    ) -> dict[str, Any]:
        """The answer's payload, or the error it means. `any_date`: report the answer
        whatever its Date says (a settling read)."""
        if self._watch is None:
            return await self._once(method, path, url, payload, headers, attempt, any_date=any_date)
        sent_at = self._watch.sent()
        reachable = [False]
        try:
            return await self._once(
                method, path, url, payload, headers, attempt, reachable, any_date=any_date
            )
        finally:
            # After the Date check, so that the sample is laid on the platform's clock as
            # this answer showed it.
            self._watch.answered(sent_at, reachable[0])

    async def _once(
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
        problem = self._clock_check.check(date) if self._clock_check is not None else None
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
        except SweeperError:
            if reachable is not None:
                # A 404 on the listing itself is never the platform's: a gateway's.
                listing_gone = path == STEPS_PATH and status == 404
                reachable[0] = not listing_gone and platform_refusal(status, content)
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
            content = await _read_capped(response, method, url)
        finally:
            await response.aclose()
        return response.status_code, response.headers, content

    def _observe(self, method: str, status: str) -> None:
        if self._observer is not None:
            self._observer(method, status)


async def _read_capped(response: httpx.Response, method: str, url: str) -> bytes:
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
