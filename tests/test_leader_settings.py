"""`[leader]`: defaults, the identity, every bad input, and reload (restart-only keys)."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest

from sweeper.app import sweep_config
from sweeper.errors import ConfigError
from sweeper.settings import load_settings

BASE = '[api]\nbase_url = "https://platform.example.test"\ntoken = "a-token-value"\n'
ETCD = '[leader]\nbackend = "etcd"\n[leader.etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'


def etcd(leader_keys: str = "") -> str:
    """[leader] on etcd, with more [leader] keys."""
    return ETCD.replace('backend = "etcd"\n', 'backend = "etcd"\n' + leader_keys)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ=environ or {})
    return str(caught.value)


def test_defaults_mean_no_election(tmp_path: Path) -> None:
    """No [leader]: no backend, the spec's defaults, no identity, sweptBy is the host."""
    settings, _ = load_settings(write(tmp_path, BASE), environ={})
    leader = settings.leader
    assert (leader.backend, leader.name, leader.identity) == (None, "sweeper", None)
    assert (leader.lease, leader.renew_every) == (timedelta(seconds=15), timedelta(seconds=2))
    assert not leader.enabled
    assert sweep_config(settings).host == socket.gethostname()


def test_identity_is_pod_name_else_host_and_pid(tmp_path: Path) -> None:
    """$POD_NAME names the copy (and errorDetails.sweptBy); else host name and pid."""
    path = write(tmp_path, BASE + ETCD)
    settings, _ = load_settings(path, environ={"POD_NAME": "sweeper-7d9-abc"})
    assert settings.leader.identity == "sweeper-7d9-abc"
    assert sweep_config(settings).host == "sweeper-7d9-abc"
    settings, _ = load_settings(path, environ={})
    assert settings.leader.identity == f"{socket.gethostname()}-{os.getpid()}"
    text = BASE + etcd('identity = "copy-a"\n')
    settings, _ = load_settings(write(tmp_path, text), environ={"POD_NAME": "x"})
    assert settings.leader.identity == "copy-a"


def test_environment_sets_leader_keys(tmp_path: Path) -> None:
    """SWEEPER_LEADER__BACKEND, and a sub-table as JSON (SWEEPER_LEADER__ETCD)."""
    env = {
        "SWEEPER_LEADER__BACKEND": "etcd",
        "SWEEPER_LEADER__LEASE": "30s",
        "SWEEPER_LEADER__ETCD": '{"endpoints": ["https://etcd-1:2379"]}',
    }
    settings, _ = load_settings(write(tmp_path, BASE), environ=env)
    assert settings.leader.backend == "etcd"
    assert settings.leader.lease == timedelta(seconds=30)
    assert settings.leader.etcd.endpoints == ["https://etcd-1:2379"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[leader]\nbackend = "etcd"\n', "leader.etcd.endpoints: required"),
        ('[leader]\nbackend = "consul"\n', "leader.backend"),
        ('[leader]\nlease = "2s"\nrenew_every = "2s"\n', "renew_every must be shorter"),
        ('[leader]\nlease = "0s"\n', "leader.lease"),
        ('[leader]\nname = "Has Spaces"\n', "leader.name"),
        ("[leader]\nbogus = 1\n", "leader.bogus: unknown key"),
        ('[leader.etcd]\nendpoints = ["ftp://x"]\n', "must be http(s)://host"),
        ('[leader.etcd]\nendpoints = ["http://"]\n', "must be http(s)://host"),
        ('[leader.etcd]\nendpoints = ["http://[::1"]\n', "not a URL"),
        ('[leader.etcd]\nca_file = "/nonexistent/ca.pem"\n', "ca_file: /nonexistent/ca.pem"),
        ('[leader.etcd]\nusername = "u"\n', "username and password_file go together"),
        ('[leader.kubernetes]\napi_url = "nope"\n', "leader.kubernetes.api_url"),
        ("[leader.kubernetes]\nwhat = 1\n", "leader.kubernetes.what: unknown key"),
    ],
)
def test_bad_leader_keys_are_named(tmp_path: Path, extra: str, expected: str) -> None:
    """Every wrong [leader] key is a configuration error that names it."""
    assert expected in error_of(tmp_path, BASE + extra)


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    """A client certificate needs its key (and the other way round)."""
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    text = BASE + f'[leader.etcd]\ncert_file = "{cert}"\n'
    assert "cert_file and key_file go together" in error_of(tmp_path, text)


def test_a_lease_too_short_for_api_timeout_is_refused(tmp_path: Path) -> None:
    """lease must exceed api.timeout + 1 s + renew_every, or no moment would leave room
    to start a request; the rule is relative (1 s timeouts and 1 h ones alike)."""
    text = BASE + etcd('lease = "12s"\n')  # 10s + 1s + 2s = 13s > 12s
    assert "leader.lease: must be longer than api.timeout + 1s" in error_of(tmp_path, text)
    fast = BASE.replace("[api]\n", '[api]\ntimeout = "1s"\n')
    fast += etcd('lease = "4s"\nrenew_every = "1s"\n')
    settings, _ = load_settings(write(tmp_path, fast), environ={})
    assert settings.leader.lease == timedelta(seconds=4)
    slow = BASE.replace("[api]\n", '[api]\ntimeout = "1h"\n') + etcd('lease = "1h"\n')
    assert "leader.lease" in error_of(tmp_path, slow)


def test_leader_keys_are_restart_only(tmp_path: Path, logs: list[dict[str, object]]) -> None:
    """A reload that changes leader.* warns like server.listen and keeps the election's
    settings in force (the elector was built at start)."""
    from sweeper.daemon import Daemon
    from sweeper.logs import Redactor

    path = write(tmp_path, BASE + etcd('identity = "copy-a"\n'))
    settings, _ = load_settings(path, environ={})

    async def reload() -> Daemon:
        daemon = Daemon(settings, Redactor(), config_path=path, overrides={}, environ={})
        path.write_text(BASE.replace("a-token", "b-token") + etcd('identity = "copy-b"\n'))
        assert daemon.reload("SIGHUP")
        return daemon

    daemon = asyncio.run(reload())
    warnings = [str(e["detail"]) for e in logs if e["event"] == "config.warning"]
    assert "leader.identity changes only with a restart" in warnings
    assert daemon.pending is not None
    assert daemon.pending.leader.identity == "copy-a"
    assert daemon.pending.token() == "b-token-value"
