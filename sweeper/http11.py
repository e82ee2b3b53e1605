"""HTTP/1.1 on asyncio streams: a keep-alive pool, the request head, the answer's framing.

The least that speaks the protocol correctly for one client of one API: requests
go out as the bytes httpx prepared, answers come back as a status, raw headers and
a body read lazily (Content-Length, chunked, or up to the close), so that the
caller's caps count every byte before it is kept. Errors leave as the httpx
exception they mean; `sweeper.transport` wraps this in an httpx transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import SupportsIndex, TypeVar

import httpx

#: The largest answer head (status line and headers) read; more is a broken answer.
MAX_HEAD_BYTES = 64 * 1024
_CHUNK = 64 * 1024
#: A body declared this long or shorter is read with its head (every API answer but
#: a long listing page); the caller's caps are far above it.
EAGER_BYTES = 64 * 1024

T = TypeVar("T")
#: The characters of a header name (RFC 9110 5.6.2 tchar) and of a chunk size.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX = frozenset(b"0123456789abcdefABCDEF")
Headers = list[tuple[bytes, bytes]]
Origin = tuple[str, str, int]


class _Reader(asyncio.StreamReader):
    """A StreamReader that counts the bytes that arrived and nothing read yet (aiohttp's
    "tail"): a connection holding any is never reused, or its next answer could be
    one the peer sent ahead of the request."""

    def __init__(self) -> None:
        # The limit bounds `readuntil`: a head or a chunk line (asyncio's default is
        # the same 64 KiB; named here so that the cap is one constant).
        super().__init__(limit=MAX_HEAD_BYTES)
        self.unread = 0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.unread += len(data)  # type: ignore[arg-type]  # bytes, from the protocol
        super().feed_data(data)

    # What this module reads goes through these, so that `unread` stays true.
    async def take_until(self, separator: bytes) -> bytes:
        data = await self.readuntil(separator)
        self.unread -= len(data)
        return data

    async def take_exactly(self, n: int) -> bytes:
        data = await self.readexactly(n)
        self.unread -= len(data)
        return data

    async def take(self, n: int) -> bytes:
        data = await self.read(n)
        self.unread -= len(data)
        return data


class Connection:
    """One keep-alive connection; `reusable` once an answer was read to its end."""

    __slots__ = ("reader", "reusable", "reused", "writer")

    def __init__(self, reader: _Reader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = False
        #: Taken from the idle list: the peer may have closed it as we sent.
        self.reused = False

    def alive(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader.unread)

    def close(self) -> None:
        self.writer.close()  # never reused after: `alive()` is false from now


def _protocol_error(text: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"malformed answer: {text}")


async def _read(operation: Awaitable[T], seconds: float | None) -> T:
    """One read, bounded by the read timeout; a cut or reset is a transport error."""
    try:
        async with asyncio.timeout(seconds):
            data = await operation
    except TimeoutError:
        raise httpx.ReadTimeout("timed out reading the answer") from None
    except asyncio.IncompleteReadError:
        raise httpx.RemoteProtocolError("the connection closed before the answer ended") from None
    except (asyncio.LimitOverrunError, ValueError):  # readuntil past the reader's limit
        raise _protocol_error(f"a head or line longer than {MAX_HEAD_BYTES} bytes") from None
    except OSError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
    return data


def request_head(request: httpx.Request) -> bytes:
    """The request line and headers, as httpx prepared them (Host, Content-Length)."""
    url = request.url
    head = b"".join(
        [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        + [b"%s: %s\r\n" % pair for pair in request.headers.raw]
        + [b"\r\n"]
    )
    # A CR or LF inside a value would start a header (or a request) of its own.
    if head.count(b"\n") != len(request.headers.raw) + 2 or head.count(b"\r") != head.count(b"\n"):
        raise httpx.LocalProtocolError("a line break inside the request line or a header")
    return head


def parse_head(head: bytes) -> tuple[int, bytes, Headers]:
    """(status, HTTP version, headers) of an answer head ending in an empty line."""
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    well_formed = len(code) == 3 and code.isdigit() and rest[3:4] in (b"", b" ")
    well_formed = well_formed and b"\n" not in rest and b"\r" not in rest and b"\x00" not in rest
    # The answer's bytes are never echoed: a peer reflecting the request could put the
    # token in them.
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not well_formed:
        raise _protocol_error(f"the status line ({len(lines[0])} bytes)")
    headers: Headers = []
    for number, line in enumerate(lines[1:], 1):
        name, colon, value = line.partition(b":")
        # A name is a token; CR, LF or NUL in a value another parser could split on
        # (RFC 9110 5.5: reject); a line starting with a space is obs-fold.
        if not colon or not name or not _TCHAR.issuperset(name):
            raise _protocol_error(f"header line {number}")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise _protocol_error(f"header line {number}: CR, LF or NUL in its value")
        headers.append((name, value.strip(b" \t")))
    return int(code), version, headers


class Framing:
    """How the answer's body is delimited, and whether the connection outlives it."""

    __slots__ = ("chunked", "keep_alive", "length")

    def __init__(self, status: int, version: bytes, headers: Headers, method: str) -> None:
        lengths: set[bytes] = set()
        coding: bytes | None = None  # the last transfer coding: the only one that frames
        connection: set[bytes] = set()
        for name, value in headers:
            key = name.lower()
            if key == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif key == b"transfer-encoding":
                coding = value.rpartition(b",")[2].strip().lower()
            elif key == b"connection":
                connection.update(v.strip() for v in value.lower().split(b","))
        keep_alive = b"close" not in connection and (
            version == b"HTTP/1.1" or b"keep-alive" in connection
        )
        if status == 101:  # nobody asked for an upgrade: what follows is not HTTP/1.1
            raise _protocol_error("101 Switching Protocols, not asked for")
        bodiless = method == "HEAD" or status in (204, 304) or 100 <= status < 200
        # Transfer-Encoding wins over Content-Length; anything but chunked last runs
        # up to the close (RFC 9112 6.3).
        self.chunked = not bodiless and coding == b"chunked"
        self.length: int | None = None  # None: up to the close
        if bodiless:
            self.length = 0
        elif coding is not None:
            # With a Content-Length, or in an HTTP/1.0 answer (6.1), the framing is
            # faulty: read as said, then the connection closed.
            keep_alive = keep_alive and self.chunked and not lengths and version == b"HTTP/1.1"
        elif lengths:
            value = lengths.pop()
            if lengths or not (value.isdigit() and value.isascii()):
                raise _protocol_error("Content-Length is not one number")
            self.length = int(value)
        # A body up to the close ends the connection with it.
        self.keep_alive = keep_alive and (self.chunked or self.length is not None)


