"""The platform client against httpx.MockTransport: every row of the answer table."""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest

from sweeper.api import PlatformClient, build_http_client, step_url
from sweeper.errors import (
    BodyRejected,
    ClockSkewRefused,
    Interrupted,
    InvalidAnswer,
    PlatformRefused,
    PlatformUnavailable,
    StepConflict,
    StepNotFound,
    TokenRefused,
    WriteUnanswered,
)
from sweeper.exchange import MAX_ANSWER_BYTES
from sweeper.guards import ClockCheck
from sweeper.model import StepStatus
from sweeper.pacing import RateLimiter
from sweeper.policy import StepUpdate
from tests.builders import client_of
from tests.fakes import NOW, TOKEN, FakeClock, FakePlatform, record, refusal

T = TypeVar("T")
UPDATE = StepUpdate(
    organization_id="org-a",
    status=StepStatus.FAILED,
    completed_at="2026-05-23T12:00:00.000Z",
    error_code="ZOMBIE_STEP_TIMEOUT",
    error_message="gone quiet",
    error_details={"sweepId": "x"},
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Recorder:
    """A sleep that only remembers how long it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def client_for(
    handler: Callable[[httpx.Request], httpx.Response],
    clock: FakeClock | None = None,
    **kwargs: Any,
) -> tuple[PlatformClient, Recorder]:
    sleep = Recorder()
    clock = clock or FakeClock()
    http = build_http_client(
        "https://platform.test",
        TOKEN,
        timeout=timedelta(seconds=5),
        max_connections=4,
        transport=httpx.MockTransport(handler),
    )
    kwargs.setdefault("max_attempts", 4)
    return client_of(http, clock=clock, sleep=sleep, **kwargs), sleep


def answers(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    """A handler that gives these answers in order (the last one repeats)."""
    queue = list(responses)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


OK = httpx.Response(200, json={"success": True, "data": {"stepId": "s1", "status": "FAILED"}})


def read_ok() -> httpx.Response:
    """A re-read answer for step s1 of org-a."""
    return httpx.Response(200, json={"success": True, "data": record("s1")})


def test_patch_sends_exactly_the_seed_fields() -> None:
    """The body is organizationId, status, completedAt, errorCode, errorMessage, errorDetails."""
    handler = answers(OK)
    client, _ = client_for(handler)
    data = run(client.patch_step("s1", UPDATE))
    (request,) = handler.seen  # type: ignore[attr-defined]
    assert request.method == "PATCH"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {
        "organizationId": "org-a",
        "status": "FAILED",
        "completedAt": "2026-05-23T12:00:00.000Z",
        "errorCode": "ZOMBIE_STEP_TIMEOUT",
        "errorMessage": "gone quiet",
        "errorDetails": {"sweepId": "x"},
    }
    assert data == {"stepId": "s1", "status": "FAILED"}


@pytest.mark.parametrize(
    ("step_id", "raw"),
    [
        ("plain", "plain"),
        ("a/b", "a%2Fb"),
        ("a?b#c", "a%3Fb%23c"),
        ("50%", "50%25"),
        ("with space", "with%20space"),
        ("ünï/çødé", "%C3%BCn%C3%AF%2F%C3%A7%C3%B8d%C3%A9"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a..b", "a..b"),
    ],
)
def test_step_id_is_one_percent_encoded_segment(step_id: str, raw: str) -> None:
    """/ ? # % and spaces in a step id never split or end the path."""
    handler = answers(httpx.Response(200, json={"success": True, "data": {"status": "FAILED"}}))
    client, _ = client_for(handler)
    run(client.patch_step(step_id, UPDATE))
    (request,) = handler.seen  # type: ignore[attr-defined]
    assert request.url.raw_path == f"/api/data-platform/workflow-run-steps/{raw}".encode()
    assert step_url(step_id).endswith("/" + raw)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BodyRejected),
        (422, BodyRejected),
        (401, TokenRefused),
        (403, TokenRefused),
        (404, StepNotFound),
        (409, StepConflict),
        (418, PlatformRefused),
        (301, PlatformRefused),
    ],
)
def test_refusals_are_not_retried(status: int, error: type[Exception]) -> None:
    """4xx answers (and redirects, never followed) are final after one try."""
    headers = {"Location": "https://elsewhere.test/"} if status == 301 else {}
    handler = answers(
        httpx.Response(
            status, headers=headers, json={"success": False, "error": {"message": "nope"}}
        )
    )
    client, sleep = client_for(handler)
    with pytest.raises(error) as caught:
        run(client.patch_step("s1", UPDATE))
    assert len(handler.seen) == 1  # type: ignore[attr-defined]
    assert sleep.waits == []
    assert caught.value.http_status == status  # type: ignore[attr-defined]


