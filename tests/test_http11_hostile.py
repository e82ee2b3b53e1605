"""Hostile answers against the HTTP/1.1 transport, over a real loopback socket.

Each answer may come split at any byte; a broken or ambiguous one is a
RemoteProtocolError that echoes none of the answer's bytes (a reflecting peer could
put the token there), and a connection is reused only when its framing is beyond doubt.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import zlib
from collections.abc import Sequence
from datetime import timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweeper import api, exchange
from sweeper.api import PlatformClient, build_http_client
from sweeper.errors import InvalidAnswer, PlatformUnavailable
from sweeper.retries import RetryPolicy
from sweeper.transport import Transport
from tests.scripted_server import Answer, Scripted

TOKEN = "s3cret-token-abcdef"


class Split(Scripted):
    """A loopback server answering request i with answers[i], written in the given
    pieces (drained one by one), all on whatever connection the request came on.
    An empty answer hangs up; b"RST" resets the connection."""

    def __init__(
        self, answers: Sequence[bytes], cuts: Sequence[int] = (), pause: float = 0
    ) -> None:
        super().__init__(answers)
        self.pause = pause
        self.cuts = sorted(set(cuts))

    async def answer(self, answer: Answer, writer: asyncio.StreamWriter) -> bool:
        assert isinstance(answer, bytes)
        if not answer:  # hang up: the kept-alive connection closed under a request
            return False
        if answer == b"RST":  # reset after the request arrived, before any answer
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        start = 0
        for cut in [c for c in self.cuts if 0 < c < len(answer)] + [len(answer)]:
            writer.write(answer[start:cut])
            await writer.drain()
            if self.pause:
                await asyncio.sleep(self.pause)
            start = cut
        return True


def client(url: str, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        transport=Transport(max_connections=2),
        timeout=httpx.Timeout(5.0, **timeouts),  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def cl(body: bytes, *extra: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n" + b"".join(extra) + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


CHUNKED_BODIES = {
    # wire form -> body
    b"5\r\nhello\r\n0\r\n\r\n": b"hello",
    b'5;ext=1;q="a"\r\nhello\r\n0;last\r\nTrailer-A: x\r\nTrailer-B: y\r\n\r\n': b"hello",
    b"A\r\n0123456789\r\n00000\r\n\r\n": b"0123456789",
    b"000a\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n": b"0123456789!",
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunked=st.sampled_from(sorted(CHUNKED_BODIES)),
    cuts=st.lists(st.integers(min_value=1, max_value=120), max_size=12),
)
def test_answers_split_anywhere_read_the_same(chunked: bytes, cuts: list[int]) -> None:
    """A Content-Length answer then a chunked one (extensions, trailers, upper-case hex,
    leading zeros), each written in arbitrary pieces: same bodies, one connection."""
    first = cl(b'{"success": true}')
    second = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    third = cl(b"third")

    async def go() -> None:
        async with Split([first, second, third], cuts) as server, client(server.url) as http:
            assert (await http.get("/a")).content == b'{"success": true}'
            assert (await http.get("/b")).content == CHUNKED_BODIES[chunked]
            assert (await http.get("/c")).content == b"third"
            assert server.connections == 1

    asyncio.run(go())


def test_a_trickled_answer_one_byte_at_a_time() -> None:
    """Every byte its own write: the answer reads as if it came whole."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    async def go() -> None:
        async with Split([answer], range(1, len(answer))) as server, client(server.url) as http:
            assert (await http.get("/a")).content == b"abc"

    asyncio.run(go())


