"""The stand-in platform over real loopback HTTP: validation, auth, paging, faults."""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sweeper.devserver.app import Faults
from sweeper.devserver.server import RunningServer, serve_in_thread
from sweeper.devserver.state import MAX_RETRY_COUNT, PlatformState
from tests.fakes import TOKEN, record

STEPS = "/api/data-platform/workflow-run-steps"


@pytest.fixture(name="shared_server", scope="module")
def _shared_server() -> Iterator[RunningServer]:
    with serve_in_thread(PlatformState(), TOKEN) as running:
        yield running


@pytest.fixture(name="server")
def _server(shared_server: RunningServer) -> RunningServer:
    shared_server.state.reset()
    return shared_server


@pytest.fixture(name="http")
def _http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


def add_running(server: RunningServer, step_id: str = "s1", org: str = "org-a") -> None:
    now = datetime.now(UTC)
    server.state.add(record(step_id, org=org, now=now, started=timedelta(hours=3)))


VALID = {"organizationId": "org-a", "status": "FAILED", "completedAt": "2026-05-23T06:00:08.000Z"}


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"organizationId": None}, "organizationId"),
        ({"organizationId": ""}, "organizationId"),
        ({"organizationId": 5}, "organizationId"),
        ({"completedAt": "2026-05-23T06:00:08.000+00:00"}, "completedAt"),
        ({"completedAt": "2026-05-23 06:00:08Z"}, "completedAt"),
        ({"completedAt": "2025-02-29T06:00:00Z"}, "completedAt"),  # not a leap year
        ({"completedAt": "1900-02-29T06:00:00Z"}, "completedAt"),  # century, not leap
        ({"completedAt": "2026-04-31T06:00:00Z"}, "completedAt"),  # April has 30 days
        ({"completedAt": "2026-06-31T06:00:00Z"}, "completedAt"),
        ({"completedAt": "2026-05-23T24:00:00Z"}, "completedAt"),
        ({"completedAt": "2026-05-23T06:60Z"}, "completedAt"),
        ({"completedAt": 1700000000}, "completedAt"),
        ({"errorCode": "X" * 65}, "errorCode"),
        ({"errorCode": 42}, "errorCode"),
        ({"status": "DONE"}, "status"),
        ({"status": "failed"}, "status"),
        ({"retryCount": -1}, "retryCount"),
        ({"retryCount": MAX_RETRY_COUNT + 1}, "retryCount"),
        ({"retryCount": 1.5}, "retryCount"),
        ({"retryCount": True}, "retryCount"),
        ({"errorDetails": "text"}, "errorDetails"),
        ({"errorDetails": [1]}, "errorDetails"),
        ({"output": "text"}, "output"),
        ({"errorMessage": {"a": 1}}, "errorMessage"),
        ({"logs": 5}, "logs"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_every_body_rule_is_enforced(
    server: RunningServer, http: httpx.Client, change: dict[str, Any], rule: str
) -> None:
    """Each broken body is a 400 naming the broken field, and changes nothing."""
    add_running(server)
    body = {**VALID, **change}
    if change.get("organizationId", 0) is None:
        del body["organizationId"]
    answer = http.patch(f"{STEPS}/s1", json=body)
    assert answer.status_code == 400
    payload = answer.json()
    assert payload["success"] is False
    assert payload["error"]["message"].startswith(rule)
    assert server.state.steps["s1"]["status"] == "RUNNING"


@pytest.mark.parametrize(
    "completed_at",
    [
        "2024-02-29T06:00:00Z",
        "2000-02-29T06:00:00.123456Z",
        "2026-12-31T23:59:59.999Z",
        "2026-04-30T00:00Z",  # seconds are optional
        "2026-05-23T06:00:08.000Z",
    ],
)
def test_valid_completed_at_forms_are_accepted(
    server: RunningServer, http: httpx.Client, completed_at: str
) -> None:
    """Leap days, optional seconds and fractions pass the pattern."""
    add_running(server)
    answer = http.patch(f"{STEPS}/s1", json={**VALID, "completedAt": completed_at})
    assert answer.status_code == 200, answer.text


def test_non_json_body_is_refused(server: RunningServer, http: httpx.Client) -> None:
    """A body that is not JSON is a 400."""
    add_running(server)
    answer = http.patch(
        f"{STEPS}/s1", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"bearer {TOKEN}x"])
def test_auth_is_required(server: RunningServer, header: str | None) -> None:
    """Without the exact bearer token every route answers 401."""
    add_running(server)
    headers = {"Authorization": header} if header else {}
    with httpx.Client(base_url=server.base_url, headers=headers) as client:
        assert client.get(STEPS).status_code == 401
        assert client.patch(f"{STEPS}/s1", json=VALID).status_code == 401
    assert server.state.steps["s1"]["status"] == "RUNNING"


def test_unknown_step_or_wrong_org_is_404(server: RunningServer, http: httpx.Client) -> None:
    """Tenant isolation: a step in another organization does not exist for you."""
    add_running(server, org="org-a")
    assert http.patch(f"{STEPS}/nope", json=VALID).status_code == 404
    assert http.patch(f"{STEPS}/s1", json={**VALID, "organizationId": "org-b"}).status_code == 404
    assert http.get(f"{STEPS}/s1", params={"organizationId": "org-b"}).status_code == 404
    assert http.get(f"{STEPS}/s1", params={"organizationId": "org-a"}).status_code == 200