def test_rejection_carries_the_platforms_message() -> None:
    """400's error.message is kept for the log."""
    handler = answers(
        httpx.Response(400, json={"success": False, "error": {"message": "errorCode too long"}})
    )
    client, _ = client_for(handler)
    with pytest.raises(BodyRejected, match="errorCode too long"):
        run(client.patch_step("s1", UPDATE))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_then_succeed(status: int) -> None:
    """408, 429 and 5xx are retried with backoff, and a later success counts."""
    handler = answers(httpx.Response(status), httpx.Response(status), read_ok())
    client, sleep = client_for(handler)
    run(client.get_step("s1", "org-a"))
    assert len(handler.seen) == 3  # type: ignore[attr-defined]
    assert len(sleep.waits) == 2


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow"),
        httpx.RemoteProtocolError("reset"),
    ],
)
def test_transport_errors_are_retried(exc: Exception) -> None:
    """Connect errors and timeouts are transient too."""
    handler = answers(exc, read_ok())
    client, sleep = client_for(handler)
    run(client.get_step("s1", "org-a"))
    assert len(handler.seen) == 2  # type: ignore[attr-defined]
    assert len(sleep.waits) == 1


def test_transient_failure_gives_up_after_max_attempts() -> None:
    """After api.max_attempts tries the request is unavailable, with the count."""
    handler = answers(httpx.Response(503))
    client, _sleep = client_for(handler, max_attempts=3)
    with pytest.raises(PlatformUnavailable) as caught:
        run(client.get_step("s1", "org-a"))
    assert caught.value.attempts == 3
    assert caught.value.http_status == 503
    assert len(handler.seen) == 3  # type: ignore[attr-defined]


def test_backoff_is_capped_exponential_with_jitter() -> None:
    """Waits grow but never pass the cap, and vary between tries (jitter)."""
    handler = answers(httpx.Response(500))
    client, sleep = client_for(handler, max_attempts=12, backoff_initial=1.0, backoff_max=8.0)
    with pytest.raises(PlatformUnavailable):
        run(client.get_step("s1", "org-a"))
    assert len(sleep.waits) == 11
    assert all(0 <= w <= 8.0 for w in sleep.waits)
    assert len(set(sleep.waits)) > 1


def test_retry_after_in_seconds_is_honoured() -> None:
    """Retry-After: 7 waits exactly 7 seconds."""
    handler = answers(httpx.Response(429, headers={"Retry-After": "7"}), read_ok())
    client, sleep = client_for(handler)
    run(client.get_step("s1", "org-a"))
    assert sleep.waits == [7.0]


def test_retry_after_as_http_date_is_honoured(clock: FakeClock) -> None:
    """Retry-After as an HTTP date waits until then, by our clock."""
    later = email.utils.format_datetime(NOW + timedelta(seconds=12), usegmt=True)
    handler = answers(httpx.Response(503, headers={"Retry-After": later}), read_ok())
    client, sleep = client_for(handler, clock)
    run(client.get_step("s1", "org-a"))
    assert sleep.waits == [12.0]


def test_retry_after_longer_than_allowed_ends_the_tries() -> None:
    """A Retry-After past api.max_retry_after is not waited for: the request failed."""
    handler = answers(httpx.Response(429, headers={"Retry-After": "3600"}), read_ok())
    client, sleep = client_for(handler, max_retry_after=timedelta(seconds=60))
    with pytest.raises(PlatformUnavailable, match="max_retry_after") as caught:
        run(client.get_step("s1", "org-a"))
    assert sleep.waits == []
    assert caught.value.attempts == 1


def test_unparseable_retry_after_falls_back_to_backoff() -> None:
    """A Retry-After we cannot read is ignored, not trusted."""
    handler = answers(httpx.Response(503, headers={"Retry-After": "soon"}), read_ok())
    client, sleep = client_for(handler, backoff_max=2.0)
    run(client.get_step("s1", "org-a"))
    assert len(sleep.waits) == 1
    assert sleep.waits[0] <= 2.0


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>ok</html>"),
        httpx.Response(200, json={"data": {}}),
        httpx.Response(200, json={"success": "true", "data": {}}),
        httpx.Response(201, json=[1, 2]),
        httpx.Response(204),
    ],
)
def test_2xx_without_success_true_is_not_a_success(response: httpx.Response) -> None:
    """A 2xx whose body is not JSON or lacks success: true is an invalid answer, not retried."""
    handler = answers(response)
    client, _sleep = client_for(handler)
    with pytest.raises(InvalidAnswer):
        run(client.patch_step("s1", UPDATE))
    assert len(handler.seen) == 1  # type: ignore[attr-defined]


