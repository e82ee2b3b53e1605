"""Requests through an http(s) proxy, on aiohttp (CONNECT tunnels, TLS to the proxy).

`sweeper.transport` sends directly on its own pool and hands this module only the
requests that `proxy_for` routes through a proxy, so aiohttp is imported only
then. `httpx-aiohttp` does the same job but hands aiohttp the URL as text to
re-parse, and yarl then resolves an encoded step id of `%2E%2E` into a real `..`:
here the URL goes over already encoded, exactly as httpx built it.

Every aiohttp exception leaves as the httpx exception it means, so `api.py`
still translates errors in one place.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, NoReturn

import aiohttp
import httpx
from aiohttp import hdrs
from yarl import URL

_CHUNK = 64 * 1024
#: See `sweeper.transport.BeforeWrite` (stated there; this module is imported lazily).
BeforeWrite = Callable[[str, str], None]


def map_error(exc: BaseException) -> httpx.TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc))
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(str(exc) or "timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(exc))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError("the answer's body was cut off or malformed")
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(f"malformed answer ({exc.status})")
    return httpx.ReadError(str(exc) or type(exc).__name__)


def reraise(exc: BaseException) -> NoReturn:
    """`exc` as the httpx error it means. aiohttp's parser errors quote the answer's
    bytes, where a peer reflecting the request could put the token: not chained."""
    error = map_error(exc)
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        raise error from None
    raise error from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            reraise(exc)

    async def aclose(self) -> None:
        self._response.release()


def write_tracer(before_write: BeforeWrite) -> aiohttp.TraceConfig:
    """aiohttp's trace hooks, placed where the request is written; each request's
    `trace_request_ctx` is `{"body": <whether it has one>}`.

    A request without a body is written right after its headers are serialized
    (`on_request_headers_sent`), one with a body with its first chunk
    (`on_request_chunk_sent`, run just before that write, headers and body in one),
    once however many chunks follow. Neither hook is followed by a wait before the
    write: what runs in them runs when the bytes leave, and nothing is written when
    they raise.
    """
    tracer = aiohttp.TraceConfig()

    def call(context: SimpleNamespace, method: str, url: URL) -> None:
        ctx = context.trace_request_ctx
        try:
            before_write(method, url.raw_path)
        except BaseException as exc:
            ctx["refused"] = exc  # aiohttp may wrap it on the way out: unwrapped there
            raise

    async def headers(_: Any, context: SimpleNamespace, params: Any) -> None:
        if not context.trace_request_ctx["body"]:
            call(context, params.method, params.url)

    async def chunk(_: Any, context: SimpleNamespace, params: Any) -> None:
        ctx = context.trace_request_ctx
        if ctx["body"] and not ctx.get("written"):
            ctx["written"] = True  # the first chunk only
            call(context, params.method, params.url)

    tracer.on_request_headers_sent.append(headers)
    tracer.on_request_chunk_sent.append(chunk)
    return tracer


class AiohttpTransport:
    """HTTP/1.1 through a proxy on an aiohttp ClientSession, created on first use.

    `before_write`: see `sweeper.transport.BeforeWrite`; without it no trace hook runs.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        tls: ssl.SSLContext,
        before_write: BeforeWrite | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._tls = tls
        self._before_write = before_write
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._tls)
            # trust_env stays off (its default): the proxy is chosen by
            # sweeper.transport.proxy_for, and no ~/.netrc adds credentials.
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING),
                trace_configs=(
                    None if self._before_write is None else [write_tracer(self._before_write)]
                ),
            )
        return self._session

    async def send(self, request: httpx.Request, proxy: str) -> httpx.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        body = request.content or None
        traced: dict[str, Any] = {"body": body is not None}  # for the trace hooks, if any
        try:
            response = await self._session_now().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=list(request.headers.multi_items()),
                data=body,
                allow_redirects=False,
                proxy=proxy,
                trace_request_ctx=traced,
                timeout=aiohttp.ClientTimeout(  # no total: each phase has its own
                    connect=timeout.get("pool"),  # aiohttp's includes the wait for the pool
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            refused: BaseException | None = traced.get("refused")
            if refused is not None:
                raise refused from None  # nothing written: as before_write raised it
            reraise(exc)
        # The client sets the response's request; its http_version is HTTP/1.1 by default.
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
