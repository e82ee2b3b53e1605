"""PlatformClient's own part of each call, over httpx.MockTransport: what it logs and
counts on a retry, the messages and figures of the errors it raises, the rate-limit
slots each call takes, the deadline it passes on, and whose refusal stops whom."""

from __future__ import annotations

import asyncio
import email.utils
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from sweeper import __version__
from sweeper.api import STEPS_PATH, PlatformClient, build_http_client
from sweeper.errors import (
    DeadlineReached,
    GuardRefused,
    Interrupted,
    InvalidAnswer,
    ListingNotFound,
    PlatformUnavailable,
    StepConflict,
    TokenRefused,
    WriteAppliedUnderSkew,
    WriteUnanswered,
)
from sweeper.guards import ClockCheck
from sweeper.pacing import RateLimiter
from sweeper.refusals import TokenRefusals
from tests.builders import client_of
from tests.fakes import NOW, TOKEN, FakeClock, refusal
from tests.test_api import UPDATE, Recorder, answers, client_for, read_ok, run
from tests.test_proxies import Servers, make_certificate, tls_platform

BASE = "https://platform.test"
S1 = f"{STEPS_PATH}/s1"
LATE = email.utils.format_datetime(NOW + timedelta(hours=1), usegmt=True)
APPLIED = {"success": True, "data": {"stepId": "s1", "status": "FAILED"}}


def retried_events(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in entry.items() if k != "log_level"}
        for entry in logs
        if entry["event"] == "request.retried"
    ]


# -- a retry: its log line and its count ----------------------------------------


