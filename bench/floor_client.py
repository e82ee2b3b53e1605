"""The floor: the least a client can do for the sweeper's work over HTTP/1.1.

Raw asyncio streams on keep-alive connections, request bytes built by hand, and
of each answer only the status line, the headers (for Content-Length) and the
body that many bytes long. It lists every page (JSON-decoded: the step ids and
the cursor are needed), then for each zombie re-reads it (GET) and, when the
answer still says RUNNING (a byte search, no decoding), PATCHes it with the same
body fields as the sweeper, `--concurrency` connections in flight. No
validation, no retries, no logging, no per-request objects beyond the bytes.
`bench/bare_client.py` does the same work with the ordinary stream-reader
habits (a readline per header, a JSON decode per answer) and costs about twice
this. Prints one JSON line: {"seconds": ..., "marked": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

STEPS = "/api/data-platform/workflow-run-steps"
RUNNING = b'"status":"RUNNING"'


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes = b"") -> tuple[bool, bytes]:
        """Send one request; (a 2xx status, the body) of its answer."""
        self.writer.write(head + body)
        answer = await self.reader.readuntil(b"\r\n\r\n")
        lower = answer.lower()
        at = lower.find(b"\r\ncontent-length:")
        length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)]) if at >= 0 else 0
        payload = await self.reader.readexactly(length) if length else b""
        return answer[9:10] == b"2", payload


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def last_sign(step: dict) -> str:
    return max(step.get(k) or "" for k in ("startedAt", "updatedAt", "lastHeartbeatAt"))


async def main(base_url: str, token: str, concurrency: int, page_size: int, stale: float) -> None:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    common = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n".encode()
    started = time.perf_counter()
    cutoff = stamp(datetime.now(UTC) - timedelta(seconds=stale))
    listing = Connection(*await asyncio.open_connection(host, port))
    zombies: list[dict] = []
    cursor = None
    while True:
        target = f"{STEPS}?status=RUNNING&startedBefore={cutoff}&limit={page_size}"
        if cursor:
            target += f"&cursor={quote(cursor)}"
        _, payload = await listing.request(f"GET {target} HTTP/1.1\r\n".encode() + common + b"\r\n")
        page = json.loads(payload)
        zombies += [s for s in page["data"] if last_sign(s) < cutoff]
        cursor = page.get("nextCursor")
        if not cursor:
            break
    listing.writer.close()
    queue = iter(zombies)
    marked = 0
    patch_tail = b"Content-Type: application/json\r\nContent-Length: "
    message = b'"errorCode":"ZOMBIE_STEP_TIMEOUT","errorMessage":"No sign of life from this step."'
    details = b'"errorDetails":{"sweepId":"floor","rule":"default"}'

    async def worker() -> None:
        nonlocal marked
        connection = Connection(*await asyncio.open_connection(host, port))
        for step in queue:
            path = f"{STEPS}/{quote(step['stepId'], safe='')}".encode()
            org = step["organizationId"].encode()
            query = quote(step["organizationId"]).encode()
            ok, payload = await connection.request(
                b"GET " + path + b"?organizationId=" + query + b" HTTP/1.1\r\n" + common + b"\r\n"
            )
            if not ok or RUNNING not in payload:
                continue
            body = (
                b'{"organizationId":"' + org + b'","status":"FAILED","completedAt":"'
                + stamp(datetime.now(UTC)).encode() + b'",' + message + b"," + details + b"}"
            )  # fmt: skip
            ok, _ = await connection.request(
                b"PATCH " + path + b" HTTP/1.1\r\n" + common + patch_tail
                + str(len(body)).encode() + b"\r\n\r\n",
                body,
            )  # fmt: skip
            marked += ok
        connection.writer.close()

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
