"""One request and its answer (exchange.Exchange) through httpx's MockTransport: what
each failure becomes, what the observers hear, and how transport errors read."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sweeper.errors import (
    ClockSkewRefused,
    InvalidAnswer,
    PlatformError,
    Transient,
    WriteAppliedUnderSkew,
)
from sweeper.exchange import (
    MAX_ANSWER_BYTES,
    STEPS_PATH,
    Exchange,
    Observers,
    describe_transport_error,
    utc_now,
)
from sweeper.guards import ClockCheck

NOW = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)
OK = json.dumps({"success": True, "data": {"id": "s1"}}).encode()
REFUSED = json.dumps({"success": False, "error": "no such step"}).encode()
Handler = Callable[[httpx.Request], Any]


class Watch:
    def __init__(self) -> None:
        self.answers: list[tuple[datetime, bool]] = []

    def sent(self) -> datetime:
        return NOW

    def answered(self, sent_at: datetime, reachable: bool) -> None:
        self.answers.append((sent_at, reachable))


def exchange(
    handler: Handler,
    *,
    timeout: float | None = 30.0,
    seen: list[tuple[str, str]] | None = None,
    watch: Watch | None = None,
    clock_check: ClockCheck | None = None,
) -> Exchange:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    request = None if seen is None else (lambda method, status: seen.append((method, status)))
    return Exchange(
        http,
        timeout=timeout,
        max_retry_after=60.0,
        clock=lambda: NOW,
        clock_check=clock_check,
        observers=Observers(request=request, watch=watch),
    )


def send(ex: Exchange, method: str = "GET", path: str = "/x", **kwargs: Any) -> Any:
    url = kwargs.pop("url", f"http://platform.test{path}")
    payload = kwargs.pop("payload", None)
    headers = kwargs.pop("headers", None)
    attempt = kwargs.pop("attempt", 1)

    async def go() -> Any:
        return await asyncio.wait_for(
            ex.send(method, path, url, payload, headers, attempt, **kwargs), timeout=30
        )

    return asyncio.run(go())


def answer(status: int, content: bytes = OK, **headers: str) -> Handler:
    return lambda request: httpx.Response(status, content=content, headers=headers)


def fail(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


def test_every_answer_and_failure_is_observed_by_method_and_status() -> None:
    seen: list[tuple[str, str]] = []
    send(exchange(answer(200), seen=seen), "PATCH")
    for exc in (httpx.ConnectError("refused"), httpx.ReadTimeout("slow")):
        with pytest.raises(Transient):
            send(exchange(fail(exc), seen=seen))
    assert seen == [("PATCH", "200"), ("GET", "error"), ("GET", "timeout")]


def test_api_timeout_bounds_the_whole_request() -> None:
    """A platform that never answers: Transient after api.timeout, observed as a timeout."""

    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    seen: list[tuple[str, str]] = []
    with pytest.raises(Transient) as caught:
        send(exchange(never, timeout=0.0, seen=seen))
    assert str(caught.value) == "no complete answer within api.timeout (0s)"
    assert (caught.value.http_status, caught.value.retry_after) == (None, None)
    assert seen == [("GET", "timeout")]


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("http://platform.test/x", "platform.test:80"),
        ("https://platform.test/x", "platform.test:443"),
    ],
)
def test_a_transport_failure_names_host_and_default_port(url: str, where: str) -> None:
    with pytest.raises(Transient) as caught:
        send(exchange(fail(httpx.ReadTimeout("slow"))), url=url)
    assert str(caught.value) == f"timed out ({where})"
    assert (caught.value.http_status, caught.value.retry_after) == (None, None)


def test_outage_memory_hears_when_each_request_went_and_whether_the_platform_answered() -> None:
    watch = Watch()
    send(exchange(answer(200), watch=watch))
    with pytest.raises(Transient):
        send(exchange(fail(httpx.ConnectError("refused")), watch=watch))
    with pytest.raises(PlatformError):
        send(exchange(answer(404, REFUSED), watch=watch), path=STEPS_PATH + "/s1")
    with pytest.raises(PlatformError):
        send(exchange(answer(404, REFUSED), watch=watch), path=STEPS_PATH)
    with pytest.raises(PlatformError):
        send(exchange(answer(400, REFUSED), watch=watch), path=STEPS_PATH)
    # A 404 of the listing itself is a gateway's, whatever its body says.
    assert watch.answers == [(NOW, True), (NOW, False), (NOW, True), (NOW, False), (NOW, True)]


def test_the_request_goes_out_as_given() -> None:
    """Method, body, headers and the attempt number reach the wire and the errors."""
    got: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        got.append(request)
        return httpx.Response(200, content=b"not json")

    for watch in (None, Watch()):
        with pytest.raises(InvalidAnswer) as caught:
            send(
                exchange(handler, watch=watch),
                "PATCH",
                "/api/s1",
                payload=b'{"status": "FAILED"}',
                headers={"x-sweep": "7"},
                attempt=3,
            )
        assert str(caught.value).startswith("PATCH /api/s1: HTTP 200 answer is not JSON")
        assert caught.value.attempts == 3
    assert [(r.method, r.content, r.headers["x-sweep"]) for r in got] == [
        ("PATCH", b'{"status": "FAILED"}', "7")
    ] * 2


def skewed_check() -> ClockCheck:
    return ClockCheck(timedelta(seconds=60), lambda: NOW)


LATE = "Wed, 02 Dec 2026 07:00:00 GMT"  # an hour ahead


@pytest.mark.parametrize("watch", [None, Watch()])
def test_a_settling_read_is_reported_whatever_its_date(watch: Watch | None) -> None:
    ex = exchange(answer(200, date=LATE), clock_check=skewed_check(), watch=watch)
    with pytest.raises(ClockSkewRefused):
        send(ex)
    assert send(ex, any_date=True) == json.loads(OK)


def test_a_skewed_date_wins_over_the_platforms_other_refusals() -> None:
    """Only a token refusal (401/403 in the platform's words) goes before the clock."""
    with pytest.raises(ClockSkewRefused):
        send(exchange(answer(400, REFUSED, date=LATE), clock_check=skewed_check()))


def test_a_write_applied_under_skew_carries_the_answer_and_the_guard() -> None:
    ex = exchange(answer(200, date=LATE), clock_check=skewed_check())
    with pytest.raises(WriteAppliedUnderSkew) as caught:
        send(ex, "PATCH", "/api/s1")
    assert caught.value.data == json.loads(OK)
    assert "platform clock differs from ours by +3600.0s" in str(caught.value)
    assert caught.value.figures["skew_seconds"] == 3600.0


def test_an_answer_of_exactly_the_cap_is_read() -> None:
    pad = MAX_ANSWER_BYTES - len(b'{"success": true, "data": {}, "pad": ""}')
    body = b'{"success": true, "data": {}, "pad": "' + b"x" * pad + b'"}'
    assert len(body) == MAX_ANSWER_BYTES
    assert send(exchange(answer(200, body)))["data"] == {}
    too_large = f"GET http://platform.test/x: answer of {MAX_ANSWER_BYTES + 1} bytes refused unread"
    with pytest.raises(InvalidAnswer, match=f"^{too_large}$"):
        send(exchange(answer(200, body + b" ")))


def test_the_clock_is_utc() -> None:
    """Aware, in UTC: compared with the platform's Date and step times."""
    assert utc_now().utcoffset() == timedelta(0)


class Broken(httpx.AsyncByteStream):
    """A body that fails after its first chunk."""

    def __init__(self, first: bytes, exc: Exception) -> None:
        self.first = first
        self.exc = exc

    async def __aiter__(self) -> Any:
        yield self.first
        raise self.exc


def streamed(status: int, stream: httpx.AsyncByteStream, encoding: str = "") -> Handler:
    headers = {"content-encoding": encoding} if encoding else {}
    return lambda request: httpx.Response(status, stream=stream, headers=headers)


def test_a_broken_encoding_is_an_invalid_answer_with_its_status() -> None:
    ex = exchange(streamed(200, httpx.ByteStream(b"not gzip"), "gzip"))
    with pytest.raises(InvalidAnswer, match="Content-Encoding could not be decoded") as caught:
        send(ex)
    assert caught.value.http_status == 200


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (httpx.ReadTimeout("slow"), "timed out reading the answer"),
        (httpx.ReadError("reset"), "answer cut off (ReadError)"),
    ],
)
def test_an_answer_that_stops_midway_is_transient(exc: Exception, message: str) -> None:
    with pytest.raises(Transient) as caught:
        send(exchange(streamed(502, Broken(b"{", exc))))
    assert str(caught.value) == message
    assert (caught.value.http_status, caught.value.retry_after) == (502, None)


