"""check-config's probe of server.listen: what it asks the resolver, what it binds, and
what it says when nothing binds (the socket calls are faked where a host cannot be)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from sweeper.settings import load_settings
from tests.test_settings import BASE, config_error, write

V4 = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("192.0.2.1", 0))
LOCAL = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 0))


def listen(host: str) -> str:
    return BASE + f'[server]\nlisten = "{host}:9108"\n'


class Probes:
    """A fake resolver and socket: records every call, binds only 127.0.0.1."""

    def __init__(self, found: list[Any], fail: OSError | None = None) -> None:
        self.found = found
        self.fail = fail
        self.asked: list[tuple[Any, ...]] = []
        self.opened: list[tuple[Any, ...]] = []
        self.bound: list[Any] = []

    def getaddrinfo(self, host: str, port: Any, **kwargs: Any) -> list[Any]:
        self.asked.append((host, port, kwargs))
        return self.found

    def socket(self, *args: Any) -> Any:
        self.opened.append(args)
        probes = self

        class Probe:
            def __enter__(self) -> Probe:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def bind(self, address: Any) -> None:
                probes.bound.append(address)
                if probes.fail is not None:
                    raise probes.fail
                if address[0] != "127.0.0.1":
                    raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))

        return Probe()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)
        monkeypatch.setattr(socket, "socket", self.socket)


def test_the_probe_is_a_passive_tcp_socket_on_port_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolved as the server resolves it (TCP, passive), bound on port 0 with the address's
    own IPv6 flow and scope, on the socket kind the resolver named."""
    v6 = (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", 0, 7, 3))
    probes = Probes([V4, v6, LOCAL])
    probes.install(monkeypatch)
    load_settings(write(tmp_path, listen("[::1]")))
    assert probes.asked == [("::1", None, {"type": socket.SOCK_STREAM, "flags": socket.AI_PASSIVE})]
    assert probes.opened == [entry[:3] for entry in (V4, v6, LOCAL)]
    assert probes.bound == [("192.0.2.1", 0), ("::1", 0, 7, 3), ("127.0.0.1", 0)]


def test_one_bindable_address_is_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose first address is not this machine's but a later one is: accepted."""
    Probes([V4, LOCAL]).install(monkeypatch)
    settings, _ = load_settings(write(tmp_path, listen("both.example.test")))
    assert settings.server.listen == "both.example.test:9108"


def test_the_refusal_gives_the_first_bind_error(tmp_path: Path) -> None:
    """An address that is not this machine's: the system's reason, as it says it."""
    reason = os.strerror(errno.EADDRNOTAVAIL)
    message = config_error(tmp_path, listen("192.0.2.1"))
    assert f"server.listen: cannot listen on '192.0.2.1': {reason}" in message


def test_an_error_without_a_reason_is_named_by_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Probes([LOCAL], fail=PermissionError()).install(monkeypatch)
    message = config_error(tmp_path, listen("127.0.0.1"))
    assert "cannot listen on '127.0.0.1': PermissionError" in message


def test_a_name_with_no_address_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver answered, with nothing: refused, not accepted by default."""
    Probes([]).install(monkeypatch)
    message = config_error(tmp_path, listen("empty.example.test"))
    assert "cannot listen on 'empty.example.test': no address" in message


@pytest.mark.parametrize("found", [[], [V4]])
def test_a_long_host_name_is_shown_cut_at_64_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, found: list[Any]
) -> None:
    host = "a" * 60 + "." + "b" * 60 + ".example.test"
    if found:
        Probes(found).install(monkeypatch)
    message = config_error(tmp_path, listen(host))
    assert repr(host[:64]) in message
    assert host[:65] not in message


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]"])
def test_plain_http_is_allowed_to_an_ipv4_mapped_loopback(tmp_path: Path, host: str) -> None:
    """::ffff:127.0.0.1 is this host's loopback too (Python 3.11 says it is not)."""
    text = BASE.replace("https://platform.example.test", f"http://{host}:8700")
    settings, _ = load_settings(write(tmp_path, text))
    assert settings.api.base_url.startswith("http://[::ffff:")
