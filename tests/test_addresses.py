"""Which hosts are this machine's loopback (plain http allowed, never through a proxy)."""

from __future__ import annotations

import pytest

from sweeper.addresses import is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("[::ffff:127.0.0.2]", True),
        ("10.0.0.1", False),
        ("::2", False),
        ("::ffff:10.0.0.1", False),
        ("localhost.example", False),
        ("platform.example", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