def test_a_read_retry_logs_and_counts_the_status_or_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each retry of a read: `request.retried` with method, path, try, the wait (ms
    precision) and the HTTP status, or the error when nothing was answered."""
    monkeypatch.setattr("tenacity.wait.random.uniform", lambda low, high: 0.12345)
    retries: list[tuple[str, str]] = []
    handler = answers(httpx.Response(503), httpx.ConnectError("refused"), read_ok())
    client, sleep = client_for(handler, on_retry=lambda m, s: retries.append((m, s)))
    with structlog.testing.capture_logs() as logs:
        run(client.get_step("s1", "org-a"))
    assert sleep.waits == [0.12345, 0.12345]
    assert retries == [("GET", "503"), ("GET", "error")]
    first, second = retried_events(logs)
    assert first == {
        "event": "request.retried",
        "method": "GET",
        "path": S1,
        "attempt": 1,
        "wait_seconds": 0.123,
        "http_status": 503,
    }
    assert "platform.test" in second.pop("error")
    assert second == {
        "event": "request.retried",
        "method": "GET",
        "path": S1,
        "attempt": 2,
        "wait_seconds": 0.123,
    }


def test_a_read_retry_names_the_transport_error() -> None:
    handler = answers(httpx.ConnectError("refused"), read_ok())
    client, _ = client_for(handler)
    with structlog.testing.capture_logs() as logs:
        run(client.get_step("s1", "org-a"))
    (event,) = retried_events(logs)
    assert "platform.test" in event["error"]
    assert "None" not in event["error"]
    assert "http_status" not in event


@pytest.mark.parametrize(
    ("failure", "fields", "counted"),
    [
        (
            WriteUnanswered("PATCH x: HTTP 503", http_status=503, retry_after=2.0),
            {"http_status": 503},
            "503",
        ),
        (
            WriteUnanswered("PATCH x: connection reset", http_status=None, retry_after=2.0),
            {"error": "PATCH x: connection reset"},
            "error",
        ),
    ],
)
def test_a_write_retry_waits_retry_after_and_logs_it(
    failure: WriteUnanswered, fields: dict[str, Any], counted: str
) -> None:
    """The writer's next attempt waits the answer's Retry-After, logged and counted
    like a read's retry (the wait is the pacing's, so a stop cuts it short)."""
    retries: list[tuple[str, str]] = []
    client, sleep = client_for(answers(read_ok()), on_retry=lambda m, s: retries.append((m, s)))
    with structlog.testing.capture_logs() as logs:
        run(client.wait_to_retry("PATCH", S1, failure, 3))
    assert sleep.waits == [2.0]
    assert retries == [("PATCH", counted)]
    assert retried_events(logs) == [
        {
            "event": "request.retried",
            "method": "PATCH",
            "path": S1,
            "attempt": 3,
            "wait_seconds": 2.0,
            **fields,
        }
    ]


# -- deadlines ------------------------------------------------------------------


def test_a_retry_that_would_end_exactly_at_the_deadline_is_not_waited(
    clock: FakeClock,
) -> None:
    """The deadline is exclusive: a wait ending at it is already too late."""
    handler = answers(httpx.Response(503, headers={"Retry-After": "5"}), read_ok())
    client, sleep = client_for(handler, clock, monotonic=clock.monotonic)
    with pytest.raises(DeadlineReached) as caught:
        run(client.get_step("s1", "org-a", give_up_at=clock.monotonic() + 5))
    assert str(caught.value) == (
        f"GET {BASE}{S1}: given up, the next try would wait past the deadline (5.0s)"
        " (after 1 tries)"
    )
    assert caught.value.attempts == 1
    assert sleep.waits == []


def test_the_listing_passes_its_deadline_to_each_page(clock: FakeClock) -> None:
    handler = answers(httpx.Response(503, headers={"Retry-After": "10"}))
    client, sleep = client_for(handler, clock, monotonic=clock.monotonic)

    async def listing() -> None:
        async for _ in client.list_running(NOW, 10, give_up_at=clock.monotonic() + 5):
            pass

    with pytest.raises(DeadlineReached, match=rf"^GET {BASE}{STEPS_PATH}: given up"):
        run(listing())
    assert sleep.waits == []


def test_a_write_whose_slot_comes_after_the_deadline_is_not_sent(clock: FakeClock) -> None:
    limiter = RateLimiter(0.1, clock.monotonic)
    handler = answers(httpx.Response(200, json=APPLIED))
    client, _ = client_for(handler, clock, limiter=limiter, monotonic=clock.monotonic)
    run(client.patch_step("s1", UPDATE))  # takes the slot now: the next is 10 s away
    with pytest.raises(DeadlineReached) as caught:
        run(client.patch_step("s1", UPDATE, give_up_at=clock.monotonic() + 5))
    assert str(caught.value) == f"PATCH {S1}: not sent, the rate limit's next slot is 10.0s away"
    assert caught.value.attempts == 0
    assert len(handler.seen) == 1  # type: ignore[attr-defined]


def test_a_read_given_up_after_its_tries_says_how_many() -> None:
    handler = answers(httpx.Response(503))
    client, _ = client_for(handler, max_attempts=2)
    with pytest.raises(PlatformUnavailable) as caught:
        run(client.get_step("s1", "org-a"))
    assert str(caught.value).startswith(f"GET {BASE}{S1}: ")
    assert str(caught.value).endswith(" (after 2 tries)")


# -- rate-limit slots ----------------------------------------------------------


class Slots:
    """A rate limiter of one request a second on a clock that never moves: the next
    free slot (seconds from now) shows how many slots the calls so far took."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.limiter = RateLimiter(1, self.clock.monotonic, Recorder())

    def client(self, handler: Any) -> PlatformClient:
        client, _ = client_for(
            handler, self.clock, limiter=self.limiter, monotonic=self.clock.monotonic
        )
        return client

    def taken(self) -> int:
        try:
            run(self.limiter.acquire(1, give_up_at=self.clock.monotonic()))
        except Exception as exc:  # OutOfTime: "the next slot is N.0s away"
            return int(float(str(exc).rsplit(" ", 2)[-2].rstrip("s")))
        return 0


