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
from sweeper.transport import Transport, origin_of, proxy_for
from tests.fakes import TOKEN
from tests.scripted_server import Scripted

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


# The direct path's own rules, on a scripted loopback server (tests/scripted_server.py).


def ok(body: bytes = b"ok", version: bytes = b"HTTP/1.1") -> bytes:
    return version + b" 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def hang_up(writer: asyncio.StreamWriter) -> None:
    """A scripted answer: the request was read, the connection closes unanswered."""


class Refused(Exception):
    pass


def no_proxies_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://h.example/x", ("http", "h.example", 80)),
        ("https://h.example/x", ("https", "h.example", 443)),
        ("http://h.example:8080/x", ("http", "h.example", 8080)),
        ("https://h.example:443/x", ("https", "h.example", 443)),
        ("https://h.example:80/x", ("https", "h.example", 80)),
        ("http://[::1]:8080/x", ("http", "::1", 8080)),
    ],
)
def test_a_direct_request_connects_to_its_url_s_port_or_the_scheme_s(
    url: str, origin: tuple[str, str, int]
) -> None:
    """The port a connection is opened to: the URL's, else 80 for http, 443 for https."""
    assert origin_of(httpx.URL(url)) == origin


def test_a_scheme_without_a_transport_is_refused_naming_it() -> None:
    with pytest.raises(httpx.UnsupportedProtocol) as refused:
        origin_of(httpx.URL("ftp://h.example/x"))
    assert str(refused.value) == "no ftp:// transport"

    async def go() -> None:
        transport = Transport(max_connections=1)
        with pytest.raises(httpx.UnsupportedProtocol, match=r"^no ws:// transport$"):
            await transport.handle_async_request(httpx.Request("GET", "ws://127.0.0.1:9/x"))
        await transport.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
def test_a_request_built_without_a_client_is_answered_with_its_http_version(
    version: bytes,
) -> None:
    """No timeout extension (no httpx client set one): sent, and answered; the answer's
    HTTP version is the one the server spoke."""

    async def go() -> tuple[int, str, bytes]:
        async with Scripted([ok(b"fine", version)]) as server:
            transport = Transport(max_connections=1)
            try:
                response = await transport.handle_async_request(
                    httpx.Request("GET", server.url + "/x")
                )
                body = await response.aread()
            finally:
                await transport.aclose()
            return response.status_code, response.http_version, body

    assert asyncio.run(go()) == (200, version.decode(), b"fine")


def test_the_last_look_sees_the_path_without_the_query() -> None:
    """The query is cut at its first `?` (a query may hold more); the request line
    keeps it whole."""
    looks: list[tuple[str, str]] = []

    async def go() -> list[bytes]:
        async with Scripted([ok()]) as server:
            transport = Transport(max_connections=1, before_write=lambda m, p: looks.append((m, p)))
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as http:
                assert (await http.get("/a/b?q=1?2&r=%3F")).content == b"ok"
            return server.requests

    requests = asyncio.run(go())
    assert looks == [("GET", "/a/b")]
    assert requests[0].startswith(b"GET /a/b?q=1?2&r=%3F HTTP/1.1\r\n")


def test_a_refused_last_look_costs_no_connection() -> None:
    """Nothing was written on the connection the refused request got: it goes back to
    the pool and the next request goes out on it."""
    looks: list[str] = []

    def hook(method: str, path: str) -> None:
        looks.append(path)
        if len(looks) == 1:
            raise Refused(path)

    async def go() -> tuple[int, list[bytes]]:
        async with Scripted([ok()]) as server:
            transport = Transport(max_connections=1, before_write=hook)
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as http:
                with pytest.raises(Refused):
                    await http.patch("/s", content=b"{}")
                assert (await http.get("/t")).content == b"ok"
            return server.connections, server.requests

    connections, requests = asyncio.run(go())
    assert connections == 1
    assert looks == ["/s", "/t"]
    assert [r.split(b"\r\n")[0] for r in requests] == [b"GET /t HTTP/1.1"]


