"""A Kubernetes API server for Leases only, behaving as the real one does, over a REAL etcd.

The real API server keeps objects in etcd and updates them with a transaction
that compares the key's mod_revision with the resourceVersion sent; this fake
does the same through etcd's JSON gateway, so its optimistic concurrency is
etcd's own, not a lock of ours:

- GET a missing Lease: 404 NotFound; POST one that exists: 409 AlreadyExists;
- PUT without metadata.resourceVersion: 422 Invalid; with a stale one: 409 Conflict;
- a missing or wrong bearer token: 401; every error is an `application/json`
  `Status` object; resourceVersion is the etcd revision of the write.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sweeper.devserver.server import RunningServer, listening_socket, url_of

GROUP = "coordination.k8s.io"
PREFIX = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def status(code: int, reason: str, message: str, name: str = "") -> Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": GROUP, "kind": "leases"},
        "code": code,
    }
    return Response(json.dumps(body), status_code=code, media_type="application/json")


@dataclass
class FakeApiServer:
    """The routes of the Lease API; `seen` records (method, token) for the tests."""

    etcd_url: str
    token: str
    seen: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def key(self, namespace: str, name: str) -> str:
        return _b64(f"/registry/leases/{namespace}/{name}")

    async def etcd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.post(self.etcd_url + path, json=body)
        data: dict[str, Any] = answer.json()
        return data

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    @staticmethod
    def with_version(value: str, revision: str) -> dict[str, Any]:
        lease: dict[str, Any] = json.loads(base64.b64decode(value))
        lease["metadata"]["resourceVersion"] = str(revision)
        return lease

    async def one(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        self.seen.append((request.method, request.headers.get("authorization", "")))
        if not self.authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        key = self.key(namespace, name)
        if request.method == "GET":
            found = await self.etcd("/v3/kv/range", {"key": key})
            kvs = found.get("kvs") or []
            if not kvs:
                return status(404, "NotFound", f'leases.{GROUP} "{name}" not found', name)
            lease = self.with_version(kvs[0]["value"], kvs[0]["mod_revision"])
            return Response(json.dumps(lease), media_type="application/json")
        body = json.loads(await request.body())
        version = (body.get("metadata") or {}).get("resourceVersion")
        if not version:
            return status(
                422,
                "Invalid",
                f'Lease.{GROUP} "{name}" is invalid: metadata.resourceVersion: Invalid value:'
                " 0x0: must be specified for an update",
                name,
            )
        stored = dict(body)
        stored["metadata"] = {k: v for k, v in body["metadata"].items() if k != "resourceVersion"}
        txn = await self.etcd(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": key,
                        "target": "MOD",
                        "result": "EQUAL",
                        "mod_revision": str(version),
                    }
                ],
                "success": [{"request_put": {"key": key, "value": _b64(json.dumps(stored))}}],
                "failure": [{"request_range": {"key": key}}],
            },
        )
        if not txn.get("succeeded"):
            kvs = (txn.get("responses") or [{}])[0].get("response_range", {}).get("kvs")
            if not kvs:
                return status(404, "NotFound", f'leases.{GROUP} "{name}" not found', name)
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.{GROUP} "{name}": the object has been'
                " modified; please apply your changes to the latest version and try again",
                name,
            )
        lease = dict(stored)
        lease["metadata"] = {**stored["metadata"], "resourceVersion": txn["header"]["revision"]}
        return Response(json.dumps(lease), media_type="application/json")

    async def create(self, request: Request) -> Response:
        namespace = request.path_params["namespace"]
        self.seen.append((request.method, request.headers.get("authorization", "")))
        if not self.authorized(request):
            return status(401, "Unauthorized", "Unauthorized")
        body = json.loads(await request.body())
        name = body["metadata"]["name"]
        key = self.key(namespace, name)
        txn = await self.etcd(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                ],
                "success": [{"request_put": {"key": key, "value": _b64(json.dumps(body))}}],
            },
        )
        if not txn.get("succeeded"):
            return status(409, "AlreadyExists", f'leases.{GROUP} "{name}" already exists', name)
        lease = dict(body)
        lease["metadata"] = {**body["metadata"], "resourceVersion": txn["header"]["revision"]}
        return Response(json.dumps(lease), status_code=201, media_type="application/json")


def serve_fake_api(etcd_url: str, token: str) -> tuple[RunningServer, FakeApiServer]:
    import asyncio

    import uvicorn

    from sweeper.devserver.state import PlatformState

    api = FakeApiServer(etcd_url, token)
    app = Starlette(
        routes=[
            Route(PREFIX + "/{name}", api.one, methods=["GET", "PUT"]),
            Route(PREFIX, api.create, methods=["POST"]),
        ]
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    sock = listening_socket("127.0.0.1", 0)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="fake-api", daemon=True
    )
    thread.start()
    return RunningServer(url_of(sock), PlatformState(), app, server, thread), api