@pytest.mark.parametrize(
    ("call", "slots"),
    [
        ("read", 1),
        ("read_then_write", 2),
        ("write", 1),
        ("reserved_write", 0),
        ("settle", 1),
        ("listing_page", 1),
    ],
)
def test_each_call_takes_its_rate_limit_slots(call: str, slots: int) -> None:
    """A re-read before a write reserves that write's slot; every other request takes
    one (api.max_rate bounds every request)."""
    pace = Slots()
    page = {"success": True, "data": [], "nextCursor": None}
    handler = answers(
        httpx.Response(200, json=page)
        if call == "listing_page"
        else httpx.Response(200, json=APPLIED)
        if "write" in call and call != "read_then_write"
        else read_ok()
    )
    client = pace.client(handler)

    async def listing() -> None:
        async for _ in client.list_running(NOW, 10):
            pass

    calls = {
        "read": lambda: client.get_step("s1", "org-a"),
        "read_then_write": lambda: client.get_step("s1", "org-a", then_write=True),
        "write": lambda: client.patch_step("s1", UPDATE),
        "reserved_write": lambda: client.patch_step("s1", UPDATE, reserved=True),
        "settle": lambda: client.settle_read("s1", "org-a"),
        "listing_page": listing,
    }
    run(calls[call]())
    assert len(handler.seen) == 1  # type: ignore[attr-defined]
    assert pace.taken() == slots


# -- messages and figures of each call's errors ---------------------------------


def test_a_listing_answered_404_names_the_base_url() -> None:
    handler = answers(httpx.Response(503), httpx.Response(404, json={"success": False}))
    client, _ = client_for(handler)

    async def listing() -> None:
        async for _ in client.list_running(NOW, 10):
            pass

    with pytest.raises(ListingNotFound) as caught:
        run(listing())
    assert str(caught.value) == (
        f"GET {BASE}{STEPS_PATH}: HTTP 404: api.base_url points at no platform"
        " (or at another version of it)"
    )
    assert caught.value.http_status == 404
    assert caught.value.attempts == 2  # the 404 came on the second try


def test_a_failed_settling_read_names_itself_and_keeps_the_status() -> None:
    handler = answers(httpx.Response(503))
    client, sleep = client_for(handler)
    with pytest.raises(PlatformUnavailable) as caught:
        run(client.settle_read("s1", "org-a"))
    assert str(caught.value).startswith(f"GET {BASE}{S1}: ")
    assert str(caught.value).endswith(" (settling read)")
    assert "HTTP 503" in str(caught.value)
    assert caught.value.http_status == 503
    assert sleep.waits == []  # one try
    assert len(handler.seen) == 1  # type: ignore[attr-defined]


def test_an_unanswered_write_keeps_the_status_retry_after_and_path() -> None:
    handler = answers(httpx.Response(503, headers={"Retry-After": "4"}))
    client, _ = client_for(handler)
    with pytest.raises(WriteUnanswered) as caught:
        run(client.patch_step("s1", UPDATE))
    assert str(caught.value).startswith(f"PATCH {S1}: ")
    assert "HTTP 503" in str(caught.value)
    assert (caught.value.http_status, caught.value.retry_after) == (503, 4.0)


def test_a_write_not_applied_as_sent_names_its_path() -> None:
    handler = answers(httpx.Response(200, json={"success": True, "data": {"status": "RUNNING"}}))
    client, _ = client_for(handler)
    with pytest.raises(InvalidAnswer, match=rf"^PATCH {S1}: answered 2xx but data.status"):
        run(client.patch_step("s1", UPDATE))


def test_a_write_applied_under_skew_carries_the_updated_step(clock: FakeClock) -> None:
    handler = answers(httpx.Response(200, headers={"Date": LATE}, json=APPLIED))
    check = ClockCheck(timedelta(minutes=2), clock)
    client, _ = client_for(handler, clock, clock_check=check)
    with pytest.raises(WriteAppliedUnderSkew) as caught:
        run(client.patch_step("s1", UPDATE))
    assert caught.value.data == APPLIED["data"]


