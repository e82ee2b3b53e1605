"""The Kubernetes engine: a `coordination.k8s.io/v1` Lease, the way client-go's
leaderelection uses one.

- A follower reads the Lease every renew_every and times an UNCHANGED record on its
  own monotonic clock (client-go's observedTime): the holder's renewTime is another
  machine's wall clock and is never compared with ours.
- When the record has not changed for its leaseDurationSeconds, or names no
  holder, the follower takes it with a PUT carrying the resourceVersion it read:
  the API server's optimistic concurrency decides between rivals (409: lost).
- The holder renews with a PUT carrying the resourceVersion of its last write; a
  409 means another copy wrote the Lease: lost at once (no GET to argue with it).
- Release clears holderIdentity, so that the next follower's read takes over.
- Credentials: the pod's service account (token, CA, namespace) unless
  `leader.kubernetes.api_url`, `token_file`, `ca_file`, `namespace` say otherwise.
"""

from __future__ import annotations

import asyncio
import copy
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from sweeper.leader import EngineError, Lost, Monotonic
from sweeper.leader_settings import KubernetesSettings

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _micro_time(now: datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubernetesEngine:
    """One copy's view of one Lease."""

    def __init__(
        self,
        *,
        api_url: str,
        namespace: str,
        token_file: Path,
        name: str,
        identity: str,
        lease_seconds: float,
        renew_every: float,
        verify: ssl.SSLContext | bool = True,
        monotonic: Monotonic = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = (
            f"{api_url.rstrip('/')}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        )
        self.namespace = namespace
        self.token_file = token_file
        self.name = name
        self.identity = identity
        self.duration = max(1, round(lease_seconds))
        self.renew_every = renew_every
        self.monotonic = monotonic
        self.wall = wall
        self.sleep = sleep
        self.http = httpx.AsyncClient(
            verify=verify,
            # A renewal is bounded by the lease left (the elector's own timeout).
            timeout=httpx.Timeout(lease_seconds),
            transport=transport,
            follow_redirects=False,
        )
        #: The Lease as we last read or wrote it, and when (our monotonic clock) it last
        #: changed under our eyes: client-go's observedRecord and observedTime.
        self.observed: dict[str, Any] | None = None
        self.observed_at = 0.0

    @classmethod
    def from_settings(
        cls,
        settings: KubernetesSettings,
        *,
        name: str,
        identity: str,
        lease_seconds: float,
        renew_every: float,
        monotonic: Monotonic = time.monotonic,
        environ: dict[str, str] | None = None,
    ) -> KubernetesEngine:
        env = os.environ if environ is None else environ
        api_url = settings.api_url
        if api_url is None:
            host = env.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            port = env.get("KUBERNETES_SERVICE_PORT", "443")
            api_url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        namespace = settings.namespace or _read(SERVICE_ACCOUNT / "namespace", "namespace")
        ca_file = settings.ca_file or (
            SERVICE_ACCOUNT / "ca.crt" if api_url.startswith("https:") else None
        )
        verify: ssl.SSLContext | bool = True
        if ca_file is not None and api_url.startswith("https:"):
            try:
                verify = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise EngineError(f"leader.kubernetes.ca_file: {ca_file}: {exc}") from None
        return cls(
            api_url=api_url,
            namespace=namespace,
            token_file=settings.token_file or SERVICE_ACCOUNT / "token",
            name=name,
            identity=identity,
            lease_seconds=lease_seconds,
            renew_every=renew_every,
            verify=verify,
            monotonic=monotonic,
        )

    # -- one exchange ------------------------------------------------------------

    async def _send(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        # Read on every call: projected service-account tokens are rotated in place.
        token = _read(self.token_file, "token_file")
        try:
            answer = await self.http.request(
                method, url, json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except (httpx.HTTPError, OSError) as exc:  # OSError: a TLS alert read raw
            raise EngineError(f"kubernetes {method} lease: {type(exc).__name__}") from None
        try:
            data = answer.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EngineError(f"kubernetes {method} lease: HTTP {answer.status_code}, not JSON")
        return answer.status_code, data

    def _record(self, holder: str, acquire: bool) -> dict[str, Any]:
        now = _micro_time(self.wall())
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": self.duration,
            "renewTime": now,
        }
        old = (self.observed or {}).get("spec", {})
        transitions = int(old.get("leaseTransitions") or 0)
        if acquire:
            spec["acquireTime"] = now
            # client-go: a new holder (even after a released, empty one) is a transition.
            spec["leaseTransitions"] = transitions + (1 if old else 0)
        else:
            spec["acquireTime"] = old.get("acquireTime", now)
            spec["leaseTransitions"] = transitions
        return spec

    def _refused(self, method: str, status: int, data: dict[str, Any]) -> EngineError:
        # The API server's Status message: no credential is ever in it.
        message = str(data.get("message", ""))[:300]
        return EngineError(f"kubernetes {method} lease: HTTP {status}: {message}")

    async def _write(self, acquire: bool) -> tuple[float, float] | None:
        """PUT our record over the one observed; (sent_at, ttl), or None on a 409."""
        assert self.observed is not None
        lease = copy.deepcopy(self.observed)
        lease["spec"] = self._record(self.identity, acquire)
        sent_at = self.monotonic()
        status, data = await self._send("PUT", f"{self.url}/{self.name}", lease)
        if status == 409:
            return None
        if status != 200:
            raise self._refused("PUT", status, data)
        self._observe(data)
        return sent_at, float(self.duration)

    def _observe(self, lease: dict[str, Any]) -> None:
        """client-go: a record that changed restarts the follower's clock."""
        if self.observed is None or lease.get("spec") != self.observed.get("spec"):
            self.observed_at = self.monotonic()
        self.observed = lease

    # -- Engine ------------------------------------------------------------------

    async def campaign(self, on_follow: Callable[[str | None], None]) -> tuple[float, float]:
        while True:
            # One try every renew_every from the start of the last one (as the holder
            # renews): a slow answer does not stretch the time to see a release.
            started = self.monotonic()
            won = await self._try_acquire(on_follow)
            if won is not None:
                return won
            await self.sleep(max(0.0, started + self.renew_every - self.monotonic()))

    async def _try_acquire(
        self, on_follow: Callable[[str | None], None]
    ) -> tuple[float, float] | None:
        status, data = await self._send("GET", f"{self.url}/{self.name}")
        if status == 404:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
            }
            self.observed = lease
            lease = {**lease, "spec": self._record(self.identity, acquire=True)}
            sent_at = self.monotonic()
            status, data = await self._send("POST", self.url, lease)
            if status == 409:
                return None  # another copy created it first
            if status != 201 and status != 200:
                raise self._refused("POST", status, data)
            self._observe(data)
            return sent_at, float(self.duration)
        if status != 200:
            raise self._refused("GET", status, data)
        self._observe(data)
        spec = data.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        if (
            holder is not None
            and holder != self.identity
            and self.monotonic() < self.observed_at + duration
        ):
            on_follow(holder)
            return None  # held, and renewed within its duration as far as we saw
        return await self._write(acquire=holder != self.identity)

    async def renew(self) -> tuple[float, float]:
        if self.observed is None:
            raise Lost("expired", "no Lease observed")
        written = await self._write(acquire=False)
        if written is None:
            raise Lost("conflict", "the Lease was written by another copy (409)")
        return written

    async def release(self) -> None:
        observed = self.observed or {}
        if observed.get("spec", {}).get("holderIdentity") != self.identity:
            return  # only the holder clears the holder: never another copy's record
        lease = copy.deepcopy(observed)
        spec = self._record("", acquire=False)
        spec["holderIdentity"] = ""
        spec["leaseDurationSeconds"] = 1
        lease["spec"] = spec
        status, data = await self._send("PUT", f"{self.url}/{self.name}", lease)
        self.observed = None
        if status != 200:
            raise self._refused("PUT", status, data)

    async def holder(self) -> str | None:
        status, data = await self._send("GET", f"{self.url}/{self.name}")
        if status == 404:
            return None
        if status != 200:
            raise self._refused("GET", status, data)
        holder = (data.get("spec") or {}).get("holderIdentity")
        return holder if isinstance(holder, str) and holder else None

    async def close(self) -> None:
        await self.http.aclose()


def _read(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise EngineError(
            f"leader.kubernetes.{key}: {path} cannot be read ({exc.strerror})"
        ) from None