def test_an_unrequested_101_is_refused_and_the_connection_never_reused() -> None:
    """A 101 switches the connection to another protocol nobody asked for: what follows
    is not HTTP/1.1 answers, so the 101 is a broken answer and the connection closed."""

    async def go() -> None:
        switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\n"
        async with Split([switch, cl(b"next")]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/a")
            assert (await http.get("/b")).content == b"next"
            assert server.connections == 2

    asyncio.run(go())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0X5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["0x-chunk", "0X-chunk", "nul", "bare-cr", "bare-lf", "space-in-name", "lf-in-status"],
)
def test_ambiguous_answers_are_protocol_errors(answer: bytes) -> None:
    """What another parser could read differently (a hex prefix Python's int() takes, NUL,
    a bare CR or LF inside a header, a name with a space) is refused, not guessed at."""

    async def go() -> None:
        async with Split([answer]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get("/a")

    asyncio.run(go())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 Bearer %s\r\n\r\n",
        b"HTTP/1.1 2xx Bearer %s\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBearer %s\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %s\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s\r\n",
    ],
    ids=["status-ok", "status-line", "header-line", "length", "chunk-size"],
)
def test_a_reflected_token_never_reaches_an_error_message(answer: bytes) -> None:
    """A peer echoing the Authorization header into a broken answer: the error names
    what was wrong, never the bytes (the token could be among them)."""

    async def go() -> None:
        async with Split([answer % TOKEN.encode()]) as server, client(server.url) as http:
            try:
                response = await http.get("/a")
            except httpx.HTTPError as exc:
                texts = [str(exc), repr(exc)]
                cause = exc.__cause__ or exc.__context__
                texts += [str(cause)] if cause else []
                assert all(TOKEN not in text for text in texts), texts
            else:  # a well-formed answer: the reason phrase is not an error message
                assert response.status_code == 200

    asyncio.run(go())


def test_http10_keep_alive_is_a_token_not_a_substring() -> None:
    """HTTP/1.0 keeps the connection only for a `keep-alive` token: a longer token that
    contains the word is not one, and the next request goes on a new connection."""
    old = b"HTTP/1.0 200 OK\r\nConnection: no-keep-alive\r\nContent-Length: 2\r\n\r\nok"

    async def go() -> None:
        async with Split([old, cl(b"next")]) as server, client(server.url) as http:
            assert (await http.get("/a")).content == b"ok"
            assert (await http.get("/b")).content == b"next"
            assert server.connections == 2

    asyncio.run(go())


def test_cancelled_mid_body_the_connection_is_not_pooled() -> None:
    """asyncio.timeout fires while a long body trickles: the half-read connection is
    closed, and the next request gets its own answer on a new connection."""
    long = cl(b"z" * 200_000)

    async def go() -> None:
        async with Split([long, cl(b"next")], cuts=[70_000]) as server, client(server.url) as http:

            async def stall() -> None:
                async with asyncio.timeout(0.2), http.stream("GET", "/a") as response:
                    async for _ in response.aiter_raw():
                        await asyncio.sleep(10)  # stalls until the timeout fires

            with pytest.raises(TimeoutError):
                await stall()
            assert (await http.get("/b")).content == b"next"
            assert server.connections == 2

    asyncio.run(go())


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_the_last_look_runs_at_every_write_the_resend_included(method: str) -> None:
    """The hook runs before each write: once per request and again before a GET's resend
    on a new connection; a PATCH whose kept-alive connection closed under it is never
    written twice (the server sees it once)."""
    looks: list[tuple[str, str]] = []

    async def go() -> None:
        async with Split([cl(b"first"), b"", cl(b"again")]) as server:
            transport = Transport(max_connections=2, before_write=lambda m, p: looks.append((m, p)))
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as http:
                assert (await http.get("/a")).content == b"first"
                if method == "GET":
                    assert (await http.get("/b?q=1")).content == b"again"
                    assert looks == [("GET", "/a"), ("GET", "/b"), ("GET", "/b")]
                    assert len(server.requests) == 3
                else:
                    with pytest.raises(httpx.RemoteProtocolError):
                        await http.patch("/b", content=b"{}")
                    assert looks == [("GET", "/a"), ("PATCH", "/b")]
                    assert [r.split(b" ")[0] for r in server.requests] == [b"GET", b"PATCH"]

    asyncio.run(go())


def test_a_last_look_refusing_the_resend_sends_nothing_more() -> None:
    """The lease lost between the first try and the resend: the resend is not written."""

    class Refused(Exception):
        pass

    looks: list[str] = []

    def hook(method: str, path: str) -> None:
        looks.append(path)
        if len(looks) == 3:
            raise Refused(path)

    async def go() -> None:
        async with Split([cl(b"first"), b"", cl(b"never")]) as server:
            transport = Transport(max_connections=2, before_write=hook)
            async with httpx.AsyncClient(base_url=server.url, transport=transport) as http:
                assert (await http.get("/a")).content == b"first"
                with pytest.raises(Refused):
                    await http.get("/b")
                assert len(server.requests) == 2

    asyncio.run(go())


