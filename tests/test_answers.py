"""The answer table of platform-api.md, row by row, as a pure function."""

from __future__ import annotations

import email.utils
import json
from datetime import timedelta
from typing import Any

import pytest

from sweeper.answers import (
    DEEP,
    MESSAGE_LIMIT,
    classify,
    decode_json,
    platform_message,
    platform_refusal,
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
    Transient,
)
from tests.fakes import NOW

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


# A listing too deep for the JSON parser is parsed record by record (_decode_deep).
DEEP_RECORD = '{"a":' * 5000 + "1" + "}" * 5000
DEEP_ARRAY = "[" * 5000 + "]" * 5000


def doc(text: str) -> bytes:
    return text.replace("@DEEP@", DEEP_RECORD).replace("@DEEPARRAY@", DEEP_ARRAY).encode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"data": [{"id": "a"}, @DEEP@, {"id": "b"}], "next": "c"}',
            {"data": [{"id": "a"}, DEEP, {"id": "b"}], "next": "c"},
        ),
        ('{"data":[@DEEP@,{"id":"b"}]}', {"data": [DEEP, {"id": "b"}]}),
        ('{"data":[{"id":"a"},@DEEP@]}', {"data": [{"id": "a"}, DEEP]}),
        ('{"data":[@DEEPARRAY@]}', {"data": [DEEP]}),
        (
            '{"data":[@DEEP@, 7, "x", null, [1, [2, 3]]]}',
            {"data": [DEEP, 7, "x", None, [1, [2, 3]]]},
        ),
        (
            '{"meta": [1, 2], "links": {"data": [3]}, "data": [@DEEP@], "n": {"k": [4]}}',
            {"meta": [1, 2], "links": {"data": [3]}, "data": [DEEP], "n": {"k": [4]}},
        ),
        (
            '{"data": [{"s": "a,]}[{\\"x"}, @DEEP@, {"t": "]"}], "z": "}"}',
            {"data": [{"s": 'a,]}[{"x'}, DEEP, {"t": "]"}], "z": "}"},
        ),
        ('{"data": [@DEEP@], "more": [{"data": [5]}]}', {"data": [DEEP], "more": [{"data": [5]}]}),
        ('  {"data" : [ @DEEP@ , {"id":"b"} ] }  ', {"data": [DEEP, {"id": "b"}]}),
    ],
    ids=[
        "middle",
        "first",
        "last",
        "deep-array",
        "scalars-and-arrays-beside",
        "data-key-only-at-top-level",
        "brackets-commas-quotes-in-strings",
        "a-later-data-array-is-not-the-listing",
        "whitespace",
    ],
)
def test_a_listing_too_deep_is_parsed_record_by_record(text: str, expected: object) -> None:
    """Each record of `data` too deep becomes DEEP; the rest of the document is kept as is."""
    decoded = decode_json(doc(text))
    assert decoded == expected
    assert [type(r) for r in decoded["data"]] == [type(r) for r in expected["data"]]  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"items": [@DEEP@]}', "nesting too deep to parse"),
        ("[@DEEP@]", "nesting too deep to parse"),
        ('["data", [@DEEP@]]', "nesting too deep to parse"),
        ('{"x": {"data": [@DEEP@]}}', "nesting too deep to parse"),
        ('{"data": [@DEEP@', "nesting too deep to parse"),
        ('{"data": [1], "x": @DEEP@}', "nesting too deep to parse, outside the records"),
        ('{"x": @DEEP@, "data": [1]}', "nesting too deep to parse, outside the records"),
    ],
    ids=[
        "no-data-array",
        "top-level-array",
        "data-as-an-array-element",
        "data-not-at-top",
        "unclosed",
        "deep-after",
        "deep-before",
    ],
)
def test_too_deep_without_a_data_array_to_split_is_a_value_error(text: str, message: str) -> None:
    """No top-level `data` array to split, or the depth is outside it: ValueError, no records."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        decode_json(doc(text))


def test_deep_answer_through_classify_is_the_payload() -> None:
    """A 2xx listing with a record too deep still succeeds: the record is DEEP, the rest kept."""
    content = doc('{"success": true, "data": [{"id": "a"}, @DEEP@]}')
    assert answer(200, content) == {"success": True, "data": [{"id": "a"}, DEEP]}


def test_deep_stands_in_readably() -> None:
    """DEEP shows as DEEP in logs and reprs."""
    assert repr(DEEP) == "DEEP"


@pytest.mark.parametrize(
    "body",
    [
        '{"success": true, "data": [DEEP, , {"stepId": "a"}]}',
        '{"success": true, "data": [DEEP,]}',
        '{"success": true, "data": [, DEEP]}',
    ],
)
def test_a_deep_page_that_is_also_malformed_is_not_json(body: str) -> None:
    """An empty element is malformed JSON, deep records or not: the page is refused."""
    from sweeper.answers import decode_json

    deep = '{"a":' * 5000 + "1" + "}" * 5000
    with pytest.raises(ValueError, match=r"^(not JSON: an empty element|Expecting value)"):
        decode_json(body.replace("DEEP", deep).encode())


@pytest.mark.parametrize(
    ("status", "body", "own"),
    [
        (404, b'{"success": false, "error": {"code": "NOT_FOUND"}}', True),
        (409, b'{"success": false}', True),
        (401, b'{"success": false, "error": {"message": "bad token"}}', True),
        (400, b'{"success": false}', True),  # the first 4xx is one
        (499, b'{"success": false}', True),
        (399, b'{"success": false}', False),  # not a refusal at all
        (501, b'{"success": false}', False),
        (404, b"default backend - 404", False),
        (404, b'{"message": "no Route matched with those values"}', False),
        (404, b"", False),
        (403, b"<html>blocked</html>", False),
        (200, b'{"success": false}', False),
        (503, b'{"success": false}', False),
        (429, b'{"success": false}', False),
        (404, b'[{"success": false}]', False),
        (404, b"{" * 100_000, False),
    ],
)
def test_only_the_platforms_own_refusal_counts_as_the_platform(
    status: int, body: bytes, own: bool
) -> None:
    """Outage memory counts a 4xx as the platform up only when it comes in the platform's
    envelope: a gateway's page, an empty body or another JSON shape is the platform away."""
    assert platform_refusal(status, body) is own


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "body",
    [b"<html>403 Forbidden</html>", b'{"message": "Forbidden"}', b"", b'[{"success": false}]'],
)
def test_a_401_or_403_not_in_the_platforms_envelope_is_transient(status: int, body: bytes) -> None:
    """A 401/403 the platform did not write (a firewall's page, another JSON shape, no body)
    is a failed try worth repeating, not a refused token."""
    with pytest.raises(Transient) as caught:
        answer(status, body)
    assert type(caught.value) is Transient
    assert (caught.value.http_status, caught.value.retry_after) == (status, None)
    # What request.retried logs: the operator sees why a 401/403 was tried again.
    assert str(caught.value) == f"HTTP {status} not in the platform's words (a gateway's?)"