def test_a_write_not_applied_under_skew_is_the_guards_refusal(clock: FakeClock) -> None:
    """Skewed and not applied as sent: the clock guard's refusal, its words and figures."""
    answer = {"success": True, "data": {"stepId": "s1", "status": "RUNNING"}}
    handler = answers(httpx.Response(200, headers={"Date": LATE}, json=answer))
    check = ClockCheck(timedelta(minutes=2), clock)
    client, _ = client_for(handler, clock, clock_check=check)
    with pytest.raises(GuardRefused) as caught:
        run(client.patch_step("s1", UPDATE))
    assert not isinstance(caught.value, WriteAppliedUnderSkew)
    assert str(caught.value) == "platform clock differs from ours by +3600.0s (allowed 120s)"
    assert caught.value.figures == {"skew_seconds": 3600.0, "max_clock_skew_seconds": 120.0}


def test_a_refused_token_is_not_sent_again_and_says_so() -> None:
    handler = answers(refusal(), read_ok())
    client, _ = client_for(handler)
    with pytest.raises(TokenRefused):
        run(client.get_step("s1", "org-a"))
    with pytest.raises(TokenRefused) as caught:
        run(client.patch_step("s2", UPDATE))
    assert str(caught.value) == f"PATCH {STEPS_PATH}/s2: not sent, the token was refused"
    assert caught.value.attempts == 0


def test_a_read_while_stopping_names_the_request() -> None:
    stop = asyncio.Event()
    stop.set()
    client, _ = client_for(answers(read_ok()), stop=stop)
    with pytest.raises(Interrupted, match=rf"^GET {S1}: not sent, stopping$"):
        run(client.get_step("s1", "org-a"))


# -- URLs and clients -----------------------------------------------------------


def test_query_values_are_percent_encoded_never_plus() -> None:
    """A space in a query value is %20 (quote), as in the path: never '+'."""
    handler = answers(read_ok())
    client, _ = client_for(handler)
    with pytest.raises(InvalidAnswer):  # the record is org-a's, not "org a/b"'s
        run(client.get_step("s1", "org a/b"))
    (request,) = handler.seen  # type: ignore[attr-defined]
    assert request.url.raw_path == f"{S1}?organizationId=org%20a%2Fb".encode()