def list_once(url: str, request_timeout: float = 5.0) -> object:
    """One listing through PlatformClient over the real transport: a page or the error."""

    async def go() -> object:
        async with build_http_client(
            url, TOKEN, timeout=timedelta(seconds=5), max_connections=1
        ) as http:
            client = PlatformClient(
                http,
                retry=RetryPolicy(max_attempts=1),
                request_timeout=timedelta(seconds=request_timeout),
            )
            try:
                async for page in client.list_running(api.utc_now(), 10):
                    return page
            except (InvalidAnswer, PlatformUnavailable) as exc:
                return exc
        return None

    return asyncio.run(go())


def chunked(body: bytes, piece: int, *extra: bytes) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece])
             for i in range(0, len(body), piece)]  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + b"".join(extra) + b"\r\n"
    return head + b"".join(parts) + b"0\r\n\r\n"


def test_a_chunked_bomb_over_the_socket_stops_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """gzip, gzip of 8 MiB of zeros, chunked without a length: refused past the cap."""
    monkeypatch.setattr(exchange, "MAX_ANSWER_BYTES", 1 << 20)
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    inner = b"".join(packer.compress(bytes(1 << 20)) for _ in range(8)) + packer.flush()
    bomb = chunked(gzip.compress(inner), 1000, b"Content-Encoding: gzip, gzip\r\n")

    async def serve() -> object:
        async with Split([bomb]) as server:
            return await asyncio.to_thread(list_once, server.url)

    refused = asyncio.run(serve())
    assert isinstance(refused, InvalidAnswer), refused
    assert "decodes to more than" in str(refused)


def test_a_chunked_answer_over_the_cap_on_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Content-Length, chunk after chunk past the cap: refused as the bytes come."""
    monkeypatch.setattr(exchange, "MAX_ANSWER_BYTES", 1 << 16)
    endless = chunked(b"x" * (1 << 18), 4096)

    async def serve() -> object:
        async with Split([endless]) as server:
            return await asyncio.to_thread(list_once, server.url)

    refused = asyncio.run(serve())
    assert isinstance(refused, InvalidAnswer), refused
    assert f"answer over {1 << 16} bytes" in str(refused)


def test_a_trickle_under_the_read_timeout_ends_at_api_timeout() -> None:
    """One byte at a time, each well within the read timeout, the whole past api.timeout:
    a transient failure naming api.timeout, not an answer read for ever."""
    trickle = cl(b'{"success": true, "data": [], "nextCursor": null}' + b" " * 400)

    async def serve() -> object:
        async with Split([trickle], range(1, len(trickle)), pause=0.01) as server:
            return await asyncio.to_thread(list_once, server.url, 0.3)

    failed = asyncio.run(serve())
    assert isinstance(failed, PlatformUnavailable), failed
    assert "api.timeout" in str(failed)


@pytest.mark.parametrize(
    "tail",
    [
        b"".join(b"1;" + b"e" * 1000 + b"\r\nx\r\n" for _ in range(70)) + b"0\r\n\r\n",
        b"1\r\nx\r\n0\r\n" + b"".join(b"T: " + b"t" * 1000 + b"\r\n" for _ in range(70)) + b"\r\n",
    ],
    ids=["extensions", "trailers"],
)
def test_chunk_extensions_and_trailers_have_a_budget(tail: bytes) -> None:
    """What the body caps never see (extensions, trailers) is bounded on its own: past
    MAX_HEAD_BYTES of them the answer is broken, not read for as long as it trickles."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + tail

    async def go() -> None:
        async with Split([answer]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError, match="extensions and trailers"):
                await http.get("/a")

    asyncio.run(go())


@pytest.mark.parametrize("method", ["PATCH", "GET"])
def test_a_reset_after_the_request_never_writes_a_patch_twice(method: str) -> None:
    """The kept-alive connection is reset once the request arrived, before any answer:
    the platform may have applied it. A PATCH is not sent again by the transport (the
    sweep decides after a re-read); a GET goes once more."""

    async def go() -> None:
        async with Split([cl(b"first"), b"RST", cl(b"again")]) as server:
            async with client(server.url) as http:
                assert (await http.get("/a")).content == b"first"
                if method == "GET":
                    assert (await http.get("/b")).content == b"again"
                else:
                    with pytest.raises(httpx.TransportError):
                        await http.patch("/b", content=b"{}")
            sent = [r.split(b" ", 1)[0] for r in server.requests]
            assert sent.count(b"PATCH") == (method == "PATCH")

    asyncio.run(go())


