"""A loopback HTTP server scripted by hand: it reads each request (head and its
Content-Length body) and gives the next scripted answer, for the HTTP/1.1 transport tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

#: Bytes to write as they are, or a coroutine that answers and then the connection closes.
Answer = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A loopback server giving the scripted answers in order, one per request."""

    def __init__(self, answers: Sequence[Answer]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def answer(self, answer: Answer, writer: asyncio.StreamWriter) -> bool:
        """Write one answer; False when the connection is to close after it."""
        if isinstance(answer, bytes):
            writer.write(answer)
            await writer.drain()
            return True
        await answer(writer)
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                if not await self.answer(self.answers.pop(0), writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:  # the test's loop ends while this one waits or trickles
            return
        finally:
            writer.close()
