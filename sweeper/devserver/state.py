"""The stand-in platform's state and rules, with no HTTP in sight.

Every write is validated exactly as the platform's PATCH page says; the listing
pages with an opaque cursor over (startedAt, stepId).
"""

from __future__ import annotations

import base64
import bisect
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sweeper.model import StepStatus, format_timestamp

#: The completedAt pattern of the platform's PATCH page (leap years, 30/31-day months).
COMPLETED_AT_PATTERN = re.compile(
    r"^(?:(?:\d\d[2468][048]|\d\d[13579][26]|\d\d0[48]|[02468][048]00|[13579][26]00)-02-29"
    r"|\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    r"|(?:02)-(?:0[1-9]|1\d|2[0-8])))T(?:(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:Z))$"
)
MAX_RETRY_COUNT = 9007199254740991
MAX_LIMIT = 1000
STATUSES = frozenset(s.value for s in StepStatus)
PATCH_FIELDS = frozenset(
    {
        "organizationId",
        "completedAt",
        "errorCode",
        "errorDetails",
        "errorMessage",
        "logs",
        "output",
        "retryCount",
        "status",
    }
)
ORGANIZATIONS = ("org-acme", "org-globex", "org-initech")
STEP_TYPES = ("extract", "transform", "load", "notify")


class Refusal(Exception):
    """An answer other than success: HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class PatchRecord:
    """One accepted write, kept so tests can check what the sweeper sent."""

    step_id: str
    body: dict[str, Any]
    at: datetime


class PlatformState:
    """Steps in memory, keyed by id; RUNNING ones also kept in listing order."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.steps: dict[str, dict[str, Any]] = {}
        self._running: list[tuple[str, str]] = []  # sorted (startedAt, stepId)
        self.patches: list[PatchRecord] = []
        #: Wedged-but-beating steps: while RUNNING, every read shows a fresh heartbeat.
        self.beating: set[str] = set()

    # -- content -------------------------------------------------------------

    def reset(self) -> None:
        self.steps.clear()
        self._running.clear()
        self.patches.clear()
        self.beating.clear()

    def add(self, record: dict[str, Any]) -> None:
        step_id = record["stepId"]
        if step_id in self.steps:
            self._unlist(self.steps[step_id])
        self.steps[step_id] = record
        if record.get("status") == "RUNNING":
            bisect.insort(self._running, _key(record))

    def _unlist(self, record: dict[str, Any]) -> None:
        key = _key(record)
        index = bisect.bisect_left(self._running, key)
        if index < len(self._running) and self._running[index] == key:
            del self._running[index]

    def update(self, step_id: str, **fields: Any) -> dict[str, Any]:
        """Change a step directly (a worker finishing, a heartbeat), keeping the listing right."""
        record = self.steps[step_id]
        self._unlist(record)
        record.update(fields)
        if record.get("status") == "RUNNING":
            bisect.insort(self._running, _key(record))
        return record

    def seed(self, zombies: int, live: int, seed: int | str = 0) -> None:
        """Reproducible zombies (hours idle) and live steps (recent heartbeat)."""
        rng = random.Random(seed)
        now = self.clock()
        for n in range(zombies):
            started = now - timedelta(hours=rng.uniform(3, 30))
            record = self._base(rng, f"zombie-{n:05d}", started)
            kind = n % 5
            if kind == 1:
                record["updatedAt"] = format_timestamp(now - timedelta(hours=rng.uniform(2.5, 3)))
                record["updatedAt"] = max(record["updatedAt"], record["startedAt"])
            elif kind == 2:
                beat = max(started, now - timedelta(hours=rng.uniform(2.2, 3)))
                record["lastHeartbeatAt"] = format_timestamp(beat)
            elif kind == 3:
                record["workflowRunStatus"] = "CANCELLED"
            if n % 3 == 0:
                record["retryCount"] = rng.randint(0, 3)
            self.add(record)
        for n in range(live):
            started = now - timedelta(hours=rng.uniform(2.5, 6))
            record = self._base(rng, f"live-{n:05d}", started)
            record["lastHeartbeatAt"] = format_timestamp(
                now - timedelta(seconds=rng.uniform(1, 60))
            )
            self.add(record)

    def seed_runaways(self, runaways: int, seed: int | str = 0) -> None:
        """Wedged-but-beating steps: started 26 to 50 hours ago, and their heartbeat
        thread lives on (each read shows a heartbeat of that moment). Only a
        max_runtime catches them; they never look stale."""
        rng = random.Random(f"runaways-{seed}")
        now = self.clock()
        for n in range(runaways):
            started = now - timedelta(hours=rng.uniform(26, 50))
            record = self._base(rng, f"runaway-{n:05d}", started)
            record["lastHeartbeatAt"] = format_timestamp(now)
            self.add(record)
            self.beating.add(record["stepId"])

    def beat(self) -> None:
        """Move the heartbeat of every beating step still RUNNING to now."""
        if not self.beating:
            return
        moment = format_timestamp(self.clock())
        for step_id in self.beating:
            record = self.steps.get(step_id)
            if record is not None and record.get("status") == "RUNNING":
                record["lastHeartbeatAt"] = moment  # not a listing key: no re-sort

    @staticmethod
    def _base(rng: random.Random, step_id: str, started: datetime) -> dict[str, Any]:
        return {
            "stepId": step_id,
            "organizationId": rng.choice(ORGANIZATIONS),
            "workflowRunId": f"run-{rng.randrange(16**8):08x}",
            "stepType": rng.choice(STEP_TYPES),
            "status": "RUNNING",
            "startedAt": format_timestamp(started),
            "workflowRunStatus": "RUNNING",
        }

    # -- the read side -------------------------------------------------------

    def list_steps(self, query: dict[str, str]) -> dict[str, Any]:
        self.beat()
        status = query.get("status", "RUNNING")
        if status != "RUNNING":
            if status not in STATUSES:
                raise Refusal(400, "VALIDATION_ERROR", "status: not a step status")
            raise Refusal(400, "VALIDATION_ERROR", "status: only RUNNING is listed here")
        limit_text = query.get("limit", "100")
        if (
            not limit_text.isascii()
            or not limit_text.isdigit()
            or not 1 <= int(limit_text) <= MAX_LIMIT
        ):
            raise Refusal(400, "VALIDATION_ERROR", f"limit: must be 1 to {MAX_LIMIT}")
        limit = int(limit_text)
        before = None
        if "startedBefore" in query:
            if not COMPLETED_AT_PATTERN.match(query["startedBefore"]):
                raise Refusal(400, "VALIDATION_ERROR", "startedBefore: not a UTC timestamp")
            before = _parse_time(query["startedBefore"])
        start = 0
        if "cursor" in query:
            start = bisect.bisect_right(self._running, _decode_cursor(query["cursor"]))
        page: list[dict[str, Any]] = []
        index = start
        while index < len(self._running) and len(page) < limit:
            started_at, step_id = self._running[index]
            index += 1
            if before is not None and _parse_time(started_at) >= before:
                break  # sorted by startedAt: nothing later qualifies
            page.append(self.steps[step_id])
        more = (
            index < len(self._running)
            and len(page) == limit
            and (before is None or _parse_time(self._running[index][0]) < before)
        )
        cursor = _encode_cursor(_key(page[-1])) if page and more else None
        return {"success": True, "data": page, "nextCursor": cursor}

    def get_step(self, step_id: str, organization_id: str | None) -> dict[str, Any]:
        self.beat()
        if not organization_id:
            raise Refusal(400, "VALIDATION_ERROR", "organizationId: required")
        record = self.steps.get(step_id)
        if record is None or record["organizationId"] != organization_id:
            raise Refusal(404, "NOT_FOUND", "no such step in this organization")
        return {"success": True, "data": record}

    # -- the write side ------------------------------------------------------

    def patch_step(self, step_id: str, raw_body: bytes) -> dict[str, Any]:
        body = validate_patch_body(raw_body)
        record = self.steps.get(step_id)
        if record is None or record["organizationId"] != body["organizationId"]:
            raise Refusal(404, "NOT_FOUND", "no such step in this organization")
        self._unlist(record)
        for name, value in body.items():
            if name == "organizationId":
                continue
            if value is None:
                record.pop(name, None)
            else:
                record[name] = value
        record["updatedAt"] = format_timestamp(self.clock())
        if "completedAt" in record:
            elapsed = _parse_time(record["completedAt"]) - _parse_time(record["startedAt"])
            record["durationMs"] = int(elapsed.total_seconds() * 1000)
        if record.get("status") == "RUNNING":
            bisect.insort(self._running, _key(record))
        self.patches.append(PatchRecord(step_id, body, self.clock()))
        return {"success": True, "data": record}