def test_a_get_is_resent_once_only() -> None:
    """A GET whose kept-alive connection closed under it goes out once more; when that
    connection (another kept one) closes too, the error is the caller's: never a third
    try."""

    async def go() -> tuple[list[bytes], int]:
        async with Scripted([ok(b"a"), ok(b"b"), hang_up, hang_up, ok(b"never")]) as server:
            transport = Transport(max_connections=2)
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as http:
                first = await asyncio.gather(http.get("/a"), http.get("/b"))
                assert sorted(r.content for r in first) == [b"a", b"b"]
                with pytest.raises(httpx.RemoteProtocolError):
                    await http.get("/c")
            return server.requests, server.connections

    requests, connections = asyncio.run(go())
    assert sorted(r.split(b" ")[1] for r in requests[:2]) == [b"/a", b"/b"]
    assert [r.split(b" ")[1] for r in requests[2:]] == [b"/c", b"/c"]
    assert connections == 2


def test_each_host_gets_its_own_proxy_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """One transport, two hosts: loopback goes direct, the other through HTTPS_PROXY
    (a proxy looked up once is never reused for another host)."""
    no_proxies_from_outside(monkeypatch)
    refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    async def go() -> list[bytes]:
        async with Scripted([ok(b"direct"), refused]) as server:
            monkeypatch.setenv("HTTPS_PROXY", server.url)
            transport = Transport(max_connections=1)
            async with httpx.AsyncClient(transport=transport) as http:
                assert (await http.get(server.url + "/x")).content == b"direct"
                with pytest.raises(httpx.HTTPError):
                    await http.get("https://platform.invalid:8443/y")
            return server.requests

    requests = asyncio.run(go())
    assert [r.split(b"\r\n")[0] for r in requests] == [
        b"GET /x HTTP/1.1",
        b"CONNECT platform.invalid:8443 HTTP/1.1",
    ]


@pytest.mark.parametrize(
    ("environment", "scheme", "port", "expected"),
    [
        # NO_PROXY with a port: a URL without one has its scheme's default port.
        ({"HTTP_PROXY": "http://p:3128", "NO_PROXY": "platform.example:80"}, "http", None, None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "platform.example:443"}, "https", None, None),
        (
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "platform.example:80"},
            "https",
            None,
            "http://p:3128",
        ),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "platform.example:80"}, "https", 80, None),
        # An https:// proxy (in any case) is one aiohttp speaks too.
        ({"HTTPS_PROXY": "https://p:3128"}, "https", None, "https://p:3128"),
        ({"HTTPS_PROXY": "HTTPS://p:3128"}, "https", None, "HTTPS://p:3128"),
    ],
)
def test_a_proxy_is_chosen_on_the_port_the_request_goes_to(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    scheme: str,
    port: int | None,
    expected: str | None,
) -> None:
    no_proxies_from_outside(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(scheme, "platform.example", port) == expected


@pytest.mark.parametrize(
    ("environment", "scheme", "message"),
    [
        (
            {"HTTPS_PROXY": "127.0.0.1:3128"},
            "https",
            "not sent: the proxy for https:// is a schemeless proxy; only http(s) proxies "
            "are supported (or name the host in NO_PROXY)",
        ),
        (
            {"ALL_PROXY": "socks5h://p:1080"},
            "https",
            "not sent: the proxy for https:// is a socks5h proxy; only http(s) proxies "
            "are supported (or name the host in NO_PROXY)",
        ),
        (
            {"HTTP_PROXY": "http://p:3128"},
            "http",
            "not sent: plain http:// to platform.example through a proxy would hand it the "
            "token; use https:// or name the host in NO_PROXY",
        ),
    ],
)
def test_a_refused_proxy_says_why_and_the_way_out(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], scheme: str, message: str
) -> None:
    """The operator reads what to change: the proxy's kind, or the token it would see,
    and NO_PROXY (its name as the operator writes it)."""
    no_proxies_from_outside(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    refused = proxy_for(scheme, "platform.example", None)
    assert isinstance(refused, httpx.ProxyError)
    assert str(refused) == message
