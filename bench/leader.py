"""Figures of leader election (issue 17), printed, never asserted.

    python bench/leader.py [--rounds 5] [--backend etcd|kubernetes] [--follower-seconds 60]

A real etcd (Debian's etcd-server, on a free loopback port), the stand-in platform
in-process (each copy with its own token, so every request is attributed), and
two real daemons (`python -m sweeper run`) with lease 4 s and renew_every 1 s.

- failover: for kill -9, SIGSTOP and SIGTERM of the leader, `--rounds` times each
  on a fresh pair, the time from the signal to the first listing the other copy
  sends the platform (its own `request.sent` stamp, not the stand-in's arrival
  time, which a loaded process records late); p50 and max (limits: lease + renew
  + 2 s = 7 s for kill -9 and SIGSTOP, 2 s for SIGTERM);
- a follower's requests per minute over `--follower-seconds`: to the engine
  (counted by a loopback proxy in front of etcd, or by the Kubernetes Lease fake)
  and to the platform (which must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweeper.devserver.server import listening_socket, url_of
from tests.e2e import wait_for
from tests.etcd import Etcd
from tests.k8s_fake import serve_fake_api
from tests.leader_harness import (
    Copy,
    Stand,
    first_listing_after,
    leader_of,
    start_stand,
    stop_all,
)

K8S_TOKEN = "bench-service-account-token"


def counting_proxy(target: str, counts: Counter[str], who: str) -> str:
    """A loopback reverse proxy to etcd that counts the requests of one copy."""

    async def forward(request: Request) -> Response:
        counts[who] += 1
        body = await request.body()
        # No timeout: the campaign is a long poll that lasts as long as it must.
        async with httpx.AsyncClient(timeout=None) as http:  # noqa: S113
            answer = await http.post(target + request.url.path, content=body)
        return Response(answer.content, status_code=answer.status_code)

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    sock = listening_socket("127.0.0.1", 0)
    threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True).start()
    return url_of(sock)


def pair(
    tmp: Path, stand: Stand, config: Callable[[str], str], round_no: int
) -> tuple[list[Copy], Copy]:
    folder = tmp / f"round-{round_no}"
    folder.mkdir()
    copies = [Copy(name, folder, stand, config(name)).start() for name in ("a", "b")]
    leader = leader_of(copies)
    other = next(c for c in copies if c is not leader)
    wait_for(lambda: bool(other.events("leader.following")), timeout=60)
    wait_for(lambda: any(s.copy == leader.name for s in stand.listings()), timeout=60)
    return copies, leader


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=["etcd", "kubernetes"], default="etcd")
    parser.add_argument("--follower-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        etcd = Etcd(tmp / "etcd").start()
        stand = start_stand(2)
        counts: Counter[str] = Counter()
        api_server = api = None
        token = tmp / "sa-token"
        token.write_text(K8S_TOKEN)
        if args.backend == "kubernetes":
            api_server, api = serve_fake_api(etcd.url, K8S_TOKEN)
        proxies = {who: counting_proxy(etcd.url, counts, who) for who in ("a", "b")}
        election = [0]

        def config(who: str) -> str:
            name = f"bench{election[0]}"
            if api_server is not None:
                return (
                    f'backend = "kubernetes"\nname = "{name}"\n[leader.kubernetes]\n'
                    f'namespace = "bench"\napi_url = "{api_server.base_url}"\n'
                    f'token_file = "{token}"\n'
                )
            return (
                f'backend = "etcd"\nname = "{name}"\n[leader.etcd]\n'
                f'endpoints = ["{proxies[who]}"]\n'
            )

        print(f"backend: {args.backend}; lease 4 s, renew_every 1 s; {args.rounds} rounds each")
        print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        round_no = 0
        for label, signum in (
            ("kill -9", signal.SIGKILL),
            ("SIGSTOP", signal.SIGSTOP),
            ("SIGTERM", signal.SIGTERM),
        ):
            times = []
            for _ in range(args.rounds):
                round_no += 1
                election[0] = round_no
                stand.seen.clear()
                copies, leader = pair(tmp, stand, config, round_no)
                try:
                    at = leader.signal(signum)
                    times.append(first_listing_after(copies, at, but_not=leader.name))
                finally:
                    stop_all(copies)
            print(
                f"failover after {label:8s}: p50 {statistics.median(times):.2f} s,"
                f" max {max(times):.2f} s  ({', '.join(f'{t:.2f}' for t in times)})"
            )
        round_no += 1
        election[0] = round_no
        stand.seen.clear()
        copies, leader = pair(tmp, stand, config, round_no)
        follower = next(c for c in copies if c is not leader)
        try:
            counts.clear()
            seen_before = len(api.seen) if api is not None else 0
            start = time.time()
            time.sleep(args.follower_seconds)  # the measurement window itself
            minutes = (time.time() - start) / 60
            platform = [s for s in stand.requests(follower.name) if s.at >= start]
            if api is not None:
                engine = sum(1 for _ in api.seen[seen_before:]) / 2  # both copies share it
                note = "(Lease API, both copies' average)"
            else:
                engine = counts[follower.name]
                note = "(etcd, counted at its proxy)"
            print(
                f"follower requests per minute: engine {engine / minutes:.1f} {note},"
                f" platform {len(platform) / minutes:.1f}"
            )
        finally:
            stop_all(copies)
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        etcd.stop()
        stand.server.stop()
        if api_server is not None:
            api_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
