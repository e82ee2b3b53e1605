"""Where the configuration comes from: the TOML file under environment variables under
flags, merged key by key, then the checks that span sections and the token.

`load_settings` is the only way in; it raises ConfigError with one message that
names every wrong key and never echoes a value (the token could be one).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from sweeper.durations import format_duration
from sweeper.envvars import environment_values
from sweeper.errors import ConfigError, os_reason
from sweeper.leader_settings import check_lease_room, default_identity
from sweeper.outages import GAP_FRACTION
from sweeper.settings.models import Settings
from sweeper.settings.problems import describe
from sweeper.tokens import absolute, resolve_token, warn_if_shared

ENV_PREFIX = "SWEEPER_"


def check_watch_rate(settings: Settings) -> str | None:
    """Why api.max_rate keeps outage grace from watching the platform, or None.

    The daemon samples the platform at least every sixteenth of the smallest limit
    (outages.GAP_FRACTION: a silence longer than an eighth is unwatched time, all
    forgiven). Requests spaced wider than that by the rate limit would make every
    interval unwatched, and no dead step would ever be marked. Relative to the limits,
    as every rule of outage grace."""
    rate = settings.api.max_rate
    limits = settings.sweep.build_rules().limits
    if not rate or not limits:
        return None
    smallest = min(limits).total_seconds()
    needed = 2 * GAP_FRACTION / smallest
    if rate >= needed:
        return None
    return (
        f"api.max_rate: {rate:g} per second spaces requests wider than a sixteenth of the"
        f" smallest stale_after ({format_duration(min(limits))}), so outage grace could not"
        f" watch the platform between them; set it to at least {needed:g}, or 0 (no limit)"
    )


#: Where a configuration file is looked for when neither --config nor SWEEPER_CONFIG names one.
DEFAULT_CONFIG_PATH = Path("/etc/sweeper/config.toml")


def config_path_of(
    given: Path | None, env: Mapping[str, str], default: Path | None = None
) -> Path | None:
    """The configuration file: --config, else SWEEPER_CONFIG, else the default when it exists.

    None: no file at all, the environment alone configures.
    """
    if given is not None:
        return given
    if env.get(f"{ENV_PREFIX}CONFIG"):
        return Path(env[f"{ENV_PREFIX}CONFIG"])
    default = DEFAULT_CONFIG_PATH if default is None else default
    return default if default.is_file() else None


def _where_files_are_looked_for(default: Path | None) -> str:
    default = DEFAULT_CONFIG_PATH if default is None else default
    return (
        f"no configuration file was found (looked for --config PATH, then "
        f"${ENV_PREFIX}CONFIG, then {default}) and the environment alone is not enough"
    )


def load_settings(
    config_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    default_path: Path | None = None,
) -> tuple[Settings, list[str]]:
    """Build the settings from file, environment and flags; also return warnings to log.

    Raises ConfigError naming every wrong key and variable at once. Nothing here
    calls the platform.
    """
    env = os.environ if environ is None else environ
    config_path = config_path_of(config_path, env, default_path)
    warnings: list[str] = []
    file_data = _read_config_file(config_path) if config_path else {}
    sections = {name: field.annotation for name, field in Settings.model_fields.items()}
    env_data, origins, problems = environment_values(env, ENV_PREFIX, sections)
    flags = overrides or {}
    # Flags over environment over the TOML file, key by key within a section.
    merged = _merge(_merge(file_data, env_data), flags)

    settings: Settings | None = None
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        problems.extend(describe(exc, origins, flags))
    if settings is not None:
        if (room := check_lease_room(settings.leader, settings.api.timeout)) is not None:
            problems.append(room)
        if (watch := check_watch_rate(settings)) is not None:
            problems.append(watch)
        if settings.leader.enabled and settings.leader.identity is None:
            settings.leader.identity = default_identity(env)
    token: tuple[str, Path | None] | None = None
    if (given := _token_given(settings, merged.get("api"))) is not None:
        try:
            token = resolve_token(*given, env, warnings)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems or settings is None or token is None:
        if config_path is None and any(": required" in problem for problem in problems):
            problems.insert(0, _where_files_are_looked_for(default_path))
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    file_api = file_data.get("api")
    if config_path is not None and isinstance(file_api, dict) and "token" in file_api:
        # Only a configuration file that holds a secret has to be private.
        warn_if_shared(config_path, "config file (it holds api.token)", warnings)
    settings.use_token(*token)
    return settings, warnings


def _token_given(
    settings: Settings | None, api: object
) -> tuple[SecretStr | None, Path | None] | None:
    """The token and token file to resolve: as validated, or, when the rest is wrong, as
    written (to say what is wrong with the token too, in the same message); None when
    they are not even text."""
    if settings is not None:
        return settings.api.token, settings.api.token_file
    if isinstance(api, dict) and _plain(api.get("token")) and _plain(api.get("token_file")):
        inline, path = api.get("token"), api.get("token_file")
        return None if inline is None else SecretStr(inline), None if not path else Path(path)
    return None


def _plain(value: object) -> bool:
    return value is None or (isinstance(value, str) and "\x00" not in value)


def _merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """Sections of `high` over those of `low`, key by key."""
    merged = dict(low)
    for section, values in high.items():
        below = merged.get(section)
        if isinstance(values, dict) and isinstance(below, dict):
            merged[section] = {**below, **values}
        else:
            merged[section] = values
    return merged


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"--config: {absolute(path)} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"--config: {absolute(path)} cannot be read ({os_reason(exc)})") from None
    except ValueError:  # a NUL byte in the path
        raise ConfigError("--config: not a usable file name") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: {absolute(path)} is not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"--config: {absolute(path)} is nested too deeply to read") from None