def test_token_refusal_stops_every_later_call() -> None:
    """After a 401 the client sends nothing more with that token."""
    handler = answers(refusal(), OK)
    client, _ = client_for(handler)
    with pytest.raises(TokenRefused):
        run(client.patch_step("s1", UPDATE))
    with pytest.raises(TokenRefused):
        run(client.get_step("s2", "org-a"))
    assert len(handler.seen) == 1  # type: ignore[attr-defined]


def test_oversized_answer_is_refused_unread() -> None:
    """A Content-Length beyond the limit is refused before the body is read."""
    big = httpx.Response(200, headers={"Content-Length": str(MAX_ANSWER_BYTES + 1)}, content=b"{}")
    client, _ = client_for(answers(big))
    with pytest.raises(InvalidAnswer, match="refused unread"):
        run(client.get_step("s1", "org-a"))


def test_oversized_streamed_answer_is_cut_off() -> None:
    """An answer without Content-Length is read only up to the limit."""

    def stream() -> Any:
        chunk = b" " * (1024 * 1024)
        for _ in range(MAX_ANSWER_BYTES // len(chunk) + 2):
            yield chunk

    class Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            for chunk in stream():
                yield chunk

    client, _ = client_for(lambda request: httpx.Response(200, stream=Endless()))
    with pytest.raises(InvalidAnswer, match="answer over"):
        run(client.get_step("s1", "org-a"))


def test_listing_follows_cursors_to_the_last_page(platform: FakePlatform) -> None:
    """Pages are read with status, startedBefore, limit and the previous cursor."""
    platform.add(*(record(f"s{n:02d}") for n in range(5)))
    client, _ = client_for(platform.handle)

    async def all_pages() -> list[Any]:
        return [p async for p in client.list_running(NOW - timedelta(hours=1), 2)]

    pages = run(all_pages())
    assert [len(p.records) for p in pages] == [2, 2, 1]
    first, second, _ = platform.requests
    assert first.url.params["status"] == "RUNNING"
    assert first.url.params["startedBefore"] == "2026-05-23T11:00:00.000Z"
    assert first.url.params["limit"] == "2"
    assert "cursor" not in first.url.params
    assert second.url.params["cursor"] == pages[0].next_cursor


def test_listing_reports_broken_records_and_keeps_the_rest(platform: FakePlatform) -> None:
    """A record missing a field or with a bad time is returned as invalid, not fatal."""
    good = record("good")
    page = {
        "success": True,
        "nextCursor": None,
        "data": [
            good,
            {"stepId": "no-org", "status": "RUNNING", "startedAt": good["startedAt"]},
            {**good, "stepId": "bad-time", "startedAt": "yesterday"},
            {**good, "stepId": "naive-time", "startedAt": "2026-05-23T10:00:00"},
            {**good, "stepId": 12},
            {**good, "stepId": "neg", "retryCount": -1},
            "not an object",
            {**good, "stepId": "extra", "somethingNew": {"ok": True}},
        ],
    }
    client, _ = client_for(answers(httpx.Response(200, json=page)))

    async def first_page() -> Any:
        async for page in client.list_running(NOW, 10):
            return page
        raise AssertionError("no page")

    records = run(first_page()).records
    valid = [r.step_id for r in records if hasattr(r, "started_at")]
    invalid = [r for r in records if not hasattr(r, "started_at")]
    assert valid == ["good", "extra"]
    assert [r.step_id for r in invalid] == ["no-org", "bad-time", "naive-time", None, "neg", None]
    assert "organizationId" in invalid[0].problems


@pytest.mark.parametrize(
    "page",
    [
        {"success": True, "data": {"not": "a list"}},
        {"success": True, "data": [], "nextCursor": 5},
        {"success": False, "data": []},
    ],
)
def test_broken_listing_pages_are_invalid_answers(page: dict[str, Any]) -> None:
    """A page that breaks the envelope cannot be swept."""
    client, _ = client_for(answers(httpx.Response(200, json=page)))

    async def read() -> None:
        async for _ in client.list_running(NOW, 10):
            pass

    with pytest.raises(InvalidAnswer):
        run(read())


def test_get_step_returns_none_when_gone() -> None:
    """404 on the re-read means the step is not there."""
    client, _ = client_for(answers(httpx.Response(404)))
    assert run(client.get_step("s1", "org-a")) is None


def test_get_step_with_broken_record_is_invalid() -> None:
    """A re-read whose step breaks the contract is an invalid answer."""
    client, _ = client_for(answers(httpx.Response(200, json={"success": True, "data": {}})))
    with pytest.raises(InvalidAnswer, match="re-read"):
        run(client.get_step("s1", "org-a"))


@pytest.mark.parametrize(
    ("skew", "refused"),
    [
        (timedelta(0), False),
        (timedelta(seconds=119), False),
        (timedelta(seconds=-119), False),
        (timedelta(minutes=3), True),
        (timedelta(minutes=-3), True),
    ],
)
def test_clock_skew_is_checked_on_every_answer(
    platform: FakePlatform, clock: FakeClock, skew: timedelta, refused: bool
) -> None:
    """A Date header further than max_clock_skew, ahead or behind, refuses."""
    platform.add(record("s1"))
    platform.date_skew = skew
    check = ClockCheck(timedelta(minutes=2), clock)
    client, _ = client_for(platform.handle, clock, clock_check=check)
    if refused:
        with pytest.raises(ClockSkewRefused):
            run(client.get_step("s1", "org-a"))
    else:
        assert run(client.get_step("s1", "org-a")) is not None


def test_missing_date_is_warned_once_per_sweep(
    platform: FakePlatform, clock: FakeClock, logs: list[dict[str, Any]]
) -> None:
    """Without a Date header skew cannot be checked: one warning per sweep."""
    platform.add(record("s1"))
    platform.send_date = False
    check = ClockCheck(timedelta(minutes=2), clock)
    client, _ = client_for(platform.handle, clock, clock_check=check)
    for _ in range(3):
        run(client.get_step("s1", "org-a"))
    check.begin_sweep()  # a new sweep (Sweeper.begin_sweep)
    run(client.get_step("s1", "org-a"))
    assert [e["event"] for e in logs] == ["platform.date_missing", "platform.date_missing"]


def test_unreadable_date_header_is_an_invalid_answer(clock: FakeClock) -> None:
    """A Date header that is not an HTTP date cannot be trusted."""
    handler = answers(
        httpx.Response(200, headers={"Date": "tomorrow"}, json={"success": True, "data": {}})
    )
    client, _ = client_for(handler, clock, clock_check=ClockCheck(timedelta(minutes=2), clock))
    with pytest.raises(InvalidAnswer, match="Date"):
        run(client.get_step("s1", "org-a"))


def test_an_applied_write_with_an_unreadable_date_is_still_applied(clock: FakeClock) -> None:
    """The answer to a write the platform applied is believed; the next answer is checked."""
    handler = answers(httpx.Response(200, headers={"Date": "tomorrow"}, content=OK.content))
    client, _ = client_for(handler, clock, clock_check=ClockCheck(timedelta(minutes=2), clock))
    assert run(client.patch_step("s1", UPDATE))["status"] == "FAILED"


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (httpx.Response(503), None),
        (httpx.Response(429, headers={"Retry-After": "7"}), 7.0),
        (httpx.ConnectError("refused"), None),
        (httpx.ReadTimeout("slow"), None),
    ],
)
def test_a_write_is_one_attempt(
    answer: httpx.Response | Exception, retry_after: float | None
) -> None:
    """The client never repeats a PATCH itself: each new attempt needs its own re-read first."""
    handler = answers(answer, OK)
    client, sleep = client_for(handler)
    with pytest.raises(WriteUnanswered) as caught:
        run(client.patch_step("s1", UPDATE))
    assert len(handler.seen) == 1  # type: ignore[attr-defined]
    assert sleep.waits == []
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(
    "data",
    [{"stepId": "s1", "status": "RUNNING"}, {"stepId": "s1"}, None, [1], "FAILED"],
)
def test_a_write_answered_with_another_status_was_not_applied(data: object) -> None:
    """200 whose data.status is not the status sent is an invalid answer."""
    handler = answers(httpx.Response(200, json={"success": True, "data": data}))
    client, _ = client_for(handler)
    with pytest.raises(InvalidAnswer, match=r"data\.status"):
        run(client.patch_step("s1", UPDATE))


