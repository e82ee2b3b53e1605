"""The HTTP/1.1 transport's framing and pool, against a loopback server scripted by hand."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import struct
import subprocess
import weakref
from pathlib import Path

import httpx
import pytest

from sweeper.http11 import EAGER_BYTES, MAX_HEAD_BYTES, Framing, Pool, parse_head, read_answer
from sweeper.stepset import StepSet
from sweeper.transport import Transport
from tests.scripted_server import Answer, Scripted


def ok(body: bytes, *extra: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(extra)
        + b"Content-Length: %d\r\n\r\n%s"
        % (
            len(body),
            body,
        )
    )


async def get(
    http: httpx.AsyncClient, path: str = "/x", method: str = "GET", **kw: object
) -> httpx.Response:
    return await http.request(method, path, **kw)  # type: ignore[arg-type]


def client(url: str, max_connections: int = 4, **timeouts: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        transport=Transport(max_connections=max_connections),
        timeout=httpx.Timeout(5.0, **timeouts),  # type: ignore[arg-type]
    )


def test_keep_alive_reuses_one_connection_for_successive_requests() -> None:
    """Two answers read to their end: the second request goes on the same connection."""

    async def go() -> None:
        async with Scripted([ok(b"one"), ok(b"two")]) as server, client(server.url) as http:
            assert (await get(http)).content == b"one"
            assert (await get(http)).content == b"two"
            assert server.connections == 1

    asyncio.run(go())


def test_the_request_goes_out_as_httpx_prepared_it() -> None:
    """Request line, Host, the client's headers and the body, byte for byte."""

    async def go() -> None:
        async with Scripted([ok(b"")]) as server, client(server.url) as http:
            await get(http, "/a%2Fb?x=1", method="PATCH", content=b'{"a":1}')
            request = server.requests[0]
            assert request.startswith(b"PATCH /a%2Fb?x=1 HTTP/1.1\r\n")
            assert b"\r\nhost: 127.0.0.1:" in request.lower()
            assert b"\r\ncontent-length: 7\r\n" in request.lower()
            assert request.endswith(b'\r\n\r\n{"a":1}')

    asyncio.run(go())


