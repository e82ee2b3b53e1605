"""The Kubernetes engine against a Lease API fake that stores Leases in a REAL etcd, and the
fake's own faithfulness (the answers the API server gives)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sweeper.leader import EngineError, Lost
from sweeper.leader_k8s import KubernetesEngine
from sweeper.leader_settings import KubernetesSettings
from tests.etcd import Etcd
from tests.k8s_fake import FakeApiServer, serve_fake_api

TOKEN = "sa-token-value"


@pytest.fixture(name="api", scope="module")
def _api(etcd: Etcd) -> Iterator[tuple[str, FakeApiServer]]:
    server, api = serve_fake_api(etcd.url, TOKEN)
    yield server.base_url, api
    server.stop()


@pytest.fixture(name="token_file")
def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def engine(api_url: str, token_file: Path, identity: str, name: str, **kw: Any) -> KubernetesEngine:
    return KubernetesEngine(
        api_url=api_url,
        namespace="sweeper",
        token_file=token_file,
        name=name,
        identity=identity,
        lease_seconds=kw.pop("lease", 2.0),
        renew_every=kw.pop("renew", 0.2),
        **kw,
    )


LEASES = "/apis/coordination.k8s.io/v1/namespaces/sweeper/leases"


def test_the_fake_answers_as_the_api_server_does(
    api: tuple[str, FakeApiServer], token_file: Path
) -> None:
    """Create twice: 409 AlreadyExists; PUT without resourceVersion: 422; with a stale one:
    409 Conflict; no token: 401; each a Status object in application/json."""
    url, _ = api
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
    lease["metadata"] = {"name": "fake-check", "namespace": "sweeper"}  # type: ignore[assignment]
    with httpx.Client(base_url=url, headers=auth) as http:
        assert http.get(f"{LEASES}/fake-check").status_code == 404
        created = http.post(LEASES, json=lease)
        assert created.status_code == 201
        version = created.json()["metadata"]["resourceVersion"]
        again = http.post(LEASES, json=lease)
        assert (again.status_code, again.json()["reason"]) == (409, "AlreadyExists")
        unversioned = http.put(f"{LEASES}/fake-check", json=lease)
        assert (unversioned.status_code, unversioned.json()["reason"]) == (422, "Invalid")
        current = http.get(f"{LEASES}/fake-check").json()
        assert current["metadata"]["resourceVersion"] == version
        updated = http.put(f"{LEASES}/fake-check", json=current)
        assert updated.status_code == 200
        assert updated.json()["metadata"]["resourceVersion"] != version
        stale = http.put(f"{LEASES}/fake-check", json=current)
        assert stale.status_code == 409
        body = stale.json()
        assert stale.headers["content-type"] == "application/json"
        assert (body["kind"], body["status"], body["reason"], body["code"]) == (
            "Status",
            "Failure",
            "Conflict",
            409,
        )
        missing = dict(current, metadata={"name": "nope", "resourceVersion": "1"})
        assert http.put(f"{LEASES}/nope", json=missing).status_code == 404
    assert httpx.get(url + f"{LEASES}/fake-check").status_code == 401


def test_follower_times_an_unchanged_record_then_takes_over(
    api: tuple[str, FakeApiServer], token_file: Path
) -> None:
    """A holds and renews: B follows. A stops renewing: B takes the Lease once the record
    stayed unchanged for its duration on B's clock; A's next renewal is a 409: conflict."""
    url, _ = api
    followed: list[str | None] = []

    async def scenario() -> None:
        a = engine(url, token_file, "a", "takeover")
        b = engine(url, token_file, "b", "takeover")
        await a.campaign(lambda holder: None)
        assert await a.holder() == "a"
        b_wins = asyncio.ensure_future(b.campaign(followed.append))
        for _ in range(6):  # A renews for a while: B stays a follower
            await asyncio.sleep(0.3)
            await a.renew()
            assert not b_wins.done()
        stopped = time.monotonic()
        await asyncio.wait_for(b_wins, timeout=30)
        assert time.monotonic() - stopped >= 2.0  # the whole lease, on B's own clock
        with pytest.raises(Lost) as lost:
            await a.renew()
        assert lost.value.reason == "conflict"
        assert await b.holder() == "b"
        await b.renew()
        await b.release()
        assert await b.holder() is None
        await a.close()
        await b.close()

    asyncio.run(scenario())
    assert set(followed) == {"a"}


def test_release_clears_the_holder_and_the_next_takes_over_at_once(
    api: tuple[str, FakeApiServer], token_file: Path
) -> None:
    """Release writes an empty holderIdentity: the follower's next read takes the Lease; on
    a 30 s lease, within half of it (waiting the lease out would take all of it; no
    tighter time is asserted, a loaded machine is slow, not wrong)."""
    url, _ = api

    async def scenario() -> None:
        a = engine(url, token_file, "a", "release", lease=30.0)
        b = engine(url, token_file, "b", "release", lease=30.0)
        await a.campaign(lambda holder: None)
        b_wins = asyncio.ensure_future(b.campaign(lambda holder: None))
        await asyncio.sleep(0.5)
        released = time.monotonic()
        await a.release()
        await asyncio.wait_for(b_wins, timeout=15)
        assert time.monotonic() - released < 15.0  # renew_every (0.2 s), not the lease
        await a.release()  # nothing held: nothing sent
        lease = b.observed
        assert lease is not None and lease["spec"]["leaseTransitions"] == 1
        await b.release()
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_two_candidates_racing_for_a_free_lease_get_one_winner(
    api: tuple[str, FakeApiServer], token_file: Path
) -> None:
    """Both see no Lease and create it at once: the API server (etcd's transaction) lets
    one create it; the other follows it."""
    url, _ = api
    followed: list[str | None] = []

    async def scenario() -> None:
        a = engine(url, token_file, "a", "race", lease=30.0)
        b = engine(url, token_file, "b", "race", lease=30.0)
        tasks = [asyncio.ensure_future(e.campaign(followed.append)) for e in (a, b)]
        done, pending = await asyncio.wait(tasks, timeout=10, return_when="FIRST_COMPLETED")
        assert len(done) == 1
        await asyncio.sleep(0.5)
        assert all(not t.done() for t in pending)
        for t in pending:
            t.cancel()
        winner = a if tasks[0] in done else b
        assert await winner.holder() == winner.identity
        await winner.release()
        await a.close()
        await b.close()

    asyncio.run(scenario())
    assert followed and len(set(followed)) == 1


def test_a_refused_token_is_an_engine_error_naming_no_token(
    api: tuple[str, FakeApiServer], tmp_path: Path
) -> None:
    """401 from the API server: EngineError with its Status message, never the token."""
    url, _ = api
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")

    async def scenario() -> None:
        e = engine(url, wrong, "a", "auth")
        with pytest.raises(EngineError, match="HTTP 401") as refused:
            await e.campaign(lambda holder: None)
        assert "not-the-token" not in str(refused.value)
        with pytest.raises(EngineError, match="HTTP 401"):
            await e.holder()
        wrong.unlink()
        with pytest.raises(EngineError, match="token_file"):
            await e.holder()
        await e.close()

    asyncio.run(scenario())


def mock_engine(handler: Any) -> KubernetesEngine:
    return KubernetesEngine(
        api_url="https://k8s.test",
        namespace="ns",
        token_file=Path("/dev/null"),
        name="n",
        identity="me",
        lease_seconds=4,
        renew_every=1,
        transport=httpx.MockTransport(handler),
    )


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, text="Internal Server Error"),
        httpx.Response(403, json={"kind": "Status", "message": "forbidden: leases"}),
        httpx.Response(200, json=[1]),
    ],
)
def test_unusable_answers_are_engine_errors(answer: httpx.Response) -> None:
    """Not JSON, a refusal, a non-object: EngineError, for campaign and holder alike."""

    async def scenario() -> None:
        e = mock_engine(lambda request: answer)
        with pytest.raises(EngineError):
            await e.campaign(lambda holder: None)
        with pytest.raises(EngineError):
            await e.holder()
        await e.close()

    asyncio.run(scenario())


def test_refusals_of_create_and_update_are_engine_errors() -> None:
    """A 403 on create or on the takeover PUT is an EngineError; on a renewal too."""
    answers = {"GET": httpx.Response(404, json={"kind": "Status"})}

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.get(request.method, httpx.Response(403, json={"message": "forbidden"}))

    async def scenario() -> None:
        e = mock_engine(handler)
        with pytest.raises(EngineError, match="POST lease: HTTP 403"):
            await e.campaign(lambda holder: None)
        answers["GET"] = httpx.Response(200, json={"metadata": {}, "spec": {}})
        with pytest.raises(EngineError, match="PUT lease: HTTP 403"):
            await e.campaign(lambda holder: None)
        with pytest.raises(EngineError, match="PUT lease: HTTP 403"):
            await e.renew()
        await e.release()  # the observed record is not ours: nothing is sent
        assert e.observed is not None
        e.observed["spec"] = {"holderIdentity": "me"}
        with pytest.raises(EngineError, match="PUT lease: HTTP 403"):
            await e.release()
        with pytest.raises(Lost):
            await e.renew()  # released: nothing observed any more
        answers["GET"] = httpx.Response(503, json={"message": "etcd down"})
        with pytest.raises(EngineError, match="etcd down"):
            await e.holder()
        await e.close()

    asyncio.run(scenario())


def test_service_account_defaults(tmp_path: Path) -> None:
    """In a pod: the API server from KUBERNETES_SERVICE_HOST/PORT; given keys win; a
    namespace that cannot be found is an EngineError naming the key."""
    import certifi

    ca = Path(certifi.where())
    settings = KubernetesSettings(namespace="ns", token_file=tmp_path / "t", ca_file=ca)
    built = KubernetesEngine.from_settings(
        settings,
        name="n",
        identity="me",
        lease_seconds=15,
        renew_every=2,
        environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"},
    )
    assert built.url == "https://10.0.0.1:6443/apis/coordination.k8s.io/v1/namespaces/ns/leases"
    assert built.token_file == tmp_path / "t"
    asyncio.run(built.close())
    ipv6 = KubernetesEngine.from_settings(
        KubernetesSettings(namespace="ns", ca_file=ca),
        name="n",
        identity="me",
        lease_seconds=15,
        renew_every=2,
        environ={"KUBERNETES_SERVICE_HOST": "fd00::1"},
    )
    assert ipv6.url.startswith("https://[fd00::1]:443/")
    asyncio.run(ipv6.close())
    given = KubernetesEngine.from_settings(
        KubernetesSettings(namespace="ns", api_url="http://127.0.0.1:1"),
        name="n",
        identity="me",
        lease_seconds=15,
        renew_every=2,
        environ={},
    )
    assert given.url.startswith("http://127.0.0.1:1/")
    asyncio.run(given.close())
    with pytest.raises(EngineError, match=r"leader\.kubernetes\.namespace"):
        KubernetesEngine.from_settings(
            KubernetesSettings(), name="n", identity="me", lease_seconds=15, renew_every=2
        )
    bad_ca = tmp_path / "ca.crt"
    bad_ca.write_text("not a certificate")
    with pytest.raises(EngineError, match="ca_file"):
        KubernetesEngine.from_settings(
            KubernetesSettings(namespace="ns", ca_file=bad_ca),
            name="n",
            identity="me",
            lease_seconds=15,
            renew_every=2,
            environ={},
        )


def test_a_follower_tries_every_renew_every_however_slow_the_answers() -> None:
    """Each GET answers 0.4 s late (an injected monotonic clock): the follower waits the
    rest of renew_every (0.6 s), not renew_every after the answer, so a released Lease
    is seen within renew_every of its release however loaded the API server is."""
    now = [0.0]
    naps: list[float] = []
    gets = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        now[0] += 0.4  # the answer comes 0.4 s after the request
        if request.method == "PUT":
            return httpx.Response(200, json=json.loads(request.content))
        gets[0] += 1
        holder = "other" if gets[0] < 3 else ""  # released before the third try
        spec = {"holderIdentity": holder, "leaseDurationSeconds": 4, "renewTime": "x"}
        return httpx.Response(
            200, json={"metadata": {"resourceVersion": str(gets[0])}, "spec": spec}
        )

    async def nap(seconds: float) -> None:
        naps.append(round(seconds, 6))
        now[0] += seconds

    e = KubernetesEngine(
        api_url="https://k8s.test",
        namespace="ns",
        token_file=Path("/dev/null"),
        name="n",
        identity="me",
        lease_seconds=4,
        renew_every=1,
        monotonic=lambda: now[0],
        transport=httpx.MockTransport(handler),
        sleep=nap,
    )

    async def scenario() -> tuple[float, float]:
        try:
            return await e.campaign(lambda holder: None)
        finally:
            await e.close()

    sent_at, ttl = asyncio.run(scenario())
    assert naps == [0.6, 0.6]  # renew_every less the 0.4 s the answer took
    assert (sent_at, ttl) == (2.4, 4.0)  # tries at 0, 1 and 2 s; its PUT sent at 2.4 s
