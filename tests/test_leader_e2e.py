"""Two and three real daemons under one election on a REAL etcd, against the stand-in.

kill -9, SIGSTOP for twice the lease then SIGCONT, SIGTERM, and etcd stopped and
restarted; after each, the properties of `leader_harness.check_properties` hold:
no two copies list within the same second, no step is written by two copies, no
copy sends anything between losing the lease and taking it again, no dead step
is missed; and another copy takes over and lists at once (kill -9 and SIGSTOP: when the
lease runs out; SIGTERM: when the leader releases it, long before its lease could run out).
How fast (lease + renew + 2 s, 2 s on SIGTERM) is a figure bench/leader.py measures and
prints: here each takeover is an event waited for with a generous bound, and the bound
only tells the mechanisms apart (a loaded machine is slow, not wrong).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e import wait_for
from tests.etcd import Etcd
from tests.k8s_fake import serve_fake_api
from tests.leader_harness import (
    LEASE,
    Copy,
    Stand,
    check_properties,
    due_steps,
    first_listing_after,
    leader_of,
    observer_lag,
    stop_all,
    wait_all_marked,
)

K8S_TOKEN = "fake-service-account-token"
#: The copies list every 60 s (leader_harness.Copy): a takeover seen within half of that
#: listed on taking the lease, not at its next interval.
TAKEOVER_BOUND = 30.0
#: The SIGTERM test's lease: a handover seen within TAKEOVER_BOUND came from the release,
#: since waiting the lease out would take twice as long.
HANDOVER_LEASE = 2 * TAKEOVER_BOUND


@pytest.fixture(name="fake_api", scope="module")
def _fake_api(etcd: Etcd) -> Iterator[str]:
    server, _ = serve_fake_api(etcd.url, K8S_TOKEN)
    yield server.base_url
    server.stop()


@pytest.fixture(name="engine", params=["etcd", "kubernetes"])
def _engine(request: pytest.FixtureRequest, etcd: Etcd, tmp_path: Path) -> Callable[[str], str]:
    """The [leader] keys of one backend: etcd's election, or a Lease on the API fake
    (which keeps it in the same real etcd)."""
    if request.param == "etcd":
        return lambda name: (
            f'backend = "etcd"\nname = "{name}"\n[leader.etcd]\nendpoints = ["{etcd.url}"]\n'
        )
    api_url = request.getfixturevalue("fake_api")
    token = tmp_path / "sa-token"
    token.write_text(K8S_TOKEN)
    return lambda name: (
        f'backend = "kubernetes"\nname = "{name}"\n[leader.kubernetes]\nnamespace = "sweeper"\n'
        f'api_url = "{api_url}"\ntoken_file = "{token}"\n'
    )


def copies_of(
    n: int, tmp_path: Path, stand: Stand, config: str, lease: float = LEASE
) -> list[Copy]:
    return [Copy(chr(97 + i), tmp_path, stand, config, lease=lease).start() for i in range(n)]


def quiet_since_the_last_listing(stand: Stand, copies: list[Copy]) -> None:
    """Wait until 1.2 s have passed since the last listing any copy SENT (its own stamp,
    the clock check_properties compares) or the stand-in recorded: a loaded stand-in
    records a listing late, and a copy stamps it before it leaves."""

    def quiet() -> bool:
        sent = [s.at for c in copies for s in c.sends() if s.listing]
        seen = [listing.at for listing in stand.listings()]
        return time.time() - max(sent + seen, default=0.0) > 1.2

    wait_for(quiet, timeout=30)


def settled(copies: list[Copy]) -> Copy:
    """Wait until one copy leads and every other says whom it follows."""
    leader = leader_of(copies)
    others = [c for c in copies if c is not leader]
    wait_for(lambda: all(c.events("leader.following") for c in others), timeout=60)
    return leader


def test_kill_9_of_the_leader_fails_over_within_the_limit(
    engine: Callable[[str], str], fresh: Stand, tmp_path: Path
) -> None:
    """Two copies; kill -9 the leader: the other takes the lease when it runs out and
    lists at once."""
    ids = due_steps(fresh, 12, first_in=6, every=1, stale=30)
    copies = copies_of(2, tmp_path, fresh, engine("kill9"))
    try:
        leader = settled(copies)
        (follower,) = [c for c in copies if c is not leader]
        wait_for(lambda: len(fresh.state.patches) >= 2, timeout=60)
        assert all(s.copy == leader.name for s in fresh.requests())  # the follower: nothing
        killed = leader.signal(signal.SIGKILL)
        first_listing_after(copies, killed, but_not=leader.name, timeout=TAKEOVER_BOUND)
        wait_all_marked(fresh, ids)
        check_properties(fresh, copies, ids)
        (holder,) = follower.events("leader.following")[:1]
        assert holder["holder"] == leader.name
    finally:
        stop_all(copies)


def test_a_paused_leader_sends_nothing_after_sigcont(
    engine: Callable[[str], str], fresh: Stand, tmp_path: Path
) -> None:
    """SIGSTOP the leader for twice the lease: the other takes over; after SIGCONT the
    paused copy sends nothing (it finds its lease lost and follows)."""
    # Silent 14 s of 30 at the start: within the last half limit before a copy's first
    # answer, which outage grace does not forgive, so they stay due a second apart (a
    # burst of writes in flight at SIGSTOP would go out at SIGCONT, checked before).
    ids = due_steps(fresh, 12, first_in=16, every=1, stale=30)
    copies = copies_of(2, tmp_path, fresh, engine("pause"))
    try:
        leader = settled(copies)
        (other,) = [c for c in copies if c is not leader]
        wait_for(lambda: len(fresh.state.patches) >= 1, timeout=60)
        paused = leader.signal(signal.SIGSTOP)
        first_listing_after(copies, paused, but_not=leader.name, timeout=TAKEOVER_BOUND)
        remaining = 2 * LEASE - (time.time() - paused)
        if remaining > 0:
            # Held paused for twice the lease: waiting on nothing but the clock here is the
            # scenario itself (the pause's length), not a stand-in for an event.
            time.sleep(remaining)
        resumed = leader.signal(signal.SIGCONT)
        # expired (found run out on waking), or unreachable / conflict when a renewal was
        # in flight at the pause (its deadline passed, or the other copy's write won).
        wait_for(lambda: any(t > resumed for t in leader.times("leader.lost")), timeout=30)
        wait_all_marked(fresh, ids)
        # As it sent them (its own stamps, the wall clock of this machine like `resumed`).
        after = [s for s in leader.sends() if s.at > resumed]
        assert after == [], f"the paused copy sent {after[:3]} after SIGCONT"
        assert other.times("leader.acquired")
        check_properties(fresh, copies, ids)
    finally:
        stop_all(copies)


def test_sigterm_hands_over_by_release_three_copies(
    engine: Callable[[str], str], fresh: Stand, tmp_path: Path
) -> None:
    """Three copies; SIGTERM the leader, then the next: each stopped leader released its
    lease (leader.released) and exited 0, and another copy took it and listed long before
    the lease could have run out."""
    ids = due_steps(fresh, 14, first_in=5, every=1, stale=30)
    copies = copies_of(3, tmp_path, fresh, engine("term"), lease=HANDOVER_LEASE)
    try:
        first = settled(copies)
        wait_for(lambda: len(fresh.state.patches) >= 1, timeout=60)
        # Start the handover at least a second after the leader's last listing, so that
        # "no two copies list within the same second" tests the handover, not the timing.
        quiet_since_the_last_listing(fresh, copies)
        stopped = first.signal(signal.SIGTERM)
        assert first.wait() == 0
        assert first.events("leader.released")
        first_listing_after(copies, stopped, but_not=first.name, timeout=TAKEOVER_BOUND)
        second = leader_of([c for c in copies if c is not first], after=stopped)
        quiet_since_the_last_listing(fresh, copies)
        stopped = second.signal(signal.SIGTERM)
        assert second.wait() == 0
        first_listing_after(copies, stopped, but_not=second.name, timeout=TAKEOVER_BOUND)
        wait_all_marked(fresh, ids)
        check_properties(fresh, copies, ids)
    finally:
        stop_all(copies)


def test_etcd_down_stops_the_leader_by_its_lease_and_nobody_leads_until_back(
    engine: Callable[[str], str], etcd: Etcd, fresh: Stand, tmp_path: Path
) -> None:
    """etcd stopped: the leader stops when its lease runs out (leader.lost unreachable or
    expired) and no copy sends anything while etcd is down; restarted: one leads again."""
    copies = copies_of(2, tmp_path, fresh, engine("outage"))
    try:
        leader = settled(copies)
        wait_for(lambda: bool(fresh.listings()), timeout=60)
        etcd.stop()
        down = time.time()
        wait_for(lambda: bool(leader.times("leader.lost")), timeout=30)
        (lost_at,) = leader.times("leader.lost")
        assert lost_at - down <= LEASE + 1.0, "the leader held on past its lease"
        # While etcd is down, nothing reaches the platform after the lease ran out.
        ids = due_steps(fresh, 3, first_in=1, every=0.5, stale=30)
        wait_for(lambda: time.time() - down > 2 * LEASE, timeout=30)
        # As sent (each copy's stamps; wall clock, comparable across copies here): the
        # leader's own order against its leader.lost is checked on its monotonic clock
        # by check_properties; this says that no copy took over while etcd was down.
        during = [s for c in copies for s in c.sends() if s.at > lost_at]
        assert not [t for c in copies for t in c.times("leader.acquired") if t > down]
        story = {
            c.name: [(e["timestamp"], e["event"], e.get("reason")) for e in c.events()
                     if str(e["event"]).startswith(("leader.", "sweep.started"))]
            for c in copies
        }  # fmt: skip
        assert during == [], (
            f"sent while etcd was down (leader {leader.name}, lost at {lost_at}):"
            f" {during[:3]}; events: {story}; lag of the stand-in: {observer_lag(fresh, copies)}"
        )
        # Taken before the start: a copy may take the lease before start() returns.
        back = time.time()
        etcd.start()
        leader_of(copies, after=back)
        # The new leader's listing finds the steps that died during the outage.
        wait_all_marked(fresh, ids)
        check_properties(fresh, copies, ids)
    finally:
        if etcd.proc is None:
            etcd.start()
        stop_all(copies)
