"""The httpx transport under the platform client: our own HTTP/1.1 pool, proxies aside.

The httpx API stays the project's client. Underneath, httpcore's async pool spent
most of a sweep's CPU on its own bookkeeping under concurrency, and aiohttp's
request and response machinery (cookies, redirects, proxies, auto headers, URL
objects) still cost more than the rest of a request (docs/performance.md). A
direct request therefore goes out on `sweeper.http11`'s keep-alive pool, as the
bytes httpx prepared; only a request that `proxy_for` routes through a proxy goes
through aiohttp (`sweeper.proxied`), imported only then.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httpx

from sweeper.addresses import is_loopback
from sweeper.http11 import (
    ClosedBeforeAnswer,
    Connection,
    Framing,
    Origin,
    Pool,
    body_chunks,
    read_answer,
)
from sweeper.http11 import request_head as _request_head

if TYPE_CHECKING:
    from sweeper.proxied import AiohttpTransport

#: Called with (method, path) just before a request's bytes are written to the socket
#: ([leader]'s last look at the lease, `request.sent` at debug level); what it raises
#: stops the request unsent and leaves `handle_async_request` as it is.
BeforeWrite = Callable[[str, str], None]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Requests that may go out again when a kept-alive connection closed under them:
#: never a PATCH (the sweep decides, after a re-read, whether to write again).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


def no_proxy_names(no_proxy: str, host: str, port: int) -> bool:
    """Does NO_PROXY (comma or space separated) name this host? Each entry is:

    - `*`: every host;
    - a domain, `.domain` or `*.domain`: that host and every host under it;
    - an IP address, IPv6 bare or in brackets: that address;
    - a CIDR block (`10.0.0.0/8`, `fd00::/8`): an address literal inside it (host
      names are never resolved for this);
    - any of those but `*` with `:port` (`host:8443`, `[fd00::1]:8443`): on that port only.

    Case and a trailing dot are ignored. An entry none of these forms is ignored.
    """
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(",", " ").split():
        if entry == "*":
            return True
        name, wanted = _entry_port(entry.lower())
        if wanted is not None and wanted != port:
            continue
        if "/" in name:
            try:
                network = ipaddress.ip_network(name, strict=False)
            except ValueError:
                continue
            same = address is not None and address.version == network.version
            if same and address in network:
                return True
            continue
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            if address == literal:
                return True
            continue
        name = name.removeprefix("*").strip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _entry_port(entry: str) -> tuple[str, int | None]:
    """A NO_PROXY entry less its `:port`, and the port (None: any)."""
    if entry.startswith("["):  # [v6], [v6]:port, [v6]/bits
        inside, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            return inside, int(rest[1:])
        return inside + rest, None
    if entry.count(":") == 1:  # host:port (a bare IPv6 address has several)
        name, port = entry.split(":")
        return (name, int(port)) if port.isdigit() else (entry, None)
    return entry, None


def origin_of(url: httpx.URL) -> Origin:
    """Where a direct request connects: (scheme, host, port), the scheme's default port
    when the URL names none (httpx drops a default port it was given)."""
    if url.scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"no {url.scheme}:// transport")
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])


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
    effective_port = port if port is not None else (443 if scheme == "https" else 80)
    no_proxy = proxies.get("no")
    if not proxy or (no_proxy and no_proxy_names(no_proxy, host, effective_port)):
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


class _Answer(httpx.AsyncByteStream):
    """The body of one answer; closing it gives the connection back (or closes it)."""

    def __init__(
        self,
        pool: Pool,
        origin: Origin,
        connection: Connection,
        framing: Framing,
        read: float | None,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._connection: Connection | None = connection
        self._framing = framing
        self._read = read

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert self._connection is not None  # never read after `aclose`
        async for piece in body_chunks(self._connection, self._framing, self._read):
            yield piece

    async def aclose(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            self._pool.release(self._origin, connection)


class Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 on keep-alive connections, at most `max_connections` per origin."""

    def __init__(
        self,
        *,
        max_connections: int,
        verify: bool | ssl.SSLContext = True,
        before_write: BeforeWrite | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._verify = verify
        self._before_write = before_write
        self._context: ssl.SSLContext | None = (
            verify if isinstance(verify, ssl.SSLContext) else None
        )
        self._pool = Pool(max_connections, self.tls_context)
        self._proxied: AiohttpTransport | None = None
        self._proxies: dict[tuple[str, str, int | None], str | httpx.ProxyError | None] = {}

    def tls_context(self) -> ssl.SSLContext:
        """The TLS settings of https requests, built on first use (a sweep of an http://
        stand-in never pays for loading the system's certificates)."""
        if self._context is None:
            context = ssl.create_default_context()
            if self._verify is False:  # only ever asked for by a test
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._context = context
        return self._context

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy for this URL (see `proxy_for`), looked up once per scheme and host."""
        key = (url.scheme, url.host, url.port)
        if key not in self._proxies:
            self._proxies[key] = proxy_for(url.scheme, url.host, url.port)
        proxy = self._proxies[key]
        if isinstance(proxy, httpx.ProxyError):
            raise proxy
        return proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        proxy = self._proxy_for(url)
        if proxy is not None:
            return await self._through(proxy, request)
        origin = origin_of(url)
        # A request built without a client has no timeouts: it waits as long as it takes.
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        message = _request_head(request) + await request.aread()
        resend = request.method in _IDEMPOTENT
        while True:
            connection = await self._pool.acquire(origin, timeouts)
            if self._before_write is not None:
                path = url.raw_path.partition(b"?")[0].decode()  # httpx sends it ASCII
                try:  # nothing waits between this and the write below
                    self._before_write(request.method, path)
                except BaseException:
                    connection.reusable = True  # nothing was written on it
                    self._pool.release(origin, connection)
                    raise
            try:
                connection.writer.write(message)
                answer = await read_answer(connection, request.method, timeouts.get("read"))
                break
            except ClosedBeforeAnswer:
                connection.close()
                self._pool.release(origin, connection)
                if not resend:
                    raise
                resend = False  # once, on a new or another kept connection (as aiohttp did)
            except BaseException:
                connection.close()
                self._pool.release(origin, connection)
                raise
        stream: httpx.AsyncByteStream
        if answer.body is not None:
            self._pool.release(origin, connection)
            stream = httpx.ByteStream(answer.body)
        else:
            stream = _Answer(self._pool, origin, connection, answer.framing, timeouts.get("read"))
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=stream,
            extensions={"http_version": answer.version},  # the client sets `request`
        )

    async def _through(self, proxy: str, request: httpx.Request) -> httpx.Response:
        if self._proxied is None:
            from sweeper.proxied import AiohttpTransport

            self._proxied = AiohttpTransport(
                max_connections=self._max_connections,
                tls=self.tls_context(),
                before_write=self._before_write,
            )
        return await self._proxied.send(request, proxy)

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._proxied is not None:
            await self._proxied.aclose()
