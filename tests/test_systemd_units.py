"""The systemd units as files: what a dynamic user can write, and what the timer sets."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
ONCE_UNIT = ROOT / "deploy" / "systemd" / "sweeper-once.service"


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_daemon_config_serves_metrics() -> None:
    """The example configuration the README installs for the daemon has server.listen on:
    a daemon installed as written is scraped, and its alerts can tell it is alive."""
    example = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))
    assert example["server"]["listen"] == "0.0.0.0:9108"


def test_the_one_shot_unit_writes_metrics_a_dynamic_user_can_write() -> None:
    """--metrics-file in a RuntimeDirectory= the service owns, readable by node_exporter
    and kept between runs; not in node_exporter's root-owned directory."""
    unit = unit_settings(ONCE_UNIT)
    (exec_start,) = unit["ExecStart"]
    assert exec_start.endswith("--metrics-file /run/sweeper/sweeper.prom")
    assert unit["DynamicUser"] == ["yes"]
    assert unit["RuntimeDirectory"] == ["sweeper"]
    assert unit["RuntimeDirectoryMode"] == ["0755"]
    assert unit["RuntimeDirectoryPreserve"] == ["yes"]
    assert unit["UMask"] == ["0022"]  # the file is readable by node_exporter
    assert "ReadWritePaths" not in unit


def test_the_timer_sets_no_useless_persistent() -> None:
    """Persistent= affects OnCalendar= only; this timer is monotonic."""
    timer = unit_settings(ROOT / "deploy" / "systemd" / "sweeper.timer")
    assert "Persistent" not in timer
    assert "OnCalendar" not in timer
    assert timer["OnUnitActiveSec"] == ["10min"]
