"""The transport over real loopback sockets: paths, errors, no redirects, framing."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import aiohttp
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from sweeper.api import PlatformClient, build_http_client
from sweeper.devserver.app import Faults
from sweeper.devserver.server import serve_in_thread
from sweeper.devserver.state import PlatformState
from sweeper.errors import PlatformRefused, PlatformUnavailable
from sweeper.retries import RetryPolicy
from tests.fakes import TOKEN

ONE_TRY = RetryPolicy(max_attempts=1)


def client(base_url: str, timeout: float = 5.0) -> httpx.AsyncClient:
    return build_http_client(base_url, TOKEN, timeout=timedelta(seconds=timeout), max_connections=4)


@pytest.fixture(name="raw_paths")
def _raw_paths() -> Iterator[tuple[str, list[bytes]]]:
    seen: list[bytes] = []

    async def record(request: Request) -> Response | None:
        seen.append(request.scope["raw_path"])
        return Response("{}", status_code=404)

    with serve_in_thread(PlatformState(), TOKEN, intercept=record) as server:
        yield server.base_url, seen


@pytest.mark.parametrize(
    ("step_id", "raw"),
    [("..", b"%2E%2E"), (".", b"%2E"), ("a/b", b"a%2Fb"), ("ü ?#%", b"%C3%BC%20%3F%23%25")],
)
def test_step_ids_reach_the_server_exactly_as_encoded(
    raw_paths: tuple[str, list[bytes]], step_id: str, raw: bytes
) -> None:
    """No dot-segment resolution or re-quoting between httpx and the socket."""
    base_url, seen = raw_paths

    async def go() -> None:
        async with client(base_url) as http:
            await PlatformClient(http, retry=ONE_TRY).get_step(step_id, "org")

    asyncio.run(go())
    assert seen == [b"/api/data-platform/workflow-run-steps/" + raw]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused_is_a_connect_error() -> None:
    """Nothing listening: httpx.ConnectError, which the client retries as transient."""

    async def go() -> None:
        async with client(f"http://127.0.0.1:{free_port()}") as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/x")
            with pytest.raises(PlatformUnavailable, match=r"connection refused.*127\.0\.0\.1:\d+"):
                await PlatformClient(http, retry=ONE_TRY).get_step("s", "o")

    asyncio.run(go())


def test_slow_answer_is_a_read_timeout() -> None:
    """An answer slower than api.timeout is a timeout (transient)."""
    faults = Faults(latency=timedelta(milliseconds=500))
    with serve_in_thread(PlatformState(), TOKEN, faults=faults) as server:

        async def go() -> None:
            async with client(server.base_url, timeout=0.1) as http:
                with pytest.raises(httpx.TimeoutException):
                    await http.get("/api/data-platform/workflow-run-steps")

        asyncio.run(go())


def test_redirects_are_answers_not_followed() -> None:
    """A 302 comes back as a 302; the Location is never requested."""
    hits: list[str] = []

    async def redirect(request: Request) -> Response | None:
        hits.append(request.url.path)
        return Response(status_code=302, headers={"Location": "/elsewhere"})

    with serve_in_thread(PlatformState(), TOKEN, intercept=redirect) as server:

        async def go() -> None:
            async with client(server.base_url) as http:
                with pytest.raises(PlatformRefused):
                    await PlatformClient(http, retry=ONE_TRY).get_step("s", "o")

        asyncio.run(go())
    assert hits == ["/api/data-platform/workflow-run-steps/s"]


def raw_server(answer: Callable[[socket.socket], None]) -> tuple[str, threading.Thread]:
    """A one-shot socket server whose answer we write by hand (resets, truncation)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            answer(conn)
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


@pytest.mark.parametrize(
    "answer",
    [
        lambda c: c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"succ'),
        lambda c: c.sendall(b""),
        lambda c: c.sendall(b"garbage\r\n\r\n"),
    ],
)
def test_cut_or_broken_answers_are_transport_errors(
    answer: Callable[[socket.socket], None],
) -> None:
    """A connection closed mid-answer, or an answer that is not HTTP, is a transport error."""
    url, thread = raw_server(answer)

    async def go() -> None:
        async with client(url) as http:
            with pytest.raises(PlatformUnavailable):
                await PlatformClient(http, retry=ONE_TRY).get_step("s", "o")

    asyncio.run(go())
    thread.join(timeout=5)


def test_compressed_answers_are_decoded() -> None:
    """Content-Encoding: gzip is decoded by httpx before the JSON is read."""
    body = gzip.compress(json.dumps({"success": True, "data": {"ok": 1}}).encode())
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    url, thread = raw_server(lambda c: c.sendall(head.encode() + body))

    async def go() -> httpx.Response:
        async with client(url) as http:
            response = await http.get("/x")
            return response

    response = asyncio.run(go())
    assert response.json() == {"success": True, "data": {"ok": 1}}
    thread.join(timeout=5)