def test_stop_prevents_new_requests_and_cuts_backoff_short() -> None:
    """Once stop is set no request is sent, and a pending retry is abandoned."""
    stop = asyncio.Event()
    handler = answers(OK)
    client, _ = client_for(handler, stop=stop)
    stop.set()
    with pytest.raises(Interrupted):
        run(client.patch_step("s1", UPDATE))
    assert handler.seen == []  # type: ignore[attr-defined]


def test_rate_limiter_spaces_requests_evenly() -> None:
    """At max_rate N, the k-th immediate request waits (k-1)/N seconds."""
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))

    limiter = RateLimiter(4, monotonic=lambda: now[0], sleep=sleep)

    async def burst() -> None:
        for _ in range(4):
            await limiter.acquire()

    run(burst())
    assert waits == [0.25, 0.5, 0.75]
    now[0] = 10.0
    run(limiter.acquire())
    assert waits == [0.25, 0.5, 0.75]  # idle long enough: no wait


def test_rate_limit_zero_means_no_limit() -> None:
    """max_rate = 0 never waits."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    limiter = RateLimiter(0, sleep=sleep)
    run(limiter.acquire())
    assert waits == []


def test_redirects_are_never_followed() -> None:
    """A 302 is answered as a refusal; the Location is not fetched (token would follow)."""
    handler = answers(httpx.Response(302, headers={"Location": "https://evil.test/steal"}))
    client, _ = client_for(handler)
    with pytest.raises(PlatformRefused):
        run(client.get_step("s1", "org-a"))
    assert [r.url.host for r in handler.seen] == ["platform.test"]  # type: ignore[attr-defined]


def _chained(outer: Exception, inner: Exception) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (
            httpx.ConnectError(
                "Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed]"
            ),
            "connection refused",
        ),
        (
            _chained(
                httpx.ConnectError("Cannot connect to host platform.test:443 ssl:default"),
                OSError("[Errno -2] Name or service not known"),
            ),
            "DNS lookup failed",
        ),
        (
            httpx.ConnectError(
                "Cannot connect to host p.test:443 ssl:True [SSLCertVerificationError:"
                " certificate verify failed: self-signed certificate]"
            ),
            "TLS error",
        ),
        (
            httpx.ConnectError(
                "Cannot connect to host 127.0.0.1:8700 ssl:default"
                " [[SSL: WRONG_VERSION_NUMBER] wrong version number]"
            ),
            "TLS error",
        ),
        (httpx.RemoteProtocolError("peer closed"), "transport error (RemoteProtocolError)"),
    ],
)
def test_transport_errors_name_their_cause_and_the_host(exc: Exception, kind: str) -> None:
    """Refused, DNS, TLS: the reason and host:port, not just the exception's class."""
    handler = answers(exc)
    client, _ = client_for(handler, max_attempts=1)
    with pytest.raises(PlatformUnavailable) as caught:
        run(client.get_step("s1", "org-a"))
    message = str(caught.value)
    assert kind in message
    assert "(platform.test:443)" in message
    assert "https://platform.test/api/data-platform/workflow-run-steps/s1" in message


