"""The etcd engine against a REAL etcd (started by the tests), and its answers' edge cases."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sweeper.leader import EngineError, Lost
from sweeper.leader_etcd import EtcdEngine
from sweeper.leader_settings import EtcdSettings
from tests.etcd import Etcd, free_port


def engine(
    endpoints: list[str],
    identity: str,
    name: str,
    lease: float = 2.0,
    renew: float = 0.5,
    **kwargs: Any,
) -> EtcdEngine:
    return EtcdEngine(
        EtcdSettings(endpoints=endpoints),
        name=name,
        identity=identity,
        lease_seconds=lease,
        renew_every=renew,
        **kwargs,
    )


async def wait_done(task: asyncio.Future[Any], seconds: float = 30) -> Any:
    return await asyncio.wait_for(task, timeout=seconds)


def test_one_candidate_leads_the_other_follows_then_takes_over_on_release(
    etcd: Etcd,
) -> None:
    """A is elected; B waits and sees A; A revokes; B is elected at once: on a 30 s lease,
    within half of it (waiting the lease out would take all of it; no tighter time is
    asserted, a loaded machine is slow, not wrong)."""
    followed: list[str | None] = []

    async def scenario() -> None:
        a = engine([etcd.url], "a", "handover", lease=30.0)
        b = engine([etcd.url], "b", "handover", lease=30.0)
        sent_at, ttl = await a.campaign(lambda holder: None)
        assert ttl == 30.0 and sent_at <= time.monotonic()
        assert await a.holder() == "a"
        seen = asyncio.Event()

        def follow(holder: str | None) -> None:
            followed.append(holder)
            seen.set()

        b_wins = asyncio.ensure_future(b.campaign(follow))
        await asyncio.wait_for(seen.wait(), timeout=30)  # B says whom it follows
        assert not b_wins.done()
        await a.renew()
        released = time.monotonic()
        await a.release()
        await wait_done(b_wins, seconds=15)
        assert time.monotonic() - released < 15.0
        assert await b.holder() == "b"
        await b.renew()
        await b.release()
        assert await b.holder() is None
        await a.close()
        await b.close()

    asyncio.run(scenario())
    assert followed[0] == "a"


def test_a_holder_that_stops_renewing_loses_to_the_next(etcd: Etcd) -> None:
    """A stops renewing (as if paused): etcd expires its lease, B is elected, and A's next
    renewal is Lost(expired)."""

    async def scenario() -> None:
        a = engine([etcd.url], "a", "expiry")
        b = engine([etcd.url], "b", "expiry")
        await a.campaign(lambda holder: None)
        stopped = time.monotonic()
        await wait_done(asyncio.ensure_future(b.campaign(lambda holder: None)))
        waited = time.monotonic() - stopped
        assert 1.0 < waited < 10.0  # about the 2 s lease, never before it could end
        with pytest.raises(Lost) as lost:
            await a.renew()
        assert lost.value.reason == "expired"
        assert await a.holder() == "b"
        await b.release()
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_holder_whose_key_is_deleted_loses_by_conflict(etcd: Etcd) -> None:
    """Someone deletes the leader's key by hand: the next renewal says conflict."""

    async def scenario() -> None:
        a = engine([etcd.url], "a", "conflict")
        await a.campaign(lambda holder: None)
        assert a.leader_key is not None
        async with httpx.AsyncClient() as http:
            await http.post(etcd.url + "/v3/kv/deleterange", json={"key": a.leader_key["key"]})
        with pytest.raises(Lost) as lost:
            await a.renew()
        assert lost.value.reason == "conflict"
        await a.release()
        await a.close()

    asyncio.run(scenario())


def test_a_dead_endpoint_is_skipped_and_all_dead_is_an_engine_error(etcd: Etcd) -> None:
    """Endpoints are tried in turn; none reachable is an EngineError naming no secret."""

    async def scenario() -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        a = engine([dead, etcd.url], "a", "endpoints")
        await a.campaign(lambda holder: None)
        assert a.endpoints[a.current] == etcd.url
        await a.release()
        await a.close()
        nobody = engine([dead], "a", "endpoints")
        with pytest.raises(EngineError, match="ConnectError"):
            await nobody.campaign(lambda holder: None)
        with pytest.raises(EngineError):
            await nobody.holder()
        await nobody.close()

    asyncio.run(scenario())


