"""The platform's answer shapes: listing pages and their cursor, a re-read step, a
write's answer. Pure: what crosses HTTP becomes a Step, an InvalidRecord or an
InvalidAnswer here, and the paging loop follows cursors through a `get` passed in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from sweeper.answers import DEEP
from sweeper.errors import InvalidAnswer, InvalidListing
from sweeper.model import Step, format_timestamp, parse_step
from sweeper.policy import StepUpdate

#: One listing request: its query parameters in, the answer's JSON out.
GetPage = Callable[[dict[str, str]], Awaitable[dict[str, Any]]]


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


async def follow(get: GetPage, started_before: datetime, page_size: int) -> AsyncIterator[Page]:
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
        answer = await get(params)
        page = parse_page(answer)
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


def written(path: str, answer: dict[str, Any], update: StepUpdate, step_id: str) -> dict[str, Any]:
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


def step_of(answer: dict[str, Any], step_id: str, organization_id: str) -> Step:
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


def parse_page(answer: dict[str, Any]) -> Page:
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
