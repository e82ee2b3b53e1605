"""What each platform answer means: a pure table from (status, headers, body) to outcome.

`classify` returns the decoded JSON of a success, or raises the `sweeper.errors`
exception the answer stands for, or `Transient` for one failed try worth
repeating. No I/O and no clock of its own: `now` is passed in for Retry-After.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

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

#: Answers worth trying again: the one statement of the retryable statuses (the
#: outage log counts the same ones as "the platform was not there").
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Of those, the answers that say a write was not processed at all (the platform
#: refused to look at it); after any other failed attempt it may have been applied.
NOT_PROCESSED = frozenset({408, 429, 503})
#: The platform's refusal of the token (in its own words: `platform_refusal`).
TOKEN_STATUSES = frozenset({401, 403})
#: How much of the platform's own error text is kept for the log.
MESSAGE_LIMIT = 300


class _Deep:
    """Stands in for a listing record nested too deep for the JSON parser."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEEP"


#: A record too deep to parse: the listing reports it as invalid and sweeps the rest.
DEEP = _Deep()

# Strings (escapes included), the brackets and commas that shape a JSON document, and
# a `"data": [` (a key and its array's opening) as one token.
_TOKENS = re.compile(rb'(?P<data>"data"\s*:\s*)?\[|"(?:[^"\\]|\\.)*"|[\]{},]', re.DOTALL)


def decode_json(content: bytes) -> Any:
    """JSON, or ValueError. A document too deep for the parser is parsed record by
    record: each element of the top-level `data` array that is too deep becomes DEEP."""
    try:
        return json.loads(content)
    except RecursionError:
        return _decode_deep(content)


def _decode_deep(content: bytes) -> Any:
    depth = 0
    cuts: list[int] = []  # the data array's '[', the commas between its records, its ']'
    for match in _TOKENS.finditer(content):
        token = match.group()[-1:]  # a string's ends in '"', a `"data": [` in '['
        if token in (b"[", b"{"):
            depth += 1
            if depth == 2 and match["data"]:
                cuts.append(match.end() - 1)
        elif token in (b"]", b"}"):
            depth -= 1
            if depth == 1 and cuts:
                cuts.append(match.start())
                break
        elif token == b"," and depth == 2 and cuts:
            cuts.append(match.start())
    else:  # no top-level data array, or one never closed
        raise ValueError("nesting too deep to parse")
    try:
        top = json.loads(content[: cuts[0]] + b"[]" + content[cuts[-1] + 1 :])
    except RecursionError:
        raise ValueError("nesting too deep to parse, outside the records") from None
    # `top` is an object: a `"data": [` inside a top-level array is malformed JSON,
    # refused just above. Nor can `"data": []` get here: with no record too deep, the
    # rest is as deep as the whole and failed above too, so an empty element
    # (`[1, , 2]`, `[1,]`, `[ ]`) is always malformed, refused by json.loads below.
    records: list[Any] = []
    for first, last in itertools.pairwise(cuts):
        try:
            records.append(json.loads(content[first + 1 : last]))
        except RecursionError:
            records.append(DEEP)
    top["data"] = records
    return top


def retry_after_seconds(header: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from now: a number, or an HTTP date; None if unreadable."""
    if not header:
        return None
    header = header.strip()
    if header.isascii() and header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def classify(
    where: str,
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    attempt: int,
    now: datetime,
    max_retry_after: float,
) -> dict[str, Any]:
    """The success payload, or the exception this answer means (see platform-api.md)."""
    if 200 <= status < 300:
        try:
            answer = decode_json(content)
        except ValueError:
            raise InvalidAnswer(
                f"{where}: HTTP {status} answer is not JSON", http_status=status, attempts=attempt
            ) from None
        if not isinstance(answer, dict) or answer.get("success") is not True:
            raise InvalidAnswer(
                f"{where}: HTTP {status} answer lacks success: true",
                http_status=status,
                attempts=attempt,
            )
        return answer
    if status in TOKEN_STATUSES and not platform_refusal(status, content):
        # A firewall's or gateway's page, not the platform's word on the token: the
        # platform was not reached, as with any other gateway page (try again).
        raise Transient(f"HTTP {status} not in the platform's words (a gateway's?)", status, None)
    if status in TRANSIENT_STATUSES:
        retry_after = retry_after_seconds(headers.get("retry-after"), now)
        if retry_after is not None and retry_after > max_retry_after:
            # Retrying sooner than asked would load a platform that says it is overloaded.
            raise PlatformUnavailable(
                f"{where}: HTTP {status} asks to wait {retry_after:.0f}s, "
                "more than api.max_retry_after",
                http_status=status,
                attempts=attempt,
            )
        raise Transient(f"HTTP {status}", status, retry_after)
    message = f"{where}: HTTP {status}{platform_message(content)}"
    refusal: type[PlatformRefused] = PlatformRefused  # redirects and the rest: not done
    if status in TOKEN_STATUSES:
        refusal = TokenRefused
    elif status == 404:
        refusal = StepNotFound
    elif status == 409:
        refusal = StepConflict
    elif status in (400, 422):
        refusal = BodyRejected
    raise refusal(message, http_status=status, attempts=attempt)


def platform_message(content: bytes) -> str:
    """The platform's own error text (`error.message`), if it gave one, kept short."""
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError):
        return ""
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return f": {message[:MESSAGE_LIMIT]}"
    return ""


def platform_refusal(status: int, content: bytes) -> bool:
    """Is this refusal the platform's own: a 4xx that is not transient, in the envelope
    of its answers (a JSON object whose `success` is false)? A gateway's page (HTML, an
    empty body, another JSON shape) is not: outage memory counts it as the platform
    being away."""
    if status // 100 != 4 or status in TRANSIENT_STATUSES:  # not a 4xx, or one worth a retry
        return False
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError):
        return False
    return isinstance(answer, dict) and answer.get("success") is False