def test_content_length_with_transfer_encoding_closes_the_connection() -> None:
    """Both framings (RFC 9112 6.3): chunked wins, the bytes past it are never read as
    the next answer, and the connection is not reused."""
    both = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )

    async def go() -> None:
        async with Split([both, cl(b"next")]) as server, client(server.url) as http:
            assert (await http.get("/a")).content == b"ok"
            assert (await http.get("/b")).content == b"next"
            assert server.connections == 2

    asyncio.run(go())


def test_cancelled_while_reading_the_head_the_connection_is_not_pooled() -> None:
    """asyncio.timeout fires while the head trickles in: that connection is closed."""
    slow = cl(b"slow")

    async def go() -> None:
        server = Split([slow, cl(b"next")], range(1, len(slow)), pause=0.05)
        async with server, client(server.url) as http:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(http.get("/a"), 0.2)
            server.pause = 0
            assert (await http.get("/b")).content == b"next"
            assert server.connections == 2

    asyncio.run(go())


HEADS = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.0 200 OK",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 101 Switching",
    b"HTTP/1.1 99 X",
    b"HTTP/1.1 200",
]
FIELDS = [
    b"Content-Length: 2",
    b"Content-Length: 0",
    b"Content-Length: 99999999999999999999999",
    b"Content-Length: -1",
    b"Content-Length: 2, 2",
    b"Content-Length: 2, 3",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, identity",
    b"Connection: close",
    b"Connection: keep-alive",
    b"X: \x00",
    b" folded",
    b"X:\xff\xfe",
    b"Content-Encoding: gzip",
]
BODIES = [b"", b"ok", b"2\r\nok\r\n0\r\n\r\n", b"fffffffffffffffff\r\n", b"0\r\n", b"\x00" * 3]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.sampled_from(HEADS),
    fields=st.lists(st.sampled_from(FIELDS), max_size=4),
    body=st.sampled_from(BODIES) | st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=6),
)
def test_any_answer_is_a_response_or_an_httpx_error(
    head: bytes, fields: list[bytes], body: bytes, cuts: list[int]
) -> None:
    """Whatever the peer sends, split wherever: an httpx Response or an httpx error,
    never another exception (that would crash a sweep on the platform's say-so), and
    the next request on the same client still gets its own answer."""
    answer = head + b"".join(b"\r\n" + f for f in fields) + b"\r\n\r\n" + body

    async def go() -> None:
        server = Split([answer, cl(b"next")], cuts)
        async with server, client(server.url, read=0.3) as http:
            with contextlib.suppress(httpx.HTTPError):
                await http.get("/a")
            # The first connection is either reused (its answer framed to the end)
            # or closed; the next request still gets its own answer.
            server.answers = [cl(b"next")]
            assert (await http.get("/b")).content == b"next"

    asyncio.run(go())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nBearer %s\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%s\r\n",
        b"HTTP/1.1 2%s\r\n\r\n",
    ],
    ids=["header", "chunk", "status"],
)
def test_a_reflected_token_never_reaches_the_sweep_error(answer: bytes) -> None:
    """Through PlatformClient: the error a sweep logs and reports never holds the token."""

    async def serve() -> object:
        async with Split([answer % TOKEN.encode()]) as server:
            return await asyncio.to_thread(list_once, server.url)

    failed = asyncio.run(serve())
    assert isinstance(failed, PlatformUnavailable), failed
    assert TOKEN not in str(failed)


def test_transfer_encoding_in_an_http10_answer_closes_the_connection() -> None:
    """RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing: read
    as chunked, then the connection is closed, keep-alive or not."""
    old = (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )

    async def go() -> None:
        async with Split([old, cl(b"next")]) as server, client(server.url) as http:
            assert (await http.get("/a")).content == b"ok"
            assert (await http.get("/b")).content == b"next"
            assert server.connections == 2

    asyncio.run(go())


def test_a_flood_of_interim_answers_ends_at_the_read_timeout() -> None:
    """Thousands of 100 Continue and never a final answer: a ReadTimeout (the head and
    every interim answer share one read timeout), not a wait as long as the flood."""
    flood = b"HTTP/1.1 100 Continue\r\nX: y\r\n\r\n" * 5000

    async def go() -> None:
        async with Split([flood, cl(b"never")]) as server, client(server.url, read=0.3) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/a")

    asyncio.run(go())