def test_a_write_answered_for_another_step_was_not_applied_as_sent() -> None:
    """200 whose data names another stepId is an invalid answer, not a mark."""
    other = {"success": True, "data": {"stepId": "other", "status": "FAILED"}}
    client, _ = client_for(answers(httpx.Response(200, json=other)))
    with pytest.raises(InvalidAnswer, match="not this write's"):
        run(client.patch_step("s1", UPDATE))


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "\uff11"])
def test_unicode_digits_in_retry_after_are_not_a_number(value: str) -> None:
    """Retry-After '²' passes str.isdigit() but is no number: backoff, never a crash."""
    header = value.encode().decode("unicode_escape").encode("latin-1", "ignore") or b"x"
    handler = answers(httpx.Response(503, headers=[(b"Retry-After", header)]), read_ok())
    client, sleep = client_for(handler, backoff_max=2.0)
    run(client.get_step("s1", "org-a"))
    assert len(sleep.waits) == 1
    assert sleep.waits[0] <= 2.0


def test_a_401_with_an_unreadable_date_still_stops_the_token(clock: FakeClock) -> None:
    """The refused token is what matters: latched, exit 77, whatever the Date says."""
    handler = answers(refusal(Date="garbage"), read_ok())
    client, _ = client_for(handler, clock, clock_check=ClockCheck(timedelta(minutes=2), clock))
    with pytest.raises(TokenRefused):
        run(client.get_step("s1", "org-a"))
    assert client.token_refused


