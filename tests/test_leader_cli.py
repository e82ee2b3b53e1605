"""`run --once` and `mark` under `[leader]`, through the real CLI, against a REAL etcd."""

from __future__ import annotations

from pathlib import Path

from tests.e2e import wait_for
from tests.etcd import Etcd, free_port
from tests.leader_harness import Copy, Stand, due_steps, leader_of, stop_all


def on_etcd(url: str, name: str) -> str:
    return f'backend = "etcd"\nname = "{name}"\n[leader.etcd]\nendpoints = ["{url}"]\n'


def test_once_takes_the_lease_sweeps_and_releases_it(
    etcd: Etcd, fresh: Stand, tmp_path: Path
) -> None:
    """Nobody holds the lease: `run --once` takes it, sweeps (exit 0), releases it."""
    ids = due_steps(fresh, 3, first_in=-5, every=1, stale=30)  # already dead
    once = Copy("a", tmp_path, fresh, on_etcd(etcd.url, "once-free"), ("run", "--once"))
    assert once.start().wait(timeout=60) == 0
    assert [e["event"] for e in once.events() if str(e["event"]).startswith("leader.")] == [
        "leader.acquired",
        "leader.lost",
        "leader.released",
    ]
    assert all(fresh.state.steps[i]["status"] == "FAILED" for i in ids)
    (body,) = {p.body["errorDetails"]["sweptBy"] for p in fresh.state.patches}
    assert body == "a"  # leader.identity, not the host


def test_once_exits_75_naming_the_holder(etcd: Etcd, fresh: Stand, tmp_path: Path) -> None:
    """A daemon holds the lease: `run --once` waits at most one lease, sends the platform
    nothing, and exits 75 naming the holder."""
    due_steps(fresh, 2, first_in=-5, every=1, stale=30)
    config = on_etcd(etcd.url, "once-held")
    daemon = Copy("a", tmp_path, fresh, config).start()
    try:
        leader_of([daemon])
        wait_for(lambda: len(fresh.state.patches) == 2, timeout=60)
        once = Copy("b", tmp_path, fresh, config, ("run", "--once"))
        assert once.start().wait(timeout=60) == 75
        (aborted,) = once.events("sweep.aborted")
        assert aborted["result"] == "unavailable"
        assert aborted["holder"] == "a" and "a" in aborted["error"]
        assert fresh.requests("b") == []
    finally:
        stop_all([daemon])


def test_mark_ignores_the_election(fresh: Stand, tmp_path: Path) -> None:
    """`mark` with [leader] pointing at an etcd that is not there marks all the same."""
    due_steps(fresh, 1, first_in=-5, every=1, stale=30)
    nowhere = on_etcd(f"http://127.0.0.1:{free_port()}", "mark")
    step = fresh.state.steps["dead-000"]
    mark = Copy(
        "c", tmp_path, fresh, nowhere, ("mark", "dead-000", "--org", step["organizationId"])
    )
    assert mark.start().wait(timeout=60) == 0
    assert fresh.state.steps["dead-000"]["status"] == "FAILED"
    assert not [e for e in mark.events() if str(e["event"]).startswith("leader.")]


def test_kubernetes_outside_a_pod_without_a_namespace_is_a_config_error(
    fresh: Stand, tmp_path: Path
) -> None:
    """backend = kubernetes with no namespace to be found: exit 78, daemon and once alike."""
    config = (
        f'backend = "kubernetes"\n[leader.kubernetes]\napi_url = "http://127.0.0.1:{free_port()}"\n'
    )
    for name, argv in (("a", ("run",)), ("b", ("run", "--once"))):
        copy = Copy(name, tmp_path, fresh, config, argv)
        assert copy.start().wait(timeout=60) == 78
        (invalid,) = copy.events("config.invalid")
        assert "leader.kubernetes.namespace" in str(invalid["error"])


def test_metrics_and_readiness_of_a_leader_and_a_follower(
    etcd: Etcd, fresh: Stand, tmp_path: Path
) -> None:
    """Both copies are ready (/readyz 200); sweeper_leader is 1 on the holder, 0 on the
    follower; each names itself in sweeper_leader_identity_info."""
    import httpx

    ports = {"a": free_port(), "b": free_port()}
    copies = [
        Copy(
            name,
            tmp_path,
            fresh,
            on_etcd(etcd.url, "metrics") + f'[server]\nlisten = "127.0.0.1:{ports[name]}"\n',
        ).start()
        for name in ("a", "b")
    ]
    try:
        leader = leader_of(copies)
        follower = next(c for c in copies if c is not leader)
        wait_for(lambda: bool(follower.events("leader.following")), timeout=60)

        def scrape(copy: Copy) -> str:
            return httpx.get(f"http://127.0.0.1:{ports[copy.name]}/metrics").text

        wait_for(lambda: "sweeper_leader 1.0" in scrape(leader), timeout=30)
        assert "sweeper_leader 0.0" in scrape(follower)
        assert f'sweeper_leader_identity_info{{identity="{follower.name}"}} 1.0' in scrape(follower)
        assert 'sweeper_lease_renewals_total{result="ok"}' in scrape(leader)
        for copy in copies:
            ready = httpx.get(f"http://127.0.0.1:{ports[copy.name]}/readyz")
            assert ready.status_code == 200, copy.name
    finally:
        stop_all(copies)
