"""What the two raw-socket clients (floor_client.py, bare_client.py) share: the work and
the connections. Each keeps its own way of reading an answer, the one thing that differs
between them and what the `bare-vs-floor` figure measures.

The work: list every page, then for each zombie (no sign of life for `--stale-after`
seconds) re-read it and PATCH it with the sweeper's body fields, `--concurrency`
connections in flight; no validation, no retries, no logging. Prints one JSON line:
{"seconds": ..., "marked": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

STEPS = "/api/data-platform/workflow-run-steps"


class Connection:
    """One keep-alive connection, opened at its first request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, data: bytes) -> asyncio.StreamReader:
        """Write one request; the reader its answer comes on."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(data)
        assert self.reader is not None
        return self.reader

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Client(Protocol):
    """One client's connection and its way with requests and answers."""

    async def page(self, target: str) -> dict[str, Any]:
        """GET a listing page, decoded."""
        ...

    async def mark(self, step: dict[str, Any]) -> bool:
        """Re-read the step and, when it is still RUNNING, PATCH it; whether it was marked."""
        ...

    def close(self) -> None: ...


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def last_sign(step: dict[str, Any]) -> str:
    return max(step.get(k) or "" for k in ("startedAt", "updatedAt", "lastHeartbeatAt"))


def step_path(step: dict[str, Any]) -> str:
    return f"{STEPS}/{quote(step['stepId'], safe='')}"


async def sweep(
    connect: Callable[[str, int], Client],
    base_url: str,
    concurrency: int,
    page_size: int,
    stale: float,
) -> None:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    started = time.perf_counter()
    cutoff = stamp(datetime.now(UTC) - timedelta(seconds=stale))
    listing = connect(host, port)
    zombies: list[dict[str, Any]] = []
    cursor = None
    while True:
        target = f"{STEPS}?status=RUNNING&startedBefore={cutoff}&limit={page_size}"
        if cursor:
            target += f"&cursor={quote(cursor)}"
        page = await listing.page(target)
        zombies += [s for s in page["data"] if last_sign(s) < cutoff]
        cursor = page.get("nextCursor")
        if not cursor:
            break
    listing.close()
    queue = iter(zombies)
    marked = 0

    async def worker() -> None:
        nonlocal marked
        client = connect(host, port)
        for step in queue:
            done = await client.mark(step)  # not `marked += await`: it would read before
            marked += done  # the await and lose the other workers' counts
        client.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(json.dumps({"seconds": time.perf_counter() - started, "marked": marked}))


def command_line(client: Callable[[str, int, str], Client]) -> None:
    """The clients' shared command line: BASE_URL [--token] [--concurrency] [...]."""
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("--token", default="dev-token")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--stale-after", type=float, default=7200)
    args = parser.parse_args()

    def connect(host: str, port: int) -> Client:
        return client(host, port, args.token)

    asyncio.run(sweep(connect, args.base_url, args.concurrency, args.page_size, args.stale_after))