def test_retries_never_wait_past_the_callers_deadline(clock: FakeClock) -> None:
    """Retry-After 60 with 30 s left: the read gives up now instead of sleeping past it."""
    handler = answers(httpx.Response(503, headers={"Retry-After": "60"}), read_ok())
    client, sleep = client_for(handler, clock, monotonic=clock.monotonic)
    with pytest.raises(PlatformUnavailable, match="given up"):
        run(client.get_step("s1", "org-a", give_up_at=clock.monotonic() + 30))
    assert sleep.waits == []


def test_the_rate_limit_never_waits_past_the_callers_deadline(clock: FakeClock) -> None:
    """A slot 10 s away with 5 s left: given up, nothing reserved."""
    limiter = RateLimiter(0.1, clock.monotonic)
    client, _ = client_for(answers(read_ok()), clock, limiter=limiter, monotonic=clock.monotonic)
    run(client.get_step("s1", "org-a"))  # takes the first slot
    with pytest.raises(PlatformUnavailable, match="rate limit"):
        run(client.get_step("s1", "org-a", give_up_at=clock.monotonic() + 5))


#: A 401/403 the platform did not write: a firewall's or gateway's page, an answer in
#: another JSON shape, or none at all.
NOT_THE_PLATFORMS = [
    pytest.param(403, "text/html", b"<html><body><h1>403 Forbidden</h1></body></html>", id="html"),
    pytest.param(403, "application/json", b'{"message": "Forbidden"}', id="gateway-json"),
    pytest.param(401, "application/json", b'{"error": "unauthorized"}', id="other-json-401"),
    pytest.param(403, "text/plain", b"", id="empty"),
]


class Watch:
    """Outage memory's view of each request: was it the platform that answered?"""

    def __init__(self) -> None:
        self.samples: list[bool] = []

    def sent(self) -> Any:
        return NOW

    def answered(self, sent_at: Any, reachable: bool) -> None:
        self.samples.append(reachable)


@pytest.mark.parametrize(("status", "kind", "body"), NOT_THE_PLATFORMS)
def test_a_401_or_403_not_in_the_platforms_words_is_the_platform_away(
    status: int, kind: str, body: bytes
) -> None:
    """A 401/403 that is not the platform's own refusal is a failed try (retried, counted
    as the platform away), not a token refusal: nothing is latched, the next call goes out."""
    page = httpx.Response(status, headers={"Content-Type": kind}, content=body)
    handler = answers(page, page, read_ok())
    watch = Watch()
    client, sleep = client_for(handler, max_attempts=2, watch=watch)
    with pytest.raises(PlatformUnavailable) as caught:
        run(client.get_step("s1", "org-a"))
    assert caught.value.http_status == status
    assert len(handler.seen) == 2 and len(sleep.waits) == 1  # type: ignore[attr-defined]
    assert watch.samples == [False, False]
    assert not client.token_refused
    assert run(client.get_step("s1", "org-a")) is not None  # sent: the token is not latched
    assert watch.samples == [False, False, True]


@pytest.mark.parametrize(("status", "kind", "body"), NOT_THE_PLATFORMS)
def test_a_write_answered_401_or_403_by_a_gateway_is_unanswered(
    status: int, kind: str, body: bytes
) -> None:
    """A write whose answer is a gateway's 401/403 page is unanswered (the writer re-reads
    before any new attempt), never a token refusal."""
    handler = answers(httpx.Response(status, headers={"Content-Type": kind}, content=body), OK)
    client, _ = client_for(handler)
    with pytest.raises(WriteUnanswered) as caught:
        run(client.patch_step("s1", UPDATE))
    assert caught.value.http_status == status
    assert not client.token_refused
    run(client.patch_step("s1", UPDATE))  # sent again


@pytest.mark.parametrize("status", [401, 403])
def test_the_platforms_own_401_or_403_latches_the_token(status: int) -> None:
    """The platform's own refusal (its envelope, success: false) stops the token at once."""
    refusal = httpx.Response(
        status, json={"success": False, "error": {"code": "FORBIDDEN", "message": "no"}}
    )
    handler = answers(refusal, OK)
    client, sleep = client_for(handler)
    with pytest.raises(TokenRefused):
        run(client.get_step("s1", "org-a"))
    assert client.token_refused and sleep.waits == []
    with pytest.raises(TokenRefused):
        run(client.patch_step("s1", UPDATE))
    assert len(handler.seen) == 1  # type: ignore[attr-defined]
