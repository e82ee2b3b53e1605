"""An httpx transport on aiohttp's connection pool.

The httpx API stays the project's client; underneath, httpcore's async pool
spends most of a sweep's CPU on its own bookkeeping under concurrency (see the
Performance section of the README), while aiohttp's pool is several times
cheaper. `httpx-aiohttp` does the same job but hands aiohttp the URL as text to
re-parse, and yarl then resolves an encoded step id of `%2E%2E` into a real `..`:
here the URL goes over already encoded, exactly as httpx built it.

Every aiohttp exception leaves as the httpx exception it means, so `api.py`
still translates errors in one place.
"""

from __future__ import annotations

import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
from yarl import URL

from sweeper.settings import is_loopback

_CHUNK = 64 * 1024


def _map(exc: BaseException) -> httpx.TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc))
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(str(exc) or "timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(str(exc))
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(f"malformed answer ({exc.status})")
    return httpx.ReadError(str(exc) or type(exc).__name__)


def proxy_for(scheme: str, host: str, port: int | None) -> str | httpx.ProxyError | None:
    """The proxy a request to scheme://host:port goes through, from the environment.

    Loopback never goes through a proxy: plain http is allowed there because it stays
    on the host. Elsewhere HTTPS_PROXY / HTTP_PROXY, then ALL_PROXY (lower-case first),
    unless NO_PROXY names the host. An https request tunnels (CONNECT): the proxy never
    sees the token. A plain http request would hand it the token, and a proxy aiohttp
    cannot speak (socks) would be bypassed: both are refused (a ProxyError to raise),
    never sent directly behind the operator's back either.
    """
    if is_loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    where = host if port is None else f"{host}:{port}"
    if not proxy or urllib.request.proxy_bypass_environment(where, proxies):  # type: ignore[attr-defined]
        return None
    kind = urllib.parse.urlsplit(proxy).scheme.lower()
    if kind not in ("http", "https"):
        return httpx.ProxyError(
            f"not sent: the proxy for {scheme}:// is a {kind or 'schemeless'} proxy; only "
            "http(s) proxies are supported (or name the host in NO_PROXY)"
        )
    if scheme == "http":
        return httpx.ProxyError(
            f"not sent: plain http:// to {host} through a proxy would hand it the token; "
            "use https:// or name the host in NO_PROXY"
        )
    return proxy


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map(exc) from exc

    async def aclose(self) -> None:
        self._response.release()


#: Called with (method, path) just before a request's bytes are written to the socket;
#: what it raises stops the request unsent and leaves `handle_async_request` as is.
BeforeWrite = Callable[[str, str], None]


def _write_tracer(before_write: BeforeWrite) -> aiohttp.TraceConfig:
    """aiohttp's trace hooks, placed where the request is written.

    A request without a body is written right after its headers are serialized
    (`on_request_headers_sent`), one with a body with its first chunk
    (`on_request_chunk_sent`, run just before that write, headers and body in one).
    Neither hook is followed by a wait before the write: what runs in them runs when
    the bytes leave, and nothing is written when they raise.
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


class AiohttpTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 on an aiohttp ClientSession, created on first use inside the loop.

    `before_write` ([leader]'s last look at the lease, `request.sent` at debug level):
    see `BeforeWrite`; without it no trace hook runs at all.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        verify: bool | ssl.SSLContext = True,
        before_write: BeforeWrite | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._before_write = before_write
        self._ssl: bool | ssl.SSLContext = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else (ssl.create_default_context() if verify else False)
        )
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str, int | None], str | httpx.ProxyError | None] = {}

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy for this URL (see `proxy_for`), looked up once per scheme and host.

        aiohttp's own trust_env does this (and a ~/.netrc look-up that could clash
        with our Authorization header) on a worker thread for every request.
        """
        key = (url.scheme, url.host, url.port)
        if key not in self._proxies:
            self._proxies[key] = proxy_for(url.scheme, url.host, url.port)
        proxy = self._proxies[key]
        if isinstance(proxy, httpx.ProxyError):
            raise proxy
        return proxy

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # proxies from the environment: see _proxy_for
                auto_decompress=False,  # httpx decodes Content-Encoding itself
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trace_configs=(
                    None if self._before_write is None else [_write_tracer(self._before_write)]
                ),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        body = request.content or None
        traced: dict[str, Any] | None = (
            None if self._before_write is None else {"body": body is not None}
        )
        try:
            response = await self._session_now().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=list(request.headers.multi_items()),
                data=body,
                allow_redirects=False,
                proxy=self._proxy_for(request.url),
                trace_request_ctx=traced,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            refused: BaseException | None = (traced or {}).get("refused")
            if refused is not None:
                raise refused from None  # nothing written: as before_write raised it
            raise _map(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
