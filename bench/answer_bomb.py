"""Peak memory while a listing's answer is a compression bomb.

A loopback server answers the listing with a few KB that decode to `--inflated-mib`
of zeros through stacked encodings (`--encoding "gzip, gzip"` by default), over the
real aiohttp transport and PlatformClient. Prints one JSON line: the answer's size on
the wire, what the client made of it, and this process's peak RSS in MiB (ru_maxrss).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import threading
import zlib
from datetime import UTC, datetime, timedelta

from sweeper.api import PlatformClient, build_http_client
from sweeper.errors import SweeperError

MIB = 1024 * 1024


def compress(layers: list[str], inflated: int) -> bytes:
    """`inflated` zeros under the given encodings (first applied first), built in pieces."""
    zeros = bytes(MIB)
    first = layers[0]
    packer = zlib.compressobj(1, zlib.DEFLATED, 31 if first in ("gzip", "x-gzip") else 15)
    parts = [packer.compress(zeros) for _ in range(inflated // MIB)]
    data = b"".join(parts) + packer.flush()
    for layer in layers[1:]:
        wbits = 31 if layer in ("gzip", "x-gzip") else 15
        packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
        data = packer.compress(data) + packer.flush()
    return data


def serve(answer: bytes) -> tuple[str, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            with contextlib.suppress(OSError):  # the client stopped reading: the point
                conn.sendall(answer)
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


async def read(base_url: str) -> str:
    async with build_http_client(
        base_url, "bench-token", timeout=timedelta(seconds=60), max_connections=1
    ) as http:
        client = PlatformClient(http, max_attempts=1)
        try:
            async for _ in client.list_running(started_before=datetime.now(UTC), page_size=1):
                return "read as a page"
        except SweeperError as exc:
            return f"{type(exc).__name__}: {exc}"
    return "no page"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inflated-mib", type=int, default=1024)
    parser.add_argument("--encoding", default="gzip, gzip")
    args = parser.parse_args()
    applied = [e.strip() for e in args.encoding.split(",")]
    body = compress(applied, args.inflated_mib * MIB)
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: {args.encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    url, thread = serve(head.encode() + body)
    outcome = asyncio.run(read(url))
    thread.join(timeout=10)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "encoding": args.encoding,
                "wire_bytes": len(body),
                "inflated_mib": args.inflated_mib,
                "outcome": outcome,
                "peak_rss_mib_before": round(before, 1),
                "peak_rss_mib": round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
