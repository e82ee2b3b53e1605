"""Where the configuration comes from, and errors that name files and errnos as operators search."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sweeper.errors import ConfigError, os_reason
from sweeper.settings import DEFAULT_CONFIG_PATH, load_settings
from tests.e2e import environment, sweeper
from tests.fakes import TOKEN

ENV_ONLY = {"SWEEPER_API__BASE_URL": "https://env.example.test", "SWEEPER_API__TOKEN": TOKEN}


def toml(path: Path, host: str) -> Path:
    path.write_text(f'[api]\nbase_url = "https://{host}"\ntoken = "{TOKEN}"\n')
    path.chmod(0o600)
    return path


def base_url(**kwargs: object) -> str:
    settings, _ = load_settings(**kwargs)  # type: ignore[arg-type]
    return settings.api.base_url


def test_config_flag_wins_over_the_variable_and_the_default(tmp_path: Path) -> None:
    """--config, then SWEEPER_CONFIG, then the default file: the first given is read."""
    flag, variable = toml(tmp_path / "flag.toml", "flag.test"), toml(tmp_path / "v.toml", "v.test")
    default = toml(tmp_path / "default.toml", "default.test")
    env = {"SWEEPER_CONFIG": str(variable)}
    assert base_url(config_path=flag, environ=env, default_path=default) == "https://flag.test"
    assert base_url(environ=env, default_path=default) == "https://v.test"
    assert base_url(environ={}, default_path=default) == "https://default.test"


def test_without_any_file_the_environment_alone_configures(tmp_path: Path) -> None:
    """No --config, no SWEEPER_CONFIG, no default file: the environment is the configuration."""
    assert base_url(environ=ENV_ONLY, default_path=tmp_path / "absent.toml") == (
        "https://env.example.test"
    )


def test_nothing_found_says_where_a_file_is_looked_for(tmp_path: Path) -> None:
    """The error names --config, SWEEPER_CONFIG and the default path, then what is missing."""
    default = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, default_path=default)
    message = str(caught.value)
    assert "no configuration file was found" in message
    assert f"--config PATH, then $SWEEPER_CONFIG, then {default}" in message
    assert "api.base_url: required" in message or "api: required" in message


def test_the_default_path_is_etc_sweeper() -> None:
    """The default file is the one the systemd units and the README install."""
    assert Path("/etc/sweeper/config.toml") == DEFAULT_CONFIG_PATH


def test_cli_without_configuration_says_where_it_looked() -> None:
    """`sweeper check-config` with nothing configured: exit 78 naming where files are looked for."""
    if DEFAULT_CONFIG_PATH.exists():
        pytest.skip(f"{DEFAULT_CONFIG_PATH} exists on this machine")
    result = sweeper("check-config", env=environment())
    assert result.code == 78
    (event,) = result.named("config.invalid")
    assert "/etc/sweeper/config.toml" in event["error"]
    assert "SWEEPER_CONFIG" in event["error"]


def test_a_relative_config_path_is_named_absolute(tmp_path: Path) -> None:
    """--config config.toml that does not exist: the error shows the path it resolved to."""
    result = sweeper("--config", "config.toml", "check-config", env=environment())
    assert result.code == 78
    expected = Path(os.getcwd(), "config.toml")
    assert f"--config: {expected} does not exist" in result.named("config.invalid")[0]["error"]


@pytest.mark.parametrize(
    "url",
    [
        "https://p.example.test/api",
        "https://p.example.test/api/data-platform/",
        "https://p.example.test/?x=1",
        "https://p.example.test/#frag",
        "https://p.example.test?",  # an empty query: every path would become the query
        "https://p.example.test:8443/?",
        "https://p.example.test#",
    ],
)
def test_a_base_url_with_a_path_is_refused(url: str) -> None:
    """api.base_url is scheme and host only: a path, a query or a fragment (even an empty
    one, after which httpx would send every API path as the query) fails check-config."""
    env = {**ENV_ONLY, "SWEEPER_API__BASE_URL": url}
    with pytest.raises(ConfigError, match=r"api.base_url: must be scheme and host only"):
        load_settings(environ=env, default_path=Path("/nonexistent/config.toml"))


@pytest.mark.parametrize("url", ["https://p.example.test", "https://p.example.test:8443/"])
def test_a_base_url_without_a_path_is_accepted(url: str) -> None:
    """A trailing slash is no path."""
    env = {**ENV_ONLY, "SWEEPER_API__BASE_URL": url}
    assert base_url(environ=env, default_path=Path("/nonexistent/config.toml")) == url


def test_errnos_are_named() -> None:
    """An OSError reads `Permission denied (EACCES)`: the text and the name to search for."""
    exc = PermissionError(errno.EACCES, "Permission denied")
    assert os_reason(exc) == "Permission denied (EACCES)"
    assert os_reason(OSError("odd")) == "OSError"


def test_an_unreadable_config_names_its_errno(tmp_path: Path) -> None:
    """A directory given as --config: the resolved path and the errno by name."""
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, environ={})
    assert f"--config: {tmp_path.resolve()} cannot be read" in str(caught.value)
    assert "(EISDIR)" in str(caught.value)
