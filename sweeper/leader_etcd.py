"""The etcd v3 engine: a lease and etcd's own election API, over its JSON gateway (httpx).

What etcd's `concurrency` package does, done over HTTP: grant a lease, campaign
for the election's name with a key bound to that lease (`/v3/election/campaign`
waits until every older candidate's key is gone), keep the lease alive, read the
leader (`/v3/election/leader`), and revoke the lease to hand over at once. The
engine does the hard part (who is elected); this side only times the lease.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from sweeper.leader import EngineError, Lost, Monotonic
from sweeper.leader_settings import EtcdSettings

#: etcd's gRPC code for a request whose auth token is missing or expired.
UNAUTHENTICATED = 16


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def tls_context(ca_file: Any, cert_file: Any, key_file: Any) -> ssl.SSLContext | bool:
    if ca_file is None and cert_file is None:
        return True
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    return context


class EtcdEngine:
    """One copy's view of one election on an etcd cluster."""

    def __init__(
        self,
        settings: EtcdSettings,
        *,
        name: str,
        identity: str,
        lease_seconds: float,
        renew_every: float,
        monotonic: Monotonic = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoints = list(settings.endpoints)
        self.current = 0
        self.name = name
        self.identity = identity
        self.ttl = max(1, math.ceil(lease_seconds))
        self.renew_every = renew_every
        self.monotonic = monotonic
        self.username = settings.username
        self.password_file = settings.password_file
        self.http = httpx.AsyncClient(
            verify=tls_context(settings.ca_file, settings.cert_file, settings.key_file),
            # A renewal is bounded by the lease left (the elector's own timeout).
            timeout=httpx.Timeout(lease_seconds),
            transport=transport,
            follow_redirects=False,
        )
        self.auth_token: str | None = None
        self.lease_id: str | None = None
        self.leader_key: dict[str, Any] | None = None

    # -- one exchange ------------------------------------------------------------

    async def _post(
        self, path: str, body: dict[str, Any], *, long_poll: bool = False
    ) -> dict[str, Any]:
        """POST to the current endpoint, moving to the next when one cannot be reached."""
        problem = "no endpoint"
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoints[self.current]
            try:
                return await self._post_to(endpoint, path, body, long_poll)
            except (httpx.HTTPError, OSError) as exc:  # OSError: a TLS alert read raw
                problem = f"etcd {endpoint}: {type(exc).__name__}"
                self.current = (self.current + 1) % len(self.endpoints)
        raise EngineError(problem)

    async def _post_to(
        self, endpoint: str, path: str, body: dict[str, Any], long_poll: bool
    ) -> dict[str, Any]:
        for retry_auth in (True, False):
            headers = {}
            if self.username is not None:
                if self.auth_token is None:
                    self.auth_token = await self._authenticate(endpoint)
                headers["Authorization"] = self.auth_token
            timeout = httpx.Timeout(self.ttl, read=None) if long_poll else None
            extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
            answer = await self.http.post(endpoint + path, json=body, headers=headers, **extra)
            data = _json(answer, endpoint, path)
            if answer.status_code == 200 and "error" not in data:
                return data
            error = data.get("error")
            code = data.get("code", error.get("code") if isinstance(error, dict) else None)
            if code == UNAUTHENTICATED and self.username is not None and retry_auth:
                self.auth_token = None  # expired: authenticate again, once
                continue
            message = data.get("message") or (
                error.get("message") if isinstance(error, dict) else ""
            )
            raise EtcdRefused(str(message)[:300], code if isinstance(code, int) else None)
        raise EngineError(f"etcd {endpoint}{path}: authentication refused")

    async def _authenticate(self, endpoint: str) -> str:
        assert self.password_file is not None
        try:
            password = self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EngineError(
                f"leader.etcd.password_file: cannot be read ({exc.strerror})"
            ) from None
        answer = await self.http.post(
            endpoint + "/v3/auth/authenticate", json={"name": self.username, "password": password}
        )
        data = _json(answer, endpoint, "/v3/auth/authenticate")
        token = data.get("token")
        if answer.status_code != 200 or not isinstance(token, str):
            # etcd's message only: never the password.
            raise EngineError(f"etcd {endpoint}: authentication refused ({data.get('message')})")
        return token

    async def _keepalive(self) -> tuple[float, float]:
        """Renew our lease once: (monotonic time just before sending, TTL granted)."""
        if self.lease_id is None:
            raise Lost("expired", "no lease")
        sent_at = self.monotonic()
        data = await self._post("/v3/lease/keepalive", {"ID": self.lease_id})
        result = data.get("result")
        ttl = int(result.get("TTL", 0)) if isinstance(result, dict) else 0
        if ttl <= 0:
            self.lease_id = None
            raise Lost("expired", "etcd no longer knows this copy's lease")
        return sent_at, float(ttl)

    # -- Engine ------------------------------------------------------------------

    async def campaign(self, on_follow: Callable[[str | None], None]) -> tuple[float, float]:
        try:
            return await self._campaign(on_follow)
        except EtcdRefused as exc:
            raise EngineError(f"etcd: {exc}") from None
        except Lost as exc:
            raise EngineError(f"etcd: candidate lease lost ({exc})") from None

    async def _campaign(self, on_follow: Callable[[str | None], None]) -> tuple[float, float]:
        if self.lease_id is not None:
            # A lease from before (a loss, an error): still alive? Else grant a new one.
            with contextlib.suppress(Lost):
                await self._keepalive()
        if self.lease_id is None:
            granted = await self._post("/v3/lease/grant", {"TTL": self.ttl})
            self.lease_id = str(granted["ID"])
        body = {"name": _b64(self.name), "lease": self.lease_id, "value": _b64(self.identity)}
        waiting = asyncio.ensure_future(self._post("/v3/election/campaign", body, long_poll=True))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=self.renew_every)
                if done:
                    break
                # A candidate's key lives as long as its lease: keep it, say who leads.
                await self._keepalive()
                on_follow(await self.holder())
        finally:
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        leader = waiting.result().get("leader")
        if not isinstance(leader, dict) or "key" not in leader:
            raise EngineError("etcd: campaign answered without a leader key")
        self.leader_key = leader
        # Elected: confirm with a renewal (the lease is timed from its send) and a read
        # of the leader (an expired candidate key can be "elected" once it is gone).
        return await self.renew()

    async def renew(self) -> tuple[float, float]:
        try:
            sent_at, ttl = await self._keepalive()
            data = await self._post("/v3/election/leader", {"name": _b64(self.name)})
        except EtcdRefused as exc:
            if "no leader" in str(exc):
                raise Lost("conflict", "etcd: no leader key, ours is gone") from None
            raise EngineError(f"etcd: {exc}") from None
        found = data.get("kv")
        kv: dict[str, Any] = found if isinstance(found, dict) else {}
        assert self.leader_key is not None
        if kv.get("key") != self.leader_key.get("key"):
            holder = _unb64(kv["value"]) if isinstance(kv.get("value"), str) else None
            raise Lost("conflict", f"etcd: the election's leader is {holder!r}")
        return sent_at, ttl

    async def release(self) -> None:
        lease, self.lease_id = self.lease_id, None
        if lease is None:
            return
        try:
            await self._post("/v3/lease/revoke", {"ID": lease})
        except EtcdRefused as exc:
            raise EngineError(f"etcd: {exc}") from None

    async def holder(self) -> str | None:
        try:
            data = await self._post("/v3/election/leader", {"name": _b64(self.name)})
        except EtcdRefused as exc:
            if "no leader" in str(exc):
                return None
            raise EngineError(f"etcd: {exc}") from None
        kv = data.get("kv")
        if isinstance(kv, dict) and isinstance(kv.get("value"), str):
            return _unb64(kv["value"])
        return None

    async def close(self) -> None:
        await self.http.aclose()


class EtcdRefused(EngineError):
    """etcd answered with an error (its message, never a credential)."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


def _json(answer: httpx.Response, endpoint: str, path: str) -> dict[str, Any]:
    # The keep-alive stream answers one JSON object per line: the first is ours.
    text = answer.text.strip().splitlines()[0] if answer.text.strip() else ""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise EngineError(f"etcd {endpoint}{path}: HTTP {answer.status_code}, not JSON") from None
    if not isinstance(data, dict):
        raise EngineError(f"etcd {endpoint}{path}: HTTP {answer.status_code}, not an object")
    return data