def test_null_clears_and_absent_keeps(server: RunningServer, http: httpx.Client) -> None:
    """A field sent as null is cleared; a field left out is kept."""
    add_running(server)
    server.state.steps["s1"].update(logs="line 1", output={"rows": 3}, errorCode="OLD")
    answer = http.patch(f"{STEPS}/s1", json={"organizationId": "org-a", "errorCode": None})
    data = answer.json()["data"]
    assert "errorCode" not in data
    assert data["logs"] == "line 1" and data["output"] == {"rows": 3}
    assert data["status"] == "RUNNING"


def test_duration_is_computed_and_step_leaves_listing(
    server: RunningServer, http: httpx.Client
) -> None:
    """durationMs = completedAt - startedAt; a finished step is no longer listed RUNNING."""
    server.state.add(
        record("s1", now=datetime(2026, 5, 23, 6, 0, 1, tzinfo=UTC), started=timedelta(0))
    )
    answer = http.patch(f"{STEPS}/s1", json={**VALID, "completedAt": "2026-05-23T06:00:08.000Z"})
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "data": answer.json()["data"]}
    assert answer.json()["data"]["durationMs"] == 7000
    assert http.get(STEPS, params={"limit": 10}).json()["data"] == []


def test_paging_visits_every_running_step_once(server: RunningServer, http: httpx.Client) -> None:
    """limit + nextCursor walk the whole listing; startedBefore filters."""
    server.state.seed(zombies=23, live=7, seed=3)
    before = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"status": "RUNNING", "limit": 4, "startedBefore": before}
        if cursor:
            params["cursor"] = cursor
        page = http.get(STEPS, params=params).json()
        pages += 1
        seen += [s["stepId"] for s in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(server.state.steps)
    assert pages == 8
    old = http.get(STEPS, params={"limit": 1000, "startedBefore": "2000-01-01T00:00:00Z"})
    assert old.json() == {"success": True, "data": [], "nextCursor": None}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "ten"},
        {"cursor": "garbage!"},
        {"startedBefore": "yesterday"},
        {"status": "BOGUS"},
    ],
)
def test_bad_listing_parameters_are_400(http: httpx.Client, params: dict[str, Any]) -> None:
    """limit 1..1000, a real cursor, a UTC timestamp, a known status."""
    assert http.get(STEPS, params=params).status_code == 400


def test_step_id_with_slash_is_one_segment(server: RunningServer, http: httpx.Client) -> None:
    """An encoded / in the id addresses the step; a real / is another route."""
    add_running(server, step_id="a/b ü")
    assert (
        http.get(f"{STEPS}/a%2Fb%20%C3%BC", params={"organizationId": "org-a"}).status_code == 200
    )
    assert http.get(f"{STEPS}/a/b", params={"organizationId": "org-a"}).status_code == 404


def test_every_answer_has_a_date_shifted_by_the_skew() -> None:
    """--clock-skew moves the Date header by that much."""
    with serve_in_thread(
        PlatformState(), TOKEN, faults=Faults(clock_skew=timedelta(minutes=-10))
    ) as server:
        answer = httpx.get(server.base_url + STEPS, headers={"Authorization": "Bearer x"})
    date = email.utils.parsedate_to_datetime(answer.headers["date"])
    skew = date - datetime.now(UTC)
    assert timedelta(minutes=-11) < skew < timedelta(minutes=-9)


def test_error_rate_answers_503_or_429_with_retry_after() -> None:
    """--error-rate 1 fails every request, half 503, half 429 with Retry-After."""
    faults = Faults(error_rate=1.0, seed=1)
    with serve_in_thread(PlatformState(), TOKEN, faults=faults) as server:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answers = [httpx.get(server.base_url + STEPS, headers=auth) for _ in range(40)]
    statuses = {a.status_code for a in answers}
    assert statuses == {429, 503}
    assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 429)


def test_latency_delays_answers() -> None:
    """--latency holds every answer back (measured loosely: at least the delay)."""
    import time

    with serve_in_thread(
        PlatformState(), TOKEN, faults=Faults(latency=timedelta(milliseconds=50))
    ) as server:
        started = time.perf_counter()
        httpx.get(server.base_url + STEPS, headers={"Authorization": f"Bearer {TOKEN}"})
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.05


def test_seed_is_reproducible_and_varied() -> None:
    """The same seed gives the same steps; zombies vary in their signs of life."""
    a, b = PlatformState(), PlatformState()
    a.seed(25, 10, seed=7)
    b.seed(25, 10, seed=7)
    assert [s["organizationId"] for s in a.steps.values()] == [
        s["organizationId"] for s in b.steps.values()
    ]
    zombies = [s for k, s in a.steps.items() if k.startswith("zombie")]
    assert len(zombies) == 25 and len(a.steps) == 35
    assert any("updatedAt" in z for z in zombies)
    assert any("lastHeartbeatAt" in z for z in zombies)
    assert any("retryCount" in z for z in zombies)
    assert any(z.get("workflowRunStatus") == "CANCELLED" for z in zombies)
    assert len({s["organizationId"] for s in a.steps.values()}) >= 2