def test_tls_is_verified_by_default_and_a_ca_bundle_can_be_added(tmp_path: object) -> None:
    """Without a CA bundle the system store is used with verification on; none is ever off."""
    import ssl

    from sweeper.transport import Transport

    default = Transport(max_connections=1).tls_context()
    assert isinstance(default, ssl.SSLContext)
    assert default.verify_mode is ssl.CERT_REQUIRED
    assert default.check_hostname is True
    custom = ssl.create_default_context()
    assert Transport(max_connections=1, verify=custom).tls_context() is custom
    # verify=False (only ever a test's choice) turns both checks off, and only then.
    off = Transport(max_connections=1, verify=False).tls_context()
    assert off.verify_mode is ssl.CERT_NONE
    assert off.check_hostname is False


def test_the_sweeper_does_not_import_the_stand_in_server() -> None:
    """`sweeper run` never pays for starlette or uvicorn: the dev server loads on demand."""
    import subprocess
    import sys

    code = (
        "import sys; from sweeper.cli import build_parser; build_parser();"
        "import sweeper.app, sweeper.sweep, sweeper.schedule;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_aiohttp_failures_through_a_proxy_leave_as_httpx_errors() -> None:
    """Through a proxy (aiohttp), each failure is the httpx exception it means."""
    import aiohttp

    from sweeper.proxied import map_error

    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    cases: list[tuple[BaseException, type[httpx.TransportError]]] = [
        (aiohttp.ConnectionTimeoutError(), httpx.ConnectTimeout),
        (TimeoutError(), httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError(), httpx.ReadTimeout),
        (aiohttp.ClientConnectorError(key, OSError(111, "refused")), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut"), httpx.RemoteProtocolError),
        (aiohttp.ClientResponseError(None, (), status=400), httpx.RemoteProtocolError),  # type: ignore[arg-type]
        (aiohttp.ClientOSError(), httpx.ReadError),
    ]
    for exc, expected in cases:
        assert type(map_error(exc)) is expected, exc
    # A timeout says which, or at least that it timed out (TimeoutError says nothing).
    assert str(map_error(aiohttp.ConnectionTimeoutError("connect 5s"))) == "connect 5s"
    assert str(map_error(aiohttp.ServerTimeoutError("read 5s"))) == "read 5s"
    assert str(map_error(TimeoutError())) == "timed out"
    assert str(map_error(aiohttp.ServerDisconnectedError("gone"))) == "gone"
    assert str(map_error(aiohttp.ClientPayloadError("x"))) == (
        "the answer's body was cut off or malformed"
    )
    assert str(map_error(aiohttp.ClientResponseError(None, (), status=400))) == (  # type: ignore[arg-type]
        "malformed answer (400)"
    )
    assert str(map_error(aiohttp.ClientOSError())) == "ClientOSError"
    assert str(map_error(aiohttp.ClientOSError(104, "reset"))) == "[Errno 104] reset"


def reraised(exc: BaseException) -> httpx.TransportError:
    """What the proxied transport raises for `exc`, raised as it is there (in an except)."""
    from sweeper.proxied import reraise

    try:
        try:
            raise exc
        except aiohttp.ClientError as caught:
            reraise(caught)
    except httpx.TransportError as error:
        return error
    raise AssertionError("reraise returned")


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientResponseError(
            None,  # type: ignore[arg-type]
            (),
            status=400,
            message=f"Invalid HTTP header: b'Bearer {TOKEN}'",
        ),
        aiohttp.ClientPayloadError(f"Response payload is not completed: b'Bearer {TOKEN}'"),
    ],
    ids=["parser", "payload"],
)
def test_aiohttp_errors_quoting_the_answer_never_carry_the_token(exc: BaseException) -> None:
    """aiohttp's parser quotes the answer's bytes; a peer reflecting the Authorization
    header would put the token there: the error, its chain and its description omit it."""
    from sweeper.exchange import describe_transport_error

    error = reraised(exc)
    assert TOKEN not in describe_transport_error(error)
    assert TOKEN not in str(error)
    assert error.__cause__ is None


def test_the_cause_of_a_connect_error_is_still_described() -> None:
    """A refused connection keeps its cause: the operator sees why."""
    from sweeper.exchange import describe_transport_error

    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    error = reraised(aiohttp.ClientConnectorError(key, OSError(111, "Connection refused")))
    assert isinstance(error, httpx.ConnectError)
    assert describe_transport_error(error).startswith("connection refused")
