"""Peak memory while a listing's answer is a compression bomb.

A loopback server (its own process) answers the listing with a few KB that decode to
`--inflated-mib` of zeros through stacked encodings (`--encoding "gzip, gzip"` by
default), read over the real transport and PlatformClient. Prints one JSON
line: the answer's size on the wire, what the client made of it, and the client
process's peak RSS in MiB (VmHWM; ru_maxrss alongside).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta

from sweeper.api import PlatformClient, build_http_client
from sweeper.errors import SweeperError
from sweeper.retries import RetryPolicy

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


def serve(answer: bytes) -> None:
    """Answer one request with `answer`, in this (separate) process; print the port first."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)
        with contextlib.suppress(OSError):  # the client stopped reading: the point
            conn.sendall(answer)
    listener.close()


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM). ru_maxrss is printed too, but a child keeps
    its parent's peak at fork (pytest's, say), so it can overstate the client's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


async def read(base_url: str) -> str:
    async with build_http_client(
        base_url, "bench-token", timeout=timedelta(seconds=60), max_connections=1
    ) as http:
        client = PlatformClient(http, retry=RetryPolicy(max_attempts=1))
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
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    applied = [e.strip() for e in args.encoding.split(",")]
    if args.serve:  # the bomb is built and served in its own process: not measured
        body = compress(applied, args.inflated_mib * MIB)
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: {args.encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        print(len(body), flush=True)
        serve(head.encode() + body)
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", *sys.argv[1:]], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    wire_bytes = int(server.stdout.readline())
    port = int(server.stdout.readline())
    before = peak_rss_mib()
    outcome = asyncio.run(read(f"http://127.0.0.1:{port}"))
    server.wait(timeout=60)
    print(
        json.dumps(
            {
                "encoding": args.encoding,
                "wire_bytes": wire_bytes,
                "inflated_mib": args.inflated_mib,
                "outcome": outcome,
                "peak_rss_mib_before": round(before, 1),
                "peak_rss_mib": round(peak_rss_mib(), 1),
                "ru_maxrss_mib": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