def test_a_candidate_whose_lease_expired_campaigns_with_a_new_one(etcd: Etcd) -> None:
    """A lease left from before that etcd no longer knows: a new lease is granted."""

    async def scenario() -> None:
        a = engine([etcd.url], "a", "stale-lease")
        a.lease_id = "12345"  # etcd never granted it
        await a.campaign(lambda holder: None)
        assert a.lease_id != "12345"
        await a.release()
        await a.release()  # nothing held: nothing sent
        await a.close()

    asyncio.run(scenario())


# -- answers etcd should not give, and auth, over MockTransport ----------------------


def mock_engine(handler: Any, **settings: Any) -> EtcdEngine:
    return EtcdEngine(
        EtcdSettings(endpoints=["http://etcd.test:2379"], **settings),
        name="n",
        identity="me",
        lease_seconds=4,
        renew_every=1,
        transport=httpx.MockTransport(handler),
    )


def test_authenticates_once_and_again_when_the_token_expires(tmp_path: Path) -> None:
    """username + password_file: a token from /v3/auth/authenticate, renewed on code 16;
    an error never carries the password."""
    password = tmp_path / "password"
    password.write_text("hunter2-secret\n")
    seen: list[tuple[str, str | None]] = []
    expired = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v3/auth/authenticate":
            assert json.loads(request.content) == {"name": "sweeper", "password": "hunter2-secret"}
            return httpx.Response(200, json={"token": f"tok{len(seen)}"})
        if expired[0] and request.headers.get("authorization") == "tok1":
            expired[0] = False
            return httpx.Response(401, json={"error": "invalid auth token", "code": 16})
        value = base64.b64encode(b"leader-x").decode()
        return httpx.Response(200, json={"kv": {"key": "azE=", "value": value}})

    async def scenario() -> str | None:
        e = mock_engine(handler, username="sweeper", password_file=password)
        holder = await e.holder()
        await e.close()
        return holder

    assert asyncio.run(scenario()) == "leader-x"
    assert [p for p, _ in seen] == [
        "/v3/auth/authenticate",
        "/v3/election/leader",
        "/v3/auth/authenticate",
        "/v3/election/leader",
    ]


def test_refused_authentication_is_an_engine_error_without_the_password(tmp_path: Path) -> None:
    """A refused password: EngineError with etcd's message, not the password."""
    password = tmp_path / "password"
    password.write_text("hunter2-secret")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"message": "authentication failed", "code": 3})

    async def scenario() -> None:
        e = mock_engine(handler, username="sweeper", password_file=password)
        with pytest.raises(EngineError) as refused:
            await e.holder()
        assert "hunter2" not in str(refused.value)
        assert "authentication failed" in str(refused.value)
        password.unlink()
        e.auth_token = None
        with pytest.raises(EngineError, match="password_file: cannot be read"):
            await e.holder()
        await e.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(200, text="<html>"), "not JSON"),
        (httpx.Response(200, text="[1]"), "not an object"),
        (httpx.Response(503, text=""), "not JSON"),
        (httpx.Response(500, json={"error": {"message": "boom", "code": 14}}), "boom"),
    ],
)
def test_unusable_answers_are_engine_errors(answer: httpx.Response, message: str) -> None:
    """Whatever etcd (or a proxy before it) answers that is not its JSON is an EngineError."""

    async def scenario() -> None:
        e = mock_engine(lambda request: answer)
        with pytest.raises(EngineError, match=message):
            await e.holder()
        with pytest.raises(EngineError):
            await e.campaign(lambda holder: None)
        await e.close()

    asyncio.run(scenario())


def test_a_campaign_answer_without_a_leader_is_an_engine_error() -> None:
    """An elected answer that names no key cannot be confirmed: EngineError."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/lease/grant":
            return httpx.Response(200, json={"ID": "7", "TTL": "4"})
        return httpx.Response(200, json={"header": {}})

    async def scenario() -> None:
        e = mock_engine(handler)
        with pytest.raises(EngineError, match="without a leader key"):
            await e.campaign(lambda holder: None)
        e.lease_id = None
        with pytest.raises(Lost):
            await e.renew()
        await e.close()

    asyncio.run(scenario())


def test_tls_context_from_the_ca_file() -> None:
    """No TLS keys: the system's trust; a CA file: a context trusting it."""
    import ssl

    import certifi

    from sweeper.leader_etcd import tls_context

    assert tls_context(None, None, None) is True
    context = tls_context(Path(certifi.where()), None, None)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
