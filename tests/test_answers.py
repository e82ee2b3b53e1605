"""The answer table of platform-api.md, row by row, as a pure function."""

from __future__ import annotations

import email.utils
import json
from datetime import timedelta
from typing import Any

import pytest

from sweeper.answers import (
    MESSAGE_LIMIT,
    Transient,
    classify,
    platform_message,
    retry_after_seconds,
)
from sweeper.errors import (
    BodyRejected,
    InvalidAnswer,
    PlatformRefused,
    PlatformUnavailable,
    StepConflict,
    StepNotFound,
    TokenRefused,
)
from tests.helpers import NOW

OK = json.dumps({"success": True, "data": {"stepId": "s"}}).encode()
REFUSAL = json.dumps({"success": False, "error": {"message": "errorCode too long"}}).encode()


def answer(status: int, content: bytes = b"", **headers: str) -> Any:
    return classify(
        "PATCH /steps/s",
        status,
        {k.replace("_", "-"): v for k, v in headers.items()},
        content,
        attempt=3,
        now=NOW,
        max_retry_after=60.0,
    )


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_with_success_true_is_the_payload(status: int) -> None:
    """Any 2xx whose JSON says success: true is a success."""
    assert answer(status, OK) == {"success": True, "data": {"stepId": "s"}}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "is not JSON"),
        (b"<html>", "is not JSON"),
        (b"[true]", "lacks success: true"),
        (b'{"success": "true"}', "lacks success: true"),
        (b'{"success": 1}', "lacks success: true"),
        (b'{"data": {}}', "lacks success: true"),
        (b'{"success": false}', "lacks success: true"),
    ],
)
def test_2xx_that_is_not_a_success(content: bytes, why: str) -> None:
    """A 2xx that is not JSON or lacks success: true is an invalid answer, with its figures."""
    with pytest.raises(InvalidAnswer) as caught:
        answer(200, content)
    assert str(caught.value) == f"PATCH /steps/s: HTTP 200 answer {why}"
    assert (caught.value.http_status, caught.value.attempts) == (200, 3)


@pytest.mark.parametrize("status", [199, 300, 301, 302, 304, 307, 308, 418, 405, 410, 501, 505])
def test_other_statuses_are_refusals_not_successes_nor_retries(status: int) -> None:
    """1xx, 3xx (never followed), other 4xx and unlisted 5xx: refused, no retry."""
    with pytest.raises(PlatformRefused) as caught:
        answer(status, OK)
    assert type(caught.value) is PlatformRefused
    assert (caught.value.http_status, caught.value.attempts) == (status, 3)
    assert str(caught.value).startswith(f"PATCH /steps/s: HTTP {status}")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BodyRejected),
        (422, BodyRejected),
        (401, TokenRefused),
        (403, TokenRefused),
        (404, StepNotFound),
        (409, StepConflict),
    ],
)
def test_refusals_by_status(status: int, error: type[PlatformRefused]) -> None:
    """Each refusal maps to its own error, with status, attempts and the platform's message."""
    with pytest.raises(PlatformRefused) as caught:
        answer(status, REFUSAL)
    assert type(caught.value) is error
    assert (caught.value.http_status, caught.value.attempts) == (status, 3)
    assert str(caught.value) == f"PATCH /steps/s: HTTP {status}: errorCode too long"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    """408, 429 and the listed 5xx are one failed try, with the status kept."""
    with pytest.raises(Transient) as caught:
        answer(status)
    assert str(caught.value) == f"HTTP {status}"
    assert (caught.value.http_status, caught.value.retry_after) == (status, None)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 60 ", 60.0),
        ("", None),
        ("soon", None),
        ("-3", None),
        ("1.5", None),
    ],
)
def test_retry_after_in_seconds(header: str, seconds: float | None) -> None:
    """Whole seconds are honoured; anything unreadable is ignored."""
    with pytest.raises(Transient) as caught:
        answer(429, retry_after=header)
    assert caught.value.retry_after == seconds


@pytest.mark.parametrize(("delta", "seconds"), [(12, 12.0), (60, 60.0), (-30, 0.0), (0, 0.0)])
def test_retry_after_as_http_date(delta: int, seconds: float) -> None:
    """An HTTP date means that long from now; a date in the past means now."""
    when = email.utils.format_datetime(NOW + timedelta(seconds=delta), usegmt=True)
    assert retry_after_seconds(when, NOW) == seconds


def test_retry_after_date_without_zone_is_ignored() -> None:
    """An HTTP date without a zone cannot be trusted."""
    assert retry_after_seconds("Sat, 23 May 2026 12:00:30", NOW) is None
    assert retry_after_seconds(None, NOW) is None


def test_retry_after_at_the_limit_is_honoured_and_beyond_it_fails() -> None:
    """Exactly api.max_retry_after is waited; one second more ends the tries."""
    with pytest.raises(Transient) as waited:
        answer(503, retry_after="60")
    assert waited.value.retry_after == 60.0
    with pytest.raises(PlatformUnavailable) as caught:
        answer(503, retry_after="61")
    assert (caught.value.http_status, caught.value.attempts) == (503, 3)
    assert str(caught.value) == (
        "PATCH /steps/s: HTTP 503 asks to wait 61s, more than api.max_retry_after"
    )


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (REFUSAL, ": errorCode too long"),
        (b'{"error": {"message": ""}}', ""),
        (b'{"error": {"message": 5}}', ""),
        (b'{"error": "flat"}', ""),
        (b"[1]", ""),
        (b"not json", ""),
        (json.dumps({"error": {"message": "x" * 500}}).encode(), ": " + "x" * MESSAGE_LIMIT),
    ],
)
def test_platform_message(content: bytes, text: str) -> None:
    """Only a non-empty error.message string is kept, and only its first 300 characters."""
    assert platform_message(content) == text


def test_retry_after_date_is_measured_from_the_given_now() -> None:
    """classify reads an HTTP-date Retry-After against the `now` it is given."""
    when = email.utils.format_datetime(NOW + timedelta(seconds=20), usegmt=True)
    with pytest.raises(Transient) as caught:
        answer(503, retry_after=when)
    assert caught.value.retry_after == 20.0
