"""The limit: the simplest asyncio HTTP/1.1 client on keep-alive sockets.

It does the sweeper's work with nothing else (`bench/raw_http.py`, shared with the
floor): list every page, then for each zombie (no sign of life for `--stale-after`
seconds) re-read it and PATCH it with the same body fields, `--concurrency`
connections in flight. No validation, no retries, no logging. Its answers are read
with ordinary habits: a readline per header, a JSON decode of every answer. Prints
one JSON line: {"seconds": ..., "marked": ...}.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from raw_http import Connection, command_line, stamp, step_path


class Bare:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.connection = Connection(host, port)
        self.auth = f"Authorization: Bearer {token}\r\nHost: {host}:{port}\r\n"

    async def request(self, method: str, target: str, body: bytes | None = None) -> dict[str, Any]:
        head = f"{method} {target} HTTP/1.1\r\n{self.auth}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        reader = await self.connection.send(head.encode() + b"\r\n" + (body or b""))
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        if not status_line.startswith(b"HTTP/1.1 2"):
            return {}
        answer: dict[str, Any] = json.loads(payload)
        return answer

    async def page(self, target: str) -> dict[str, Any]:
        return await self.request("GET", target)

    async def mark(self, step: dict[str, Any]) -> bool:
        path = step_path(step)
        org = step["organizationId"]
        current = await self.request("GET", f"{path}?organizationId={quote(org)}")
        if current.get("data", {}).get("status") != "RUNNING":
            return False
        body = {
            "organizationId": org,
            "status": "FAILED",
            "completedAt": stamp(datetime.now(UTC)),
            "errorCode": "ZOMBIE_STEP_TIMEOUT",
            "errorMessage": "No sign of life from this step.",
            "errorDetails": {"sweepId": "bare", "rule": "default"},
        }
        answer = await self.request("PATCH", path, json.dumps(body).encode())
        return bool(answer.get("success"))

    def close(self) -> None:
        self.connection.close()


if __name__ == "__main__":
    command_line(Bare)
