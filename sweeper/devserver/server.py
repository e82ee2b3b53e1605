"""Serving the stand-in: in the foreground (`sweeper dev-server`) or on a thread (demo, tests)."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn

from sweeper.devserver.app import Faults, Intercept, create_app
from sweeper.devserver.state import PlatformState


def _config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        date_header=False,  # the app sets Date itself, skewed on demand
        server_header=False,
        lifespan="off",
        backlog=4096,
        timeout_keep_alive=30,
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before serving: the port is known, and early clients queue."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted connections; with
    # proto 0 it does not, and Nagle plus delayed ACKs add ~40 ms to every answer.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class RunningServer:
    """A stand-in serving on a background thread; `stop()` ends it."""

    base_url: str
    state: PlatformState
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    state: PlatformState,
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults | None = None,
    intercept: Intercept | None = None,
    also_tokens: tuple[str, ...] = (),
) -> RunningServer:
    app = create_app(state, token, faults, intercept, also_tokens)
    server = uvicorn.Server(_config(app, host, port))
    sock = listening_socket(host, port)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])),
        name="sweeper-devserver",
        daemon=True,
    )
    thread.start()
    return RunningServer(url_of(sock), state, app, server, thread)


def announcement(url: str, token: str) -> str:
    """What `dev-server` prints: where it is, its token, and how to point a sweeper at it."""
    return (
        f"sweeper dev-server: listening on {url}\n"
        f"token: {token}\n"
        "point a sweeper at it with a configuration file:\n"
        "  [api]\n"
        f'  base_url = "{url}"\n'
        f'  token = "{token}"\n'
        "or with the environment alone:\n"
        f"  SWEEPER_API__BASE_URL={url} SWEEPER_API__TOKEN={token} sweeper run --once --dry-run"
    )


async def serve_forever(
    state: PlatformState, token: str, host: str, port: int, faults: Faults
) -> None:
    """The `dev-server` command: serve until SIGTERM/SIGINT (uvicorn handles both)."""
    server = uvicorn.Server(_config(create_app(state, token, faults), host, port))
    sock = listening_socket(host, port)
    print(announcement(url_of(sock), token), flush=True)
    await server.serve(sockets=[sock])