def test_chunked_bodies_are_joined_and_the_connection_kept() -> None:
    """Chunk sizes in hex, extensions and trailers ignored, then the next answer."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def go() -> None:
        async with Scripted([chunked, ok(b"next")]) as server, client(server.url) as http:
            assert (await get(http)).content == b"hello world"
            assert (await get(http)).content == b"next"
            assert server.connections == 1

    asyncio.run(go())


def test_a_body_without_length_runs_to_the_close_and_the_connection_is_not_kept() -> None:
    """No Content-Length, no chunked: the body is what comes until the peer closes."""

    async def close_after(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await writer.drain()

    async def go() -> None:
        async with Scripted([close_after, ok(b"again")]) as server, client(server.url) as http:
            assert (await get(http)).content == b"until the end"
            assert (await get(http)).content == b"again"
            assert server.connections == 2

    asyncio.run(go())


def test_connection_close_is_honoured() -> None:
    """An answer saying Connection: close: the next request opens a new connection."""

    async def go() -> None:
        answers: list[Answer] = [ok(b"a", b"Connection: close\r\n"), ok(b"b")]
        async with Scripted(answers) as server, client(server.url) as http:
            await get(http)
            await get(http)
            assert server.connections == 2

    asyncio.run(go())


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    """The peer closed the idle connection: a fresh one is opened, nothing fails."""

    async def answer_then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"first"))
        await writer.drain()

    async def go() -> None:
        async with (
            Scripted([answer_then_close, ok(b"second")]) as server,
            client(server.url) as http,
        ):
            assert (await get(http)).content == b"first"
            await asyncio.sleep(0.05)  # the close reaches this side (an event, not a measure)
            assert (await get(http)).content == b"second"
            assert server.connections == 2

    asyncio.run(go())


async def hang_up(writer: asyncio.StreamWriter) -> None:
    """Read the request, answer nothing, close: a keep-alive connection closed as used."""


@pytest.mark.parametrize(("method", "resent"), [("GET", True), ("PATCH", False)])
def test_a_kept_connection_closed_under_a_request(method: str, resent: bool) -> None:
    """A reused connection closed before any answer: a GET goes once more on a new
    connection; a PATCH is never resent by the transport (RemoteProtocolError)."""

    async def go() -> None:
        answers: list[Answer] = [ok(b"first"), hang_up, ok(b"again")]
        async with Scripted(answers) as server, client(server.url) as http:
            assert (await get(http)).content == b"first"
            if resent:
                assert (await get(http, method=method)).content == b"again"
                assert [r.split(b" ", 1)[0] for r in server.requests] == [b"GET"] * 3
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    await get(http, method=method, content=b"{}")
                assert len(server.requests) == 2

    asyncio.run(go())


def test_a_fresh_connection_closed_before_an_answer_is_not_resent() -> None:
    """Only a kept-alive connection earns the one resend: a new one closing is an error."""

    async def go() -> None:
        async with Scripted([hang_up, ok(b"never")]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await get(http)
            assert len(server.requests) == 1

    asyncio.run(go())


def test_an_answer_closed_unread_does_not_leave_its_connection_in_the_pool() -> None:
    """A body not read to its end: that connection is closed, the next request is fine."""

    async def go() -> None:
        big = ok(b"x" * 200_000)
        async with Scripted([big, ok(b"small")]) as server, client(server.url) as http:
            async with http.stream("GET", "/x") as response:
                assert response.status_code == 200
            assert (await get(http)).content == b"small"
            assert server.connections == 2

    asyncio.run(go())


def test_a_long_body_is_read_a_piece_at_a_time_and_the_connection_kept() -> None:
    """A body longer than what is read with the head streams in pieces, then keep-alive."""

    async def go() -> None:
        long = b"y" * (EAGER_BYTES * 3 + 5)
        async with Scripted([ok(long), ok(b"next")]) as server, client(server.url) as http:
            async with http.stream("GET", "/x") as response:
                pieces = [piece async for piece in response.aiter_raw()]
            assert b"".join(pieces) == long
            assert len(pieces) > 1
            assert (await get(http)).content == b"next"
            assert server.connections == 1

    asyncio.run(go())


def test_a_reset_connection_is_a_read_error() -> None:
    """The peer resets the connection instead of answering: ReadError, a transport error."""

    async def reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def go() -> None:
        async with Scripted([reset]) as server, client(server.url) as http:
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                await get(http)

    asyncio.run(go())


def test_a_connection_with_bytes_nobody_asked_for_is_not_reused() -> None:
    """An answer followed by more bytes (a second answer sent ahead): that connection is
    closed, and the next request gets its own answer on a new one."""

    async def go() -> None:
        answers: list[Answer] = [ok(b"one") + ok(b"sent ahead"), ok(b"two")]
        async with Scripted(answers) as server, client(server.url) as http:
            assert (await get(http)).content == b"one"
            assert (await get(http)).content == b"two"
            assert server.connections == 2

    asyncio.run(go())


def test_interim_answers_are_passed_over() -> None:
    """100 Continue before the real answer: the real one is returned."""

    async def go() -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real")
        async with Scripted([interim]) as server, client(server.url) as http:
            assert (await get(http)).content == b"real"

    asyncio.run(go())


@pytest.mark.parametrize(("status", "method"), [(204, "GET"), (304, "GET"), (200, "HEAD")], ids=str)
def test_answers_without_a_body(status: int, method: str) -> None:
    """204, 304 and HEAD answers end at their headers, whatever Content-Length says."""

    async def go() -> None:
        head = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
        async with Scripted([head, ok(b"next")]) as server, client(server.url) as http:
            assert (await get(http, method=method)).content == b""
            assert (await get(http)).content == b"next"

    asyncio.run(go())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n",
    ],
    ids=[
        "version",
        "status",
        "header",
        "fold",
        "two-lengths",
        "negative-length",
        "chunk-size",
        "signed-chunk-size",
        "chunk-end",
        "cut",
        "head-too-large",
    ],
)
def test_broken_answers_are_protocol_errors(answer: bytes) -> None:
    """Whatever does not frame as HTTP/1.1 is a RemoteProtocolError, never a success."""

    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    async def go() -> None:
        async with Scripted([cut]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await get(http)

    asyncio.run(go())


def test_a_line_break_in_a_header_is_never_sent() -> None:
    """A value with CR or LF would smuggle a header: refused before anything goes out."""

    async def go() -> None:
        async with Scripted([ok(b"")]) as server, client(server.url) as http:
            request = http.build_request("GET", "/x", headers={"X-Evil": "a\r\nInjected: 1"})
            with pytest.raises(httpx.LocalProtocolError) as error:
                await http.send(request)
            assert str(error.value) == "a line break inside the request line or a header"
            assert server.requests == []

    asyncio.run(go())


def test_a_slow_answer_is_a_read_timeout() -> None:
    """No answer within the read timeout: ReadTimeout."""

    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def go() -> None:
        async with Scripted([silent]) as server, client(server.url, read=0.05) as http:
            with pytest.raises(httpx.ReadTimeout):
                await get(http)

    asyncio.run(go())


def test_a_full_pool_waits_then_times_out() -> None:
    """max_connections in use: the next request waits for one, up to the pool timeout."""

    async def go() -> None:
        async with (
            Scripted([ok(b"held" * 20_000)]) as server,
            client(server.url, 1, pool=0.05) as http,
            http.stream("GET", "/x"),
        ):
            with pytest.raises(httpx.PoolTimeout) as error:
                await get(http)
            assert str(error.value) == "no free connection within the pool timeout"

    asyncio.run(go())


def test_connection_refused_and_unsupported_schemes() -> None:
    """Nothing listening: ConnectError; a scheme other than http(s): UnsupportedProtocol."""

    async def go() -> None:
        async with Scripted([]) as server:
            url = server.url
        async with client(url) as http:
            with pytest.raises(httpx.ConnectError):
                await get(http)
        transport = Transport(max_connections=1)
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/x"))

    asyncio.run(go())


def test_framing_rules() -> None:
    """Transfer-Encoding wins over Content-Length and ends keep-alive; HTTP/1.0 closes."""
    both = Framing(
        200, b"HTTP/1.1", [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], "GET"
    )
    assert both.chunked and not both.keep_alive
    other = Framing(200, b"HTTP/1.1", [(b"Transfer-Encoding", b"gzip")], "GET")
    assert not other.chunked and other.length is None and not other.keep_alive
    old = Framing(200, b"HTTP/1.0", [(b"Content-Length", b"2")], "GET")
    assert old.length == 2 and not old.keep_alive
    kept = Framing(
        200, b"HTTP/1.0", [(b"Connection", b"Keep-Alive"), (b"Content-Length", b"2")], "GET"
    )
    assert kept.keep_alive
    assert parse_head(b"HTTP/1.1 404 Not Found\r\nA: b \r\n\r\n") == (
        404,
        b"HTTP/1.1",
        [(b"A", b"b")],
    )


def test_list_forms_of_the_framing_headers() -> None:
    """A Content-Length list of one value repeated is that value (RFC 9110 8.6); the
    transfer codings are a comma list, spaces optional, chunked last wins (RFC 9112 6.3)."""
    repeated = Framing(200, b"HTTP/1.1", [(b"Content-Length", b"5, 5,5")], "GET")
    assert repeated.length == 5 and repeated.keep_alive
    for value in (b"gzip,chunked", b"gzip, chunked", b"gzip ,  Chunked", b"br, gzip, chunked"):
        coded = Framing(200, b"HTTP/1.1", [(b"Transfer-Encoding", value)], "GET")
        assert coded.chunked and coded.keep_alive, value
    last = Framing(200, b"HTTP/1.1", [(b"Transfer-Encoding", b"chunked,gzip")], "GET")
    assert not last.chunked and not last.keep_alive
    for value in (b"te,close", b"Keep-Alive , Close"):
        closing = Framing(
            200, b"HTTP/1.1", [(b"Connection", value), (b"Content-Length", b"0")], "GET"
        )
        assert not closing.keep_alive, value


def test_framing_refusals_and_interim_answers() -> None:
    """A 1xx answer has no body whatever it declares; an unasked-for 101 and a
    Content-Length that is not one number are refused, saying which."""
    for status in (100, 102, 103, 199):
        assert Framing(status, b"HTTP/1.1", [(b"Content-Length", b"5")], "GET").length == 0
    with pytest.raises(httpx.RemoteProtocolError) as upgrade:
        Framing(101, b"HTTP/1.1", [], "GET")
    assert str(upgrade.value) == "malformed answer: 101 Switching Protocols, not asked for"
    with pytest.raises(httpx.RemoteProtocolError) as lengths:
        Framing(200, b"HTTP/1.1", [(b"Content-Length", b"1, 2")], "GET")
    assert str(lengths.value) == "malformed answer: Content-Length is not one number"


def test_a_status_line_without_a_reason_phrase_is_read() -> None:
    """`HTTP/1.1 200` with nothing after the code (servers send it): a status, not an error;
    a lone CR in the reason is refused."""
    assert parse_head(b"HTTP/1.1 204\r\n\r\n") == (204, b"HTTP/1.1", [])
    for reason in (b"O\rK", b"O\x00K"):
        with pytest.raises(httpx.RemoteProtocolError, match="the status line"):
            parse_head(b"HTTP/1.1 200 " + reason + b"\r\n\r\n")


@pytest.mark.parametrize(
    ("headers", "number"),
    [(b"no colon here", 1), (b"A: b\r\nX-Token", 2), (b"A: b\r\nC: d\r\n: empty name", 3)],
)
def test_a_header_line_that_is_not_name_colon_value_is_refused(headers: bytes, number: int) -> None:
    """A line without a colon (even one that is all token characters) or without a name
    is broken; the error gives its number, counted from 1, never its bytes."""
    with pytest.raises(httpx.RemoteProtocolError) as error:
        parse_head(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n\r\n")
    assert str(error.value) == f"malformed answer: header line {number}"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        (b"5\x0c\r\nhello\r\n0\r\n\r\n", "a chunk size that is not hex digits"),
        (b"5X\r\nhello\r\n0\r\n\r\n", "a chunk size that is not hex digits"),
        (b"\r\nhello\r\n0\r\n\r\n", "a chunk size that is not hex digits"),
        (b"5\r\nhello!\r\n0\r\n\r\n", "a chunk not followed by CRLF"),
    ],
    ids=["form-feed", "letter", "empty", "no-crlf"],
)
def test_a_broken_chunk_says_what_is_wrong(chunks: bytes, reason: str) -> None:
    """Only hex digits (and spaces, tabs) make a chunk size; the error names the fault
    (never the answer's bytes)."""

    async def go() -> None:
        async with Scripted([CHUNKED_HEAD + chunks]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError) as error:
                await get(http)
            assert str(error.value) == f"malformed answer: {reason}"

    asyncio.run(go())


def test_extensions_and_trailers_up_to_their_budget_are_read_and_the_connection_kept() -> None:
    """Exactly MAX_HEAD_BYTES of extensions, then as much of trailers: the answer is
    read, every trailer line to the last CRLF, and the connection serves the next one."""
    half = MAX_HEAD_BYTES // 2
    extension = b"1;" + b"e" * (half - 2) + b"\r\nx\r\n"  # counted after the ";"
    trailer = b"T: " + b"t" * (half - 5) + b"\r\n"
    assert len(trailer) == half
    answers: list[Answer] = [
        CHUNKED_HEAD + extension * 2 + b"0\r\n\r\n",
        CHUNKED_HEAD + b"1\r\nx\r\n0\r\n" + trailer * 2 + b"\r\n",
        ok(b"next"),
    ]

    async def go() -> None:
        async with Scripted(answers) as server, client(server.url) as http:
            assert (await get(http)).content == b"xx"
            assert (await get(http)).content == b"x"
            assert (await get(http)).content == b"next"
            assert server.connections == 1

    asyncio.run(go())


@pytest.mark.parametrize(
    "sent",
    [
        CHUNKED_HEAD,
        CHUNKED_HEAD + b"5\r\nhel",
        CHUNKED_HEAD + b"5\r\nhello",
        CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nT: 1\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nlong" % (EAGER_BYTES + 1),
    ],
    ids=["size", "data", "crlf", "trailers", "long-body"],
)
def test_an_answer_stalling_anywhere_in_its_body_is_a_read_timeout(sent: bytes) -> None:
    """The read timeout bounds every wait inside a body (chunked, or longer than what is
    read with the head), not only the head."""

    async def stall(writer: asyncio.StreamWriter) -> None:
        writer.write(sent)
        await writer.drain()
        await asyncio.sleep(5)

    async def go() -> None:
        async with Scripted([stall]) as server, client(server.url, read=0.05) as http:
            with pytest.raises(httpx.ReadTimeout):
                await get(http)

    asyncio.run(go())


def test_a_pooled_connection_the_peer_closed_is_never_handed_out() -> None:
    """The peer closed a kept-alive connection while it sat idle: the pool opens a new
    one, so that a PATCH (never resent) does not fail on a connection known dead."""

    async def answer_then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"first"))
        await writer.drain()

    async def go() -> None:
        async with Scripted([answer_then_close, ok(b"second")]) as server:
            port = int(server.url.rsplit(":", 1)[1])
            origin = ("http", "127.0.0.1", port)
            pool = Pool(1, lambda: None)
            timeouts: dict[str, float | None] = {"connect": 5, "pool": 5}
            first = await pool.acquire(origin, timeouts)
            first.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_answer(first, "GET", 5)).body == b"first"
            async with asyncio.timeout(5):  # the close reaching this side: an event
                assert await first.reader.read(1) == b""
            assert first.reader.at_eof()
            assert not first.writer.is_closing()  # half-closed by the peer only
            pool.release(origin, first)
            second = await pool.acquire(origin, timeouts)
            assert second is not first
            second.writer.write(b"PATCH / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_answer(second, "PATCH", 5)).body == b"second"
            assert server.connections == 2
            pool.release(origin, second)
            await pool.aclose()

    asyncio.run(go())


def test_step_set_is_exact_per_organization() -> None:
    """The same step id in two organizations is two steps; nothing else is a member."""
    seen = StepSet()
    seen.add(("org-a", "s1"))
    seen.add(("org-a", "s2"))
    seen.add(("org-b", "s1"))
    assert ("org-a", "s1") in seen
    assert ("org-b", "s1") in seen
    assert ("org-b", "s2") not in seen
    assert ("org-c", "s1") not in seen
    assert len(seen) == 3


def test_header_values_lose_spaces_and_tabs_around_them_only() -> None:
    """Optional whitespace is a space or a tab (RFC 9110 5.6.3); other bytes are the
    value's. A CR, LF or NUL inside it is refused, naming the line."""
    head = b"HTTP/1.1 200 OK\r\nA: \t\x0bXbX\x0c \t\r\nB: XbX\r\n\r\n"
    assert parse_head(head)[2] == [(b"A", b"\x0bXbX\x0c"), (b"B", b"XbX")]
    with pytest.raises(httpx.RemoteProtocolError) as error:
        parse_head(b"HTTP/1.1 200 OK\r\nA: b\x00c\r\n\r\n")
    assert str(error.value) == "malformed answer: header line 1: CR, LF or NUL in its value"


def test_read_failures_say_what_happened() -> None:
    """A cut answer, a slow one, a kept connection closed under a PATCH: each error
    says which, in words an operator searches for."""

    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut")
        await writer.drain()

    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def go() -> list[str]:
        said = []
        async with Scripted([cut]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError) as closed:
                await get(http)
            said.append(str(closed.value))
        async with Scripted([silent]) as server, client(server.url, read=0.05) as http:
            with pytest.raises(httpx.ReadTimeout) as slow:
                await get(http)
            said.append(str(slow.value))
        answers: list[Answer] = [ok(b"first"), hang_up]
        async with Scripted(answers) as server, client(server.url) as http:
            await get(http)
            with pytest.raises(httpx.RemoteProtocolError) as hung_up:
                await get(http, method="PATCH", content=b"{}")
            said.append(str(hung_up.value))
        return said

    assert asyncio.run(go()) == [
        "the connection closed before the answer ended",
        "timed out reading the answer",
        "the kept-alive connection closed before any answer",
    ]


def test_a_head_over_the_cap_says_so() -> None:
    """A head (or a chunk line) longer than MAX_HEAD_BYTES is refused, naming the cap."""

    async def go() -> None:
        big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n"
        async with Scripted([big]) as server, client(server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError) as error:
                await get(http)
            assert str(error.value) == (
                f"malformed answer: a head or line longer than {MAX_HEAD_BYTES} bytes"
            )

    asyncio.run(go())


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "[Errno 104] Connection reset by peer",
        ),
        (OSError("no route"), "no route"),
        (ConnectionResetError(), "ConnectionResetError"),
        (BrokenPipeError(), "BrokenPipeError"),
    ],
    ids=["errno", "message", "reset-without-message", "pipe-without-message"],
)
def test_a_connection_failing_under_a_read_is_a_read_error_saying_what(
    failure: OSError, said: str
) -> None:
    """The socket fails while the answer is awaited: ReadError with the system's words,
    or the error's kind when it has none (an empty message helps nobody)."""

    async def go() -> None:
        async with Scripted([hang_up]) as server:
            origin = ("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))
            pool = Pool(1, lambda: None)
            connection = await pool.acquire(origin, {"connect": 5, "pool": 5})
            connection.reader.set_exception(failure)
            with pytest.raises(httpx.ReadError) as error:
                await read_answer(connection, "GET", 5)
            assert str(error.value) == said
            connection.close()
            pool.release(origin, connection)
            await pool.aclose()

    asyncio.run(go())


def test_a_body_of_exactly_eager_bytes_comes_with_its_head() -> None:
    """Content-Length up to EAGER_BYTES: the body is read with the head and the
    connection is free at once; one byte more is left to stream."""

    async def go() -> None:
        whole, longer = b"e" * EAGER_BYTES, b"l" * (EAGER_BYTES + 1)
        async with Scripted([ok(whole), ok(longer)]) as server:
            origin = ("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))
            pool = Pool(1, lambda: None)
            connection = await pool.acquire(origin, {"connect": 5, "pool": 5})
            connection.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await read_answer(connection, "GET", 5)
            assert answer.body == whole
            assert connection.reusable
            connection.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await read_answer(connection, "GET", 5)
            assert answer.body is None
            assert answer.framing.length == EAGER_BYTES + 1
            connection.close()
            pool.release(origin, connection)
            await pool.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("kept", [False, True], ids=["fresh", "kept-alive"])
def test_a_body_left_unread_before_any_of_it_came_does_not_keep_its_connection(
    kept: bool,
) -> None:
    """A long answer closed unread while none of its body has arrived: nothing unread
    shows, yet the connection is not reused (its body would come as the next answer),
    whether it was new or already kept from an earlier answer."""

    async def go() -> None:
        head_only = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (EAGER_BYTES + 1)
        earlier: list[Answer] = [ok(b"earlier")] if kept else []
        answers = [*earlier, head_only, ok(b"next")]
        async with Scripted(answers) as server, client(server.url) as http:
            if kept:
                assert (await get(http)).content == b"earlier"
            async with http.stream("GET", "/x") as response:
                assert response.status_code == 200
            assert server.connections == 1
            assert (await get(http)).content == b"next"
            assert server.connections == 2

    asyncio.run(go())


def test_a_connection_closed_is_forgotten_by_the_pool() -> None:
    """Connections that are not kept are dropped whole: a daemon opening one per sweep
    for months holds none of them."""

    async def go() -> None:
        answers: list[Answer] = [ok(b"a", b"Connection: close\r\n")] * 3
        async with Scripted(answers) as server:
            origin = ("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))
            pool = Pool(1, lambda: None)
            gone = []
            for _ in range(3):
                connection = await pool.acquire(origin, {"connect": 5, "pool": 5})
                connection.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_answer(connection, "GET", 5)).body == b"a"
                assert not connection.reusable
                pool.release(origin, connection)
                gone.append(weakref.ref(connection.writer))  # held by its Connection only
                del connection
            await asyncio.sleep(0)  # the transports' closing callbacks run
            gc.collect()
            assert [ref() for ref in gone] == [None, None, None]
            await pool.aclose()

    asyncio.run(go())


def test_a_connection_not_made_within_the_connect_timeout() -> None:
    """A listener whose backlog is full never completes the handshake: ConnectTimeout
    after the connect timeout, naming where, not a wait for the kernel to give up."""

    async def go() -> None:
        with socket.socket() as listener, socket.socket() as queued:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            queued.connect(("127.0.0.1", port))  # fills the backlog; never accepted
            async with client(f"http://127.0.0.1:{port}", connect=0.05) as http:
                async with asyncio.timeout(10):  # an upper bound, not a measure
                    with pytest.raises(httpx.ConnectTimeout) as error:
                        await get(http)
            assert str(error.value) == f"no connection to 127.0.0.1:{port} in time"

    asyncio.run(go())


def test_an_https_origin_is_spoken_to_over_verified_tls(tmp_path: Path) -> None:
    """https: the connection is TLS, the platform's certificate checked against the
    trusted authority for the host asked for; the answer read as over plain TCP."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", "key.pem", "-out", "cert.pem"],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    trusted = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(ok(b"secret kept"))
            await writer.drain()
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=served)
        port = server.sockets[0].getsockname()[1]
        transport = Transport(max_connections=1, verify=trusted)
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            response = await http.get(f"https://127.0.0.1:{port}/x")
        server.close()
        assert response.content == b"secret kept"
        assert seen and seen[0].startswith(b"GET /x HTTP/1.1\r\n")

    asyncio.run(go())
