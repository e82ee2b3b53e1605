"""The token goes only to base_url's host: loopback never through a proxy; elsewhere the
proxy variables are honoured as NO_PROXY says, https tunnels, plain http is refused.

A recording proxy on loopback sees every byte sent to it; the stand-in platform records
the Authorization header of every request it gets."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from sweeper.api import build_http_client
from sweeper.devserver.server import serve_in_thread
from sweeper.devserver.state import PlatformState
from sweeper.transport import Transport, no_proxy_names, proxy_for
from tests.fakes import TOKEN

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "REQUEST_METHOD",
)


@pytest.fixture(autouse=True)
def _no_proxy_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class RecordingProxy:
    """A loopback 'proxy' that keeps every byte it receives and forwards nothing."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.received.append(head)
        if head.startswith(b"CONNECT "):
            # A tunnel is granted; whatever comes through it is kept too (TLS here).
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            self.received.append(await reader.read(65536))
        else:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def saw_token(self) -> bool:
        return any(TOKEN.encode() in chunk for chunk in self.received)

    def connects(self) -> list[bytes]:
        return [c.split(b"\r\n", 1)[0] for c in self.received if c.startswith(b"CONNECT ")]


@pytest.fixture(name="platform_url")
def _platform_url() -> Iterator[tuple[str, list[str | None]]]:
    authorizations: list[str | None] = []

    async def record(request: Request) -> Response | None:
        authorizations.append(request.headers.get("authorization"))
        return None

    with serve_in_thread(PlatformState(), TOKEN, intercept=record) as server:
        yield server.base_url, authorizations


async def one_request(base_url: str) -> int | str:
    """One listing request through the real client; its status, or the error's text."""
    async with build_http_client(
        base_url, TOKEN, timeout=timedelta(seconds=5), max_connections=2
    ) as http:
        try:
            response = await http.get("/api/data-platform/workflow-run-steps?limit=1")
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return response.status_code