@pytest.mark.parametrize(
    "base", [BASE, BASE + "/", BASE + "/v2", BASE + "/v2/", BASE + "/v2X", BASE + "/v2X/"]
)
def test_the_request_url_is_the_base_url_then_the_path(base: str) -> None:
    handler = answers(read_ok())
    http = build_http_client(
        base, TOKEN, timeout=timedelta(seconds=5), max_connections=1,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip
    run(client_of(http).get_step("s1", "org-a"))
    (request,) = handler.seen  # type: ignore[attr-defined]
    prefix = base.removeprefix(BASE).rstrip("/")
    assert str(request.url) == f"{BASE}{prefix}{S1}?organizationId=org-a"


def test_a_refusal_stops_only_its_own_base_url_and_token() -> None:
    """Refusals shared by clients: the refused (base URL, token) pair stops, another
    token on that platform, or that token on another platform, is still sent."""
    refusals = TokenRefusals()
    sent: list[str] = []

    def client(base: str, token: str, refuse: bool) -> PlatformClient:
        def handler(request: httpx.Request) -> httpx.Response:
            sent.append(f"{request.url.host} {request.headers['authorization']}")
            return refusal() if refuse else read_ok()

        http = build_http_client(
            base, token, timeout=timedelta(seconds=5), max_connections=1,
            transport=httpx.MockTransport(handler),
        )  # fmt: skip
        return client_of(http, refusals=refusals)

    with pytest.raises(TokenRefused):
        run(client(BASE, "t1", refuse=True).get_step("s1", "org-a"))
    run(client(BASE, "t2", refuse=False).get_step("s1", "org-a"))
    run(client("https://other.test", "t1", refuse=False).get_step("s1", "org-a"))
    with pytest.raises(TokenRefused):
        run(client(BASE, "t1", refuse=False).get_step("s1", "org-a"))
    assert sent == ["platform.test Bearer t1", "platform.test Bearer t2", "other.test Bearer t1"]


@pytest.mark.parametrize("given", [timedelta(milliseconds=20), None])
def test_a_request_is_bounded_by_api_timeout(given: timedelta | None) -> None:
    """request_timeout when given, else the pool's read timeout, bounds each request."""
    never = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")  # pragma: no cover

    http = build_http_client(
        BASE, TOKEN, timeout=timedelta(milliseconds=30), max_connections=1,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip
    client = client_of(http, max_attempts=1, request_timeout=given)

    async def bounded() -> None:
        # A generous outer bound: without api.timeout the request would never end.
        await asyncio.wait_for(client.get_step("s1", "org-a"), 30)

    with pytest.raises(PlatformUnavailable) as caught:
        run(bounded())
    shown = "0.02s" if given else "0.03s"
    assert f"no complete answer within api.timeout ({shown})" in str(caught.value)


def test_the_pool_sends_the_token_and_our_name_and_follows_no_redirect() -> None:
    http = build_http_client(BASE + "/", TOKEN, timeout=timedelta(seconds=7), max_connections=3)
    assert http.headers["Authorization"] == f"Bearer {TOKEN}"
    assert http.headers["User-Agent"] == f"sweeper/{__version__}"
    assert http.timeout.read == 7.0
    assert http.follow_redirects is False


@pytest.mark.parametrize("call", ["write", "settle"])
def test_a_one_try_call_reports_one_attempt(call: str) -> None:
    """A write and a settling read are one try each: their refusals say attempt 1."""
    handler = answers(httpx.Response(409, json={"success": False}))
    client, _ = client_for(handler)
    one_try: Any = (
        client.patch_step("s1", UPDATE) if call == "write" else client.settle_read("s1", "org-a")
    )
    with pytest.raises(StepConflict) as caught:
        run(one_try)
    assert caught.value.attempts == 1


def test_a_read_given_up_at_its_deadline_says_how_many_tries_it_made(clock: FakeClock) -> None:
    handler = answers(
        httpx.Response(503, headers={"Retry-After": "1"}),
        httpx.Response(503, headers={"Retry-After": "10"}),
    )
    client, sleep = client_for(handler, clock, monotonic=clock.monotonic)
    with pytest.raises(DeadlineReached) as caught:
        run(client.get_step("s1", "org-a", give_up_at=clock.monotonic() + 5))
    assert str(caught.value).endswith(" (after 2 tries)")
    assert caught.value.attempts == 2
    assert sleep.waits == [1.0]


def test_a_settling_reads_refusal_names_the_request() -> None:
    handler = answers(httpx.Response(409, json={"success": False}))
    client, _ = client_for(handler)
    with pytest.raises(StepConflict, match=rf"^GET {S1}: HTTP 409"):
        run(client.settle_read("s1", "org-a"))


def test_a_pool_given_no_ca_checks_tls_against_the_systems(tmp_path: Path) -> None:
    """`verify`'s default: the platform's certificate is checked (the system's
    authorities), so a self-signed one is refused and nothing, the token included,
    reaches that server."""
    cert, key = make_certificate(tmp_path)
    seen: list[bytes] = []

    async def go() -> None:
        servers = Servers()
        try:
            port = await tls_platform(servers, cert, key, seen)
            http = build_http_client(
                f"https://127.0.0.1:{port}", TOKEN, timeout=timedelta(seconds=30),
                max_connections=1,
            )  # fmt: skip
            async with http:
                await client_of(http, max_attempts=1).get_step("s1", "org-a")
        finally:
            await servers.close()

    with pytest.raises(PlatformUnavailable, match=r"(?i)certificate"):
        run(go())
    assert seen == []
