"""The limit: the simplest asyncio HTTP/1.1 client on keep-alive sockets.

It does the sweeper's work with nothing else: list every page, then for each
zombie (no sign of life for `--stale-after` seconds) re-read it and PATCH it with
the same body fields, `--concurrency` connections in flight. No validation, no
retries, no logging. Prints one JSON line: {"seconds": ..., "marked": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

STEPS = "/api/data-platform/workflow-run-steps"


class Connection:
    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\nHost: {host}:{port}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes | None = None) -> dict:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {target} HTTP/1.1\r\n{self.auth}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        assert self.reader is not None
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        if not status_line.startswith(b"HTTP/1.1 2"):
            return {}
        return json.loads(payload)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def last_sign(step: dict) -> str:
    return max(step.get(k) or "" for k in ("startedAt", "updatedAt", "lastHeartbeatAt"))


async def main(base_url: str, token: str, concurrency: int, page_size: int, stale: float) -> None:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    started = time.perf_counter()
    now = datetime.now(UTC)
    cutoff = stamp(now - timedelta(seconds=stale))
    listing = Connection(host, port, token)
    zombies: list[dict] = []
    cursor = None
    while True:
        target = f"{STEPS}?status=RUNNING&startedBefore={cutoff}&limit={page_size}"
        if cursor:
            target += f"&cursor={quote(cursor)}"
        page = await listing.request("GET", target)
        zombies += [s for s in page["data"] if last_sign(s) < cutoff]
        cursor = page.get("nextCursor")
        if not cursor:
            break
    queue = iter(zombies)
    marked = 0

    async def worker() -> None:
        nonlocal marked
        connection = Connection(host, port, token)
        for step in queue:
            path = f"{STEPS}/{quote(step['stepId'], safe='')}"
            org = step["organizationId"]
            current = await connection.request("GET", f"{path}?organizationId={quote(org)}")
            if current.get("data", {}).get("status") != "RUNNING":
                continue
            body = {
                "organizationId": org,
                "status": "FAILED",
                "completedAt": stamp(datetime.now(UTC)),
                "errorCode": "ZOMBIE_STEP_TIMEOUT",
                "errorMessage": "No sign of life from this step.",
                "errorDetails": {"sweepId": "bare", "rule": "default"},
            }
            answer = await connection.request("PATCH", path, json.dumps(body).encode())
            marked += bool(answer.get("success"))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps({"seconds": time.perf_counter() - started, "marked": marked}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("--token", default="dev-token")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--stale-after", type=float, default=7200)
    args = parser.parse_args()
    asyncio.run(main(args.base_url, args.token, args.concurrency, args.page_size, args.stale_after))