def set_all(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name in PROXY_VARIABLES[:3] + PROXY_VARIABLES[4:7]:
        monkeypatch.setenv(name, proxy)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_never_goes_through_a_proxy(
    monkeypatch: pytest.MonkeyPatch, platform_url: tuple[str, list[str | None]], host: str
) -> None:
    """Every proxy variable, both cases, set: a loopback base URL is reached directly, and
    the proxy sees nothing."""
    base_url, authorizations = platform_url
    base_url = base_url.replace("127.0.0.1", host)
    proxy = RecordingProxy()

    async def go() -> int | str:
        set_all(monkeypatch, await proxy.start())
        try:
            return await one_request(base_url)
        finally:
            await proxy.stop()

    assert asyncio.run(go()) == 200
    assert authorizations == [f"Bearer {TOKEN}"]
    assert proxy.received == []


@pytest.mark.parametrize(
    "variables",
    [
        {"HTTPS_PROXY": "{proxy}"},
        {"https_proxy": "{proxy}"},
        {"ALL_PROXY": "{proxy}"},
        {"all_proxy": "{proxy}"},
        {"HTTPS_PROXY": "{proxy}", "HTTP_PROXY": "http://127.0.0.1:9"},
    ],
)
def test_https_goes_through_the_proxy_as_a_tunnel_without_the_token(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    """An https base URL elsewhere: the proxy named for https (or ALL_PROXY) gets a CONNECT
    to the platform's host and port; no byte it sees holds the token."""
    proxy = RecordingProxy()

    async def go() -> int | str:
        address = await proxy.start()
        for name, value in variables.items():
            monkeypatch.setenv(name, value.format(proxy=address))
        try:
            return await one_request("https://platform.invalid:8443")
        finally:
            await proxy.stop()

    outcome = asyncio.run(go())
    assert isinstance(outcome, str)  # the 'proxy' forwards nothing: the TLS handshake fails
    assert proxy.connects() == [b"CONNECT platform.invalid:8443 HTTP/1.1"]
    assert not proxy.saw_token()


@pytest.mark.parametrize(
    "no_proxy", ["platform.invalid", ".invalid", "*", "other.example,platform.invalid:8443"]
)
@pytest.mark.parametrize("name", ["NO_PROXY", "no_proxy"])
def test_no_proxy_sends_directly(monkeypatch: pytest.MonkeyPatch, no_proxy: str, name: str) -> None:
    """NO_PROXY naming the host (a suffix, *, with its port): the proxy sees nothing."""
    proxy = RecordingProxy()

    async def go() -> int | str:
        set_all(monkeypatch, await proxy.start())
        monkeypatch.setenv(name, no_proxy)
        try:
            return await one_request("https://platform.invalid:8443")
        finally:
            await proxy.stop()

    outcome = asyncio.run(go())
    assert isinstance(outcome, str)  # platform.invalid does not resolve
    assert proxy.received == []


def test_plain_http_elsewhere_is_refused_rather_than_handed_to_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """http:// to another host (allow_insecure_http) with HTTP_PROXY set: not sent at all,
    with a reason naming the way out; the proxy sees nothing."""
    proxy = RecordingProxy()

    async def go() -> int | str:
        set_all(monkeypatch, await proxy.start())
        try:
            return await one_request("http://platform.invalid:8080")
        finally:
            await proxy.stop()

    outcome = asyncio.run(go())
    assert isinstance(outcome, str)
    assert "ProxyError" in outcome
    assert "would hand it the token" in outcome
    assert proxy.received == []


@pytest.mark.parametrize(
    ("environment", "scheme", "host", "expected"),
    [
        ({}, "https", "platform.example", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https", "platform.example", "http://p:3128"),
        ({"ALL_PROXY": "http://a:3128"}, "https", "platform.example", "http://a:3128"),
        (
            {"HTTPS_PROXY": "http://p:1", "ALL_PROXY": "http://a:1"},
            "https",
            "x.example",
            "http://p:1",
        ),
        ({"HTTP_PROXY": "http://p:3128"}, "https", "platform.example", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https", "127.0.0.1", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https", "::1", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https", "localhost", None),
        ({"HTTP_PROXY": "http://p:3128"}, "http", "127.0.0.2", None),
        # This host's loopback spelt as an IPv4-mapped IPv6 address: never handed to a
        # proxy, whose CONNECT would reach the proxy host's own loopback instead.
        ({"HTTPS_PROXY": "http://p:3128"}, "https", "::ffff:127.0.0.1", None),
        ({"HTTP_PROXY": "http://p:3128"}, "http", "::ffff:127.0.0.2", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example"}, "https", "platform.example", None),
        (
            {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"},
            "https",
            "h.example",
            "http://lower:1",
        ),
    ],
)
def test_which_proxy_a_request_takes(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    scheme: str,
    host: str,
    expected: str | None,
) -> None:
    """The table of proxy_for: loopback never, the scheme's variable, then ALL_PROXY."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(scheme, host, None) == expected


@pytest.mark.parametrize(
    ("environment", "scheme", "reason"),
    [
        ({"HTTP_PROXY": "http://p:3128"}, "http", "would hand it the token"),
        ({"ALL_PROXY": "http://p:3128"}, "http", "would hand it the token"),
        ({"ALL_PROXY": "socks5://user:secret@p:1080"}, "https", "a socks5 proxy"),
        ({"HTTPS_PROXY": "p:3128"}, "https", "proxies are supported"),
    ],
)
def test_a_proxy_that_would_see_the_token_or_be_bypassed_is_refused(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], scheme: str, reason: str
) -> None:
    """Refused with a reason, never sent another way; the proxy's own password not echoed."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    refused = proxy_for(scheme, "platform.example", 443)
    assert isinstance(refused, httpx.ProxyError)
    assert reason in str(refused)
    assert "secret" not in str(refused)


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "named"),
    [
        ("*", "anything.example", 443, True),
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        (".example.com", "example.com", 443, True),
        (".example.com", "api.example.com", 443, True),
        ("*.example.com", "api.example.com", 443, True),
        ("*.example.com", "example.com", 443, True),
        ("*.example.com", "api.example.org", 443, False),
        ("EXAMPLE.com.", "Api.Example.COM", 443, True),
        ("example.com:8443", "api.example.com", 8443, True),
        ("example.com:8443", "api.example.com", 443, False),
        ("10.1.2.3", "10.1.2.3", 443, True),
        ("10.1.2.3", "10.1.2.4", 443, False),
        ("10.0.0.0/8", "10.200.3.4", 443, True),
        ("10.0.0.0/8", "11.0.0.1", 443, False),
        ("10.0.0.0/8", "ten.example", 443, False),  # names are never resolved for this
        ("fd00::/8", "fd12::7", 443, True),
        ("fd00::/8", "10.0.0.1", 443, False),
        ("[fd00::1]", "fd00::1", 443, True),
        ("[fd00::1]", "[fd00::1]", 443, True),
        ("fd00::1", "fd00::1", 443, True),
        ("[fd00::1]", "fd00::2", 443, False),
        ("[fd00::1]:8443", "fd00::1", 8443, True),
        ("[fd00::1]:8443", "fd00::1", 443, False),
        ("[fd00::]/16", "fd00:1::1", 443, True),
        ("other.example, 10.0.0.0/8 api.example.com", "api.example.com", 443, True),
        ("not/a/cidr, :, [, ]:1", "api.example.com", 443, False),
        ("", "api.example.com", 443, False),
        # The host as a URL may spell it: a trailing dot (a rooted name), any case.
        ("example.com", "api.example.com.", 443, True),
        ("xray.example.box", "XRAY.EXAMPLE.BOX", 443, True),
        # An entry that does not name the host (another port, another address, a
        # malformed block or port) does not stop the entries after it from naming it.
        ("example.com:8443, example.com", "api.example.com", 443, True),
        ("10.1.2.4, example.com", "example.com", 443, True),
        ("not/a/cidr api.example.com", "api.example.com", 443, True),
        ("[fd00::1]:x1", "fd00::1", 443, False),
        # A block written with host bits set, as operators do; an address in any spelling.
        ("10.1.2.3/8", "10.200.0.1", 443, True),
        ("fd00:0:0::1", "fd00::1", 443, True),
    ],
)
def test_no_proxy_forms(no_proxy: str, host: str, port: int, named: bool) -> None:
    """Every NO_PROXY form an operator writes (docs/network-and-answers.md): domains with
    a leading dot or `*.`, addresses (IPv6 bare or in brackets), CIDR blocks, `:port`."""
    assert no_proxy_names(no_proxy, host, port) is named


@pytest.mark.parametrize(
    ("no_proxy", "host"),
    [
        ("*.example.com", "api.example.com"),
        ("10.0.0.0/8", "10.1.2.3"),
        ("[fd00::1]", "fd00::1"),
        ("[fd00::1]:443", "fd00::1"),
    ],
)
def test_no_proxy_forms_send_directly(
    monkeypatch: pytest.MonkeyPatch, no_proxy: str, host: str
) -> None:
    """Through proxy_for, as requests take it: the host named in NO_PROXY goes direct."""
    monkeypatch.setenv("HTTPS_PROXY", "http://p:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert proxy_for("https", host, None) is None
    assert proxy_for("https", "elsewhere.example", None) == "http://p:3128"


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for platform.invalid (the name the client asks for)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=platform.invalid", "-addext", "subjectAltName=DNS:platform.invalid",
         "-keyout", "key.pem", "-out", "cert.pem"],
        cwd=folder, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


class Servers:
    """Loopback servers whose every connection and handler is closed and awaited on
    `close` (nothing leaks into the next test)."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    def track(self, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.append(task)

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for writer in self.writers:
            writer.close()
        for task in self.tasks:
            task.cancel()  # a handler holding a stalled answer
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


async def tunnelling_proxy(servers: Servers, target_port: int, connects: list[bytes]) -> str:
    """A loopback proxy that opens every CONNECT tunnel to one TLS server on loopback,
    whatever host was asked for, and keeps the CONNECT lines."""

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        servers.track(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        connects.append(head.split(b"\r\n", 1)[0])
        far_reader, far_writer = await asyncio.open_connection("127.0.0.1", target_port)
        servers.writers.append(far_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, far_writer), pipe(far_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    servers.servers.append(server)
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


OK_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


async def tls_platform(
    servers: Servers,
    cert: Path,
    key: Path,
    seen: list[bytes],
    answer: bytes = OK_CLOSE,
    hold: float = 0,
) -> int:
    """A TLS server on loopback giving every request `answer`, keeping each request
    (head and body); its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        servers.track(writer)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            seen.append(head + await reader.readexactly(length))
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(hold)  # a stalled answer: bounded, closed when the test ends
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    servers.servers.append(server)
    return int(server.sockets[0].getsockname()[1])


@pytest.mark.parametrize("trusted", [True, False])
def test_through_a_proxy_tls_is_verified_and_the_last_look_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, trusted: bool
) -> None:
    """Through a CONNECT tunnel the platform's certificate is verified as on a direct
    connection (the CA given, else the system's), and `before_write` (the lease's last
    look) runs before the request leaves, as it does without a proxy."""
    cert, key = make_certificate(tmp_path)
    seen: list[bytes] = []
    looks: list[tuple[str, str]] = []
    connects: list[bytes] = []

    async def go() -> int | str:
        servers = Servers()
        try:
            port = await tls_platform(servers, cert, key, seen)
            monkeypatch.setenv("HTTPS_PROXY", await tunnelling_proxy(servers, port, connects))
            verify = ssl.create_default_context(cafile=str(cert)) if trusted else True
            async with build_http_client(
                "https://platform.invalid:8443", TOKEN, timeout=timedelta(seconds=10),
                max_connections=1, verify=verify,
                before_write=lambda method, path: looks.append((method, path)),
            ) as http:  # fmt: skip
                try:
                    return (await http.get("/api/data-platform/workflow-run-steps")).status_code
                except httpx.HTTPError as exc:
                    return f"{type(exc).__name__}: {exc}"
        finally:
            await servers.close()

    outcome = asyncio.run(go())
    assert connects == [b"CONNECT platform.invalid:8443 HTTP/1.1"]
    if trusted:
        assert outcome == 200
        assert looks == [("GET", "/api/data-platform/workflow-run-steps")]
        assert len(seen) == 1 and f"Bearer {TOKEN}".encode() in seen[0]
    else:
        assert isinstance(outcome, str) and "CERTIFICATE_VERIFY_FAILED" in outcome, outcome
        assert looks == [] and seen == []


STEP = "/api/data-platform/workflow-run-steps/z1"


def through_tunnel(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    before_write: Callable[[str, str], None] | None,
    requests: Callable[[httpx.AsyncClient], Awaitable[object]],
    answer: bytes = OK_CLOSE,
    hold: float = 0,
) -> tuple[object, list[bytes]]:
    """`requests` run through a CONNECT tunnel to a trusted TLS platform: what they
    returned or raised, and what the platform received."""
    cert, key = make_certificate(tmp_path)
    seen: list[bytes] = []

    async def go() -> object:
        servers = Servers()
        try:
            port = await tls_platform(servers, cert, key, seen, answer, hold)
            monkeypatch.setenv("HTTPS_PROXY", await tunnelling_proxy(servers, port, []))
            async with build_http_client(
                "https://platform.invalid:8443", TOKEN, timeout=timedelta(seconds=10),
                max_connections=1, verify=ssl.create_default_context(cafile=str(cert)),
                before_write=before_write,
            ) as http:  # fmt: skip
                try:
                    return await requests(http)
                except Exception as exc:  # what the caller sees, as raised
                    return exc
        finally:
            await servers.close()

    return asyncio.run(go()), seen


def test_a_patch_through_a_proxy_gets_its_last_look_once_before_it_leaves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A request with a body through a proxy: `before_write` runs once (not per chunk),
    with the method and path, and the body reaches the platform whole."""
    looks: list[tuple[str, str]] = []

    async def patch(http: httpx.AsyncClient) -> object:
        return (await http.patch(STEP, content=b'{"status":"FAILED"}')).status_code

    outcome, seen = through_tunnel(
        monkeypatch, tmp_path, lambda method, path: looks.append((method, path)), patch
    )
    assert outcome == 200
    assert looks == [("PATCH", STEP)]
    assert len(seen) == 1 and seen[0].endswith(b'\r\n\r\n{"status":"FAILED"}')


class Refused(Exception):
    pass


def refuse(method: str, path: str) -> None:
    raise Refused(f"{method} {path}")


@pytest.mark.parametrize("method", ["PATCH", "GET"])
def test_a_last_look_refusing_through_a_proxy_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, method: str
) -> None:
    """What `before_write` raises leaves as raised (not wrapped by aiohttp), and the
    platform receives nothing: with a body or without."""

    async def send(http: httpx.AsyncClient) -> object:
        content = b"{}" if method == "PATCH" else None
        return await http.request(method, STEP, content=content)

    outcome, seen = through_tunnel(monkeypatch, tmp_path, refuse, send)
    assert isinstance(outcome, Refused) and str(outcome) == f"{method} {STEP}"
    assert seen == []


def test_a_body_cut_through_a_proxy_is_a_protocol_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An answer shorter than its Content-Length, through a proxy: the httpx error it
    means, as on a direct connection."""

    async def get(http: httpx.AsyncClient) -> object:
        return (await http.get(STEP)).content

    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nab"
    outcome, _ = through_tunnel(monkeypatch, tmp_path, None, get, cut)
    assert isinstance(outcome, httpx.RemoteProtocolError), outcome


def test_a_compressed_answer_through_a_proxy_is_decoded_once_under_the_caps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """aiohttp hands the body on as it came: httpx decodes Content-Encoding, under the
    answer caps, as on a direct connection (decoded twice, it would be an error)."""
    body = gzip.compress(b'{"ok": 1}')
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body)
    ) + body

    async def get(http: httpx.AsyncClient) -> object:
        return (await http.get(STEP)).content

    outcome, _ = through_tunnel(monkeypatch, tmp_path, None, get, answer)
    assert outcome == b'{"ok": 1}'


def test_a_redirect_through_a_proxy_is_an_answer_not_followed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The token never follows a Location, through a proxy either."""

    async def get(http: httpx.AsyncClient) -> object:
        return (await http.get(STEP)).status_code

    moved = b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
    outcome, seen = through_tunnel(monkeypatch, tmp_path, None, get, moved)
    assert outcome == 302
    assert len(seen) == 1


def test_a_stalled_answer_through_a_proxy_is_a_read_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The request's read timeout reaches aiohttp: a platform that answers the head
    and then nothing is a ReadTimeout, not a wait until it hangs up."""

    async def get(http: httpx.AsyncClient) -> object:
        return (await http.get(STEP, timeout=httpx.Timeout(5.0, read=0.2))).content

    stall = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nab"
    outcome, _ = through_tunnel(monkeypatch, tmp_path, None, get, stall, hold=5.0)
    assert isinstance(outcome, httpx.ReadTimeout), outcome


def test_through_a_proxy_the_request_goes_as_httpx_built_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """aiohttp adds no User-Agent or Accept-Encoding of its own and takes
    nothing from the environment: a ~/.netrc naming the platform adds no credentials
    (aiohttp would refuse to combine them with the bearer header)."""
    cert, key = make_certificate(tmp_path)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine platform.invalid login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    seen: list[bytes] = []

    async def go() -> list[int]:
        servers = Servers()
        try:
            port = await tls_platform(servers, cert, key, seen)
            monkeypatch.setenv("HTTPS_PROXY", await tunnelling_proxy(servers, port, []))
            verify = ssl.create_default_context(cafile=str(cert))
            transport = Transport(max_connections=1, verify=verify)
            statuses = []
            try:
                for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                    request = httpx.Request(
                        "GET", "https://platform.invalid:8443/x", headers=headers
                    )
                    response = await transport.handle_async_request(request)
                    await response.aread()
                    statuses.append(response.status_code)
            finally:
                await transport.aclose()
            return statuses
        finally:
            await servers.close()

    assert asyncio.run(go()) == [200, 200]
    bare, bearer = (head.lower().split(b"\r\n") for head in seen)
    names = [line.split(b":")[0] for line in bare[1:] if line]
    assert b"user-agent" not in names and b"accept-encoding" not in names, names
    assert [line for line in bearer if line.startswith(b"authorization")] == [
        f"authorization: Bearer {TOKEN}".lower().encode()
    ]


def test_an_encoded_step_id_goes_through_a_proxy_as_encoded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A step id of `..` (percent-encoded by the client) reaches the platform as
    `%2E%2E`, never resolved into a real `..` that would write to another path."""

    async def patch(http: httpx.AsyncClient) -> object:
        return (await http.patch("/api/data-platform/workflow-run-steps/%2E%2E")).status_code

    outcome, seen = through_tunnel(monkeypatch, tmp_path, None, patch)
    assert outcome == 200
    assert seen[0].startswith(b"PATCH /api/data-platform/workflow-run-steps/%2E%2E HTTP/1.1\r\n")


def test_the_last_look_runs_once_however_many_chunks_the_body_is_written_in() -> None:
    """The trace hooks call `before_write` at the first chunk of a body only: sweeper's
    bodies leave in one chunk today, a body streamed in several gets one look too."""
    from sweeper.proxied import write_tracer

    looks: list[tuple[str, str]] = []
    received: list[bytes] = []

    async def go() -> int:
        servers = Servers()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            servers.track(writer)
            head = await reader.readuntil(b"\r\n\r\n")
            received.append(head + await reader.readuntil(b"\r\n0\r\n\r\n"))
            writer.write(OK_CLOSE)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.servers.append(server)
        port = server.sockets[0].getsockname()[1]

        async def chunks() -> AsyncIterator[bytes]:
            for piece in (b'{"a":', b"1", b"}"):
                yield piece

        tracer = write_tracer(lambda method, path: looks.append((method, path)))
        try:
            async with (
                aiohttp.ClientSession(trace_configs=[tracer]) as session,
                session.post(
                    f"http://127.0.0.1:{port}/x", data=chunks(), trace_request_ctx={"body": True}
                ) as response,
            ):
                return response.status
        finally:
            await servers.close()

    assert asyncio.run(go()) == 200
    assert looks == [("POST", "/x")]
    assert len(received) == 1 and received[0].endswith(b"\r\n1\r\n}\r\n0\r\n\r\n")


def test_through_a_proxy_max_connections_holds_and_the_pool_wait_is_bounded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through a proxy as directly, at most `max_connections` requests are in flight:
    with one held by a platform that does not answer, the next waits for the pool (no
    second tunnel) and gives up after its pool timeout."""
    cert, key = make_certificate(tmp_path)
    seen: list[bytes] = []
    connects: list[bytes] = []

    async def go() -> object:
        servers = Servers()
        try:
            port = await tls_platform(servers, cert, key, seen, answer=b"", hold=60)
            monkeypatch.setenv("HTTPS_PROXY", await tunnelling_proxy(servers, port, connects))
            async with build_http_client(
                "https://platform.invalid:8443", TOKEN, timeout=timedelta(seconds=60),
                max_connections=1, verify=ssl.create_default_context(cafile=str(cert)),
            ) as http:  # fmt: skip
                held = asyncio.create_task(http.get(STEP))
                for _ in range(1000):  # until the platform holds the first request
                    if seen or held.done():
                        break
                    await asyncio.sleep(0.01)
                assert len(seen) == 1, held
                try:
                    second = http.get(STEP, timeout=httpx.Timeout(60, pool=0.2, read=0.2))
                    return await asyncio.wait_for(second, 10)
                except Exception as exc:  # what the caller sees, as raised
                    return exc
                finally:
                    held.cancel()
                    await asyncio.gather(held, return_exceptions=True)
        finally:
            await servers.close()

    outcome = asyncio.run(go())
    assert isinstance(outcome, httpx.ConnectTimeout), repr(outcome)
    assert connects == [b"CONNECT platform.invalid:8443 HTTP/1.1"]
    assert len(seen) == 1


def test_through_a_proxy_a_stalled_tls_handshake_is_a_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request's connect timeout bounds the TLS handshake with the platform inside
    the tunnel: a far end that accepts and never answers is a ConnectTimeout, not a wait
    for the (longer) pool or read timeouts."""

    async def go() -> object:
        servers = Servers()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            servers.track(writer)
            while await reader.read(65536):
                pass

        try:
            server = await asyncio.start_server(silent, "127.0.0.1", 0)
            servers.servers.append(server)
            port = server.sockets[0].getsockname()[1]
            monkeypatch.setenv("HTTPS_PROXY", await tunnelling_proxy(servers, port, []))
            async with build_http_client(
                "https://platform.invalid:8443", TOKEN, timeout=timedelta(seconds=60),
                max_connections=1,
            ) as http:  # fmt: skip
                try:
                    request = http.get(STEP, timeout=httpx.Timeout(60, connect=0.2))
                    return await asyncio.wait_for(request, 10)
                except Exception as exc:  # what the caller sees, as raised
                    return exc
        finally:
            await servers.close()

    outcome = asyncio.run(go())
    assert isinstance(outcome, httpx.ConnectTimeout), repr(outcome)
