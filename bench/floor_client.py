"""The floor: the least a client can do for the sweeper's work over HTTP/1.1.

Raw asyncio streams on keep-alive connections, request bytes built by hand, and
of each answer only the status line, the headers (for Content-Length) and the
body that many bytes long. It lists every page (JSON-decoded: the step ids and
the cursor are needed), then for each zombie re-reads it (GET) and, when the
answer still says RUNNING (a byte search, no decoding), PATCHes it with the same
body fields as the sweeper, `--concurrency` connections in flight. No
validation, no retries, no logging, no per-request objects beyond the bytes.
`bench/bare_client.py` does the same work (`bench/raw_http.py`, shared) with the
ordinary stream-reader habits (a readline per header, a JSON decode per answer) and
costs about twice this. Prints one JSON line: {"seconds": ..., "marked": ...}.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from raw_http import Connection, command_line, stamp, step_path

RUNNING = b'"status":"RUNNING"'
PATCH_TAIL = b"Content-Type: application/json\r\nContent-Length: "
MESSAGE = b'"errorCode":"ZOMBIE_STEP_TIMEOUT","errorMessage":"No sign of life from this step."'
DETAILS = b'"errorDetails":{"sweepId":"floor","rule":"default"}'


class Floor:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.connection = Connection(host, port)
        self.common = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n".encode()

    async def request(self, head: bytes, body: bytes = b"") -> tuple[bool, bytes]:
        """Send one request; (a 2xx status, the body) of its answer."""
        reader = await self.connection.send(head + body)
        answer = await reader.readuntil(b"\r\n\r\n")
        lower = answer.lower()
        at = lower.find(b"\r\ncontent-length:")
        length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)]) if at >= 0 else 0
        payload = await reader.readexactly(length) if length else b""
        return answer[9:10] == b"2", payload

    async def page(self, target: str) -> dict[str, Any]:
        _, payload = await self.request(
            f"GET {target} HTTP/1.1\r\n".encode() + self.common + b"\r\n"
        )
        page: dict[str, Any] = json.loads(payload)
        return page

    async def mark(self, step: dict[str, Any]) -> bool:
        path = step_path(step).encode()
        org = step["organizationId"].encode()
        query = quote(step["organizationId"]).encode()
        ok, payload = await self.request(
            b"GET " + path + b"?organizationId=" + query + b" HTTP/1.1\r\n" + self.common + b"\r\n"
        )
        if not ok or RUNNING not in payload:
            return False
        body = (
            b'{"organizationId":"' + org + b'","status":"FAILED","completedAt":"'
            + stamp(datetime.now(UTC)).encode() + b'",' + MESSAGE + b"," + DETAILS + b"}"
        )  # fmt: skip
        ok, _ = await self.request(
            b"PATCH " + path + b" HTTP/1.1\r\n" + self.common + PATCH_TAIL
            + str(len(body)).encode() + b"\r\n\r\n",
            body,
        )  # fmt: skip
        return ok

    def close(self) -> None:
        self.connection.close()


if __name__ == "__main__":
    command_line(Floor)
