from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.e2e import Platform, start_platform
from tests.etcd import Etcd
from tests.fakes import FakeClock, FakePlatform
from tests.leader_harness import Stand, start_stand


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="platform")
def _platform(clock: FakeClock) -> FakePlatform:
    return FakePlatform(clock)


@pytest.fixture(name="shared_platform", scope="session")
def _shared_platform() -> Iterator[Platform]:
    """One stand-in platform on loopback for the end-to-end modules (reset per test)."""
    platform = start_platform()
    yield platform
    platform.server.stop()


@pytest.fixture(name="stand_in")
def _stand_in(shared_platform: Platform) -> Platform:
    """The shared stand-in on loopback, reset: the end-to-end tests' platform."""
    shared_platform.reset()
    return shared_platform


@pytest.fixture(name="etcd", scope="module")
def _etcd(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Etcd]:
    """A real etcd per test module (the leader-election tests), in its own temp dir."""
    server = Etcd(tmp_path_factory.mktemp(request.module.__name__) / "data").start()
    yield server
    server.stop()


@pytest.fixture(name="stand", scope="module")
def _stand() -> Iterator[Stand]:
    """A stand-in platform that tells three copies apart by their tokens."""
    stand = start_stand(3)
    yield stand
    stand.server.stop()


@pytest.fixture(name="fresh")
def _fresh(stand: Stand) -> Stand:
    stand.state.reset()
    stand.seen.clear()
    return stand


@pytest.fixture(name="logs")
def _logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's SWEEPER_* variables or systemd credentials."""
    import os

    for name in list(os.environ):
        if name.startswith("SWEEPER_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)