def _key(record: dict[str, Any]) -> tuple[str, str]:
    # Timestamps are written in one fixed form, so text order is time order.
    return (format_timestamp(_parse_time(record["startedAt"])), record["stepId"])


def _encode_cursor(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        started_at, step_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return (str(started_at), str(step_id))
    except (ValueError, TypeError):
        raise Refusal(400, "VALIDATION_ERROR", "cursor: not a cursor from this server") from None


def _nullable(body: dict[str, Any], name: str, kind: type, what: str) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], kind):
        raise Refusal(400, "VALIDATION_ERROR", f"{name}: must be {what} or null")


def validate_patch_body(raw_body: bytes) -> dict[str, Any]:
    """Check a PATCH body against every rule of the platform's page; 400 names the rule."""
    try:
        body = json.loads(raw_body)
    except ValueError:
        raise Refusal(400, "INVALID_JSON", "body: not JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "VALIDATION_ERROR", "body: must be a JSON object")
    unknown = sorted(set(body) - PATCH_FIELDS)
    if unknown:
        raise Refusal(400, "VALIDATION_ERROR", f"{unknown[0]}: unknown field")
    org = body.get("organizationId")
    if not isinstance(org, str) or not org:
        raise Refusal(400, "VALIDATION_ERROR", "organizationId: required, at least 1 character")
    if "completedAt" in body:
        value = body["completedAt"]
        if not isinstance(value, str) or not COMPLETED_AT_PATTERN.match(value):
            raise Refusal(
                400, "VALIDATION_ERROR", "completedAt: must be a UTC date-time ending in Z"
            )
    _nullable(body, "errorCode", str, "a string")
    if isinstance(body.get("errorCode"), str) and len(body["errorCode"]) > 64:
        raise Refusal(400, "VALIDATION_ERROR", "errorCode: at most 64 characters")
    _nullable(body, "errorMessage", str, "a string")
    _nullable(body, "logs", str, "a string")
    _nullable(body, "errorDetails", dict, "an object")
    _nullable(body, "output", dict, "an object")
    if "retryCount" in body:
        value = body["retryCount"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise Refusal(400, "VALIDATION_ERROR", "retryCount: must be an integer")
        if not 0 <= value <= MAX_RETRY_COUNT:
            raise Refusal(400, "VALIDATION_ERROR", f"retryCount: must be 0 to {MAX_RETRY_COUNT}")
    if "status" in body and body["status"] not in STATUSES:
        raise Refusal(400, "VALIDATION_ERROR", f"status: must be one of {sorted(STATUSES)}")
    return body