def chain(*texts: str, suppress: bool = False) -> httpx.HTTPError:
    """httpx.ConnectError(texts[0]) caused by the rest, in order."""
    errors: list[BaseException] = [httpx.ConnectError(texts[0])]
    errors += [OSError(text) for text in texts[1:]]
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    if suppress:
        errors[-1].__context__ = OSError("hidden")
        errors[-1].__suppress_context__ = True
    return errors[0]  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (chain("a", "b", "c", "d", "e"), "transport error (ConnectError): a; b; c; d"),
        (chain("a", "a", "b"), "transport error (ConnectError): a; b"),
        (chain("a", "b", suppress=True), "transport error (ConnectError): a; b"),
        (chain(""), "transport error (ConnectError)"),
        (chain("certificate has expired"), "TLS error: certificate has expired"),
        (chain("SSLError(x)"), "TLS error: SSLError(x)"),
        (chain("[SSL: WRONG_VERSION_NUMBER]"), "TLS error: [SSL: WRONG_VERSION_NUMBER]"),
        (chain("Name or service not known"), "DNS lookup failed: Name or service not known"),
        (chain("nodename nor servname"), "DNS lookup failed: nodename nor servname"),
        (chain("cannot resolve it"), "DNS lookup failed: cannot resolve it"),
        (chain("Connection refused"), "connection refused: Connection refused"),
    ],
)
def test_transport_errors_read_as_their_kind(exc: httpx.HTTPError, expected: str) -> None:
    assert describe_transport_error(exc) == expected


def test_a_context_that_was_not_suppressed_is_part_of_the_reason() -> None:
    exc = httpx.ConnectError("outer")
    exc.__context__ = OSError("inner")
    assert describe_transport_error(exc) == "transport error (ConnectError): outer; inner"


def test_a_long_reason_is_cut_at_300_characters() -> None:
    text = "z" * 400
    assert describe_transport_error(chain(text)) == f"transport error (ConnectError): {'z' * 300}"
