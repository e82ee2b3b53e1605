from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.e2e import Platform, start_platform
from tests.helpers import FakeClock, FakePlatform


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