class Answer:
    """An answer's head, how its body is framed, and the body when it was read with it."""

    __slots__ = ("body", "framing", "headers", "status", "version")

    def __init__(self, status: int, version: bytes, headers: Headers, framing: Framing) -> None:
        self.status = status
        self.version = version
        self.headers = headers
        self.framing = framing
        self.body: bytes | None = None


async def read_answer(connection: Connection, method: str, read_seconds: float | None) -> Answer:
    """The final answer's head (interim 1xx answers passed over) and, when its
    Content-Length is at most EAGER_BYTES, its body too, under one read timeout:
    the connection is then free at once. A longer body is left to `body_chunks`."""
    return await _read(_answer(connection, method), read_seconds)


class ClosedBeforeAnswer(httpx.RemoteProtocolError):
    """A reused connection ended before a byte of the answer came: the peer closed it
    idle as the request went out (RFC 9112 9.3.1), so an idempotent one may be resent."""


async def _answer(connection: Connection, method: str) -> Answer:
    reader = connection.reader
    try:
        first = await reader.take_until(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
        nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
        if connection.reused and nothing:
            raise ClosedBeforeAnswer("the kept-alive connection closed before any answer") from exc
        raise
    while True:
        status, version, headers = parse_head(first)
        if not 100 <= status < 200 or status == 101:
            break
        first = await reader.take_until(b"\r\n\r\n")
    answer = Answer(status, version, headers, Framing(status, version, headers, method))
    length = answer.framing.length
    if length is not None and length <= EAGER_BYTES:
        answer.body = await reader.take_exactly(length) if length else b""
        connection.reusable = answer.framing.keep_alive
    return answer


async def body_chunks(
    connection: Connection, framing: Framing, read_seconds: float | None
) -> AsyncIterator[bytes]:
    """The body as it arrives, a bounded piece at a time; the connection is reusable
    once it was read to its end and the answer allows keep-alive."""
    reader = connection.reader
    if framing.chunked:
        # Chunk extensions and trailers are dropped, so the caller's caps never count
        # them: they get a budget of their own, or a peer could stream them for ever.
        spare = MAX_HEAD_BYTES
        while True:
            line = await _read(reader.take_until(b"\r\n"), read_seconds)
            size_text, _, extension = line.partition(b";")
            size_text = size_text.strip(b" \t\r\n")
            spare -= len(extension)
            # Hex digits only: int() would also take a 0x prefix, a sign or underscores.
            if not size_text or not _HEX.issuperset(size_text):
                raise _protocol_error("a chunk size that is not hex digits")
            size = int(size_text, 16)
            if size == 0:
                while (trailer := await _read(reader.take_until(b"\r\n"), read_seconds)) != b"\r\n":
                    spare -= len(trailer)  # ignored
                    if spare < 0:
                        break
            if spare < 0:
                raise _protocol_error(f"chunk extensions and trailers over {MAX_HEAD_BYTES} bytes")
            if size == 0:
                break
            while size:
                piece = await _read(reader.take_exactly(min(size, _CHUNK)), read_seconds)
                size -= len(piece)
                yield piece
            if await _read(reader.take_exactly(2), read_seconds) != b"\r\n":
                raise _protocol_error("a chunk not followed by CRLF")
    elif framing.length is not None:
        left = framing.length
        while left:
            piece = await _read(reader.take_exactly(min(left, _CHUNK)), read_seconds)
            left -= len(piece)
            yield piece
    else:
        while piece := await _read(reader.take(_CHUNK), read_seconds):
            yield piece
    connection.reusable = framing.keep_alive


class Pool:
    """At most `max_connections` connections per origin, idle ones reused last-in first."""

    def __init__(self, max_connections: int, tls: Callable[[], ssl.SSLContext | None]) -> None:
        self._max = max_connections
        self._tls = tls
        self._idle: dict[Origin, list[Connection]] = {}
        self._slots: dict[Origin, asyncio.Semaphore] = {}
        self._open: set[Connection] = set()

    async def acquire(self, origin: Origin, timeouts: dict[str, float | None]) -> Connection:
        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self._max)
        if slots.locked():  # only a wait needs a timer
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection within the pool timeout") from None
        else:
            await slots.acquire()  # free: returns at once
        try:
            idle = self._idle.get(origin)
            while idle:
                connection = idle.pop()
                if connection.alive():
                    connection.reusable = False
                    connection.reused = True
                    return connection
                self._forget(connection)
            return await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            slots.release()
            raise

    def release(self, origin: Origin, connection: Connection) -> None:
        """Back to the idle list when reusable, else closed; its slot freed either way."""
        if connection.reusable and connection.alive():
            self._idle.setdefault(origin, []).append(connection)
        else:
            self._forget(connection)
        self._slots[origin].release()

    async def _connect(self, origin: Origin, seconds: float | None) -> Connection:
        scheme, host, port = origin
        context = self._tls() if scheme == "https" else None
        try:
            async with asyncio.timeout(seconds):
                # asyncio.open_connection, with a reader that counts what is unread.
                loop = asyncio.get_running_loop()
                reader = _Reader()
                protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                transport, _ = await loop.create_connection(
                    lambda: protocol,
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        connection = Connection(reader, writer)
        self._open.add(connection)
        return connection

    def _forget(self, connection: Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def aclose(self) -> None:
        for connection in list(self._open):
            self._forget(connection)
            with contextlib.suppress(OSError, ssl.SSLError):  # a peer gone already
                await connection.writer.wait_closed()
        self._idle.clear()
