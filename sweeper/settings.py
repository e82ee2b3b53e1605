"""Configuration: TOML file under environment variables under flags, validated once.

`load_settings` is the only way in; it raises ConfigError with one message that
names every wrong key and never echoes a value (the token could be one).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import string
import tomllib
import urllib.parse
import zoneinfo
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sweeper.durations import format_duration, parse_duration, parse_positive_duration
from sweeper.envvars import environment_values
from sweeper.errors import ConfigError, os_reason
from sweeper.leader_settings import LeaderSettings, check_lease_room, default_identity
from sweeper.model import MATCHABLE_FIELDS, StepStatus
from sweeper.outages import GAP_FRACTION
from sweeper.policy import (
    DEFAULT_ERROR_CODE,
    DEFAULT_ERROR_MESSAGE,
    DEFAULT_RULE_NAME,
    DEFAULT_RUNAWAY_ERROR_CODE,
    DEFAULT_RUNAWAY_MESSAGE,
    MESSAGE_FIELDS,
    RUNAWAY_MESSAGE_FIELDS,
    Rule,
    Rules,
)
from sweeper.tokens import absolute, resolve_token, warn_if_shared

ENV_PREFIX = "SWEEPER_"
REDACTED = "**********"


class KeyProblem(ValueError):
    """A check that spans a section names the keys it is about."""

    def __init__(self, keys: tuple[str, ...], reason: str) -> None:
        super().__init__(f"{', '.join(keys)}: {reason}")
        self.keys = keys
        self.reason = reason


def _is_never(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "never"


def _parse_stale_after(value: object) -> timedelta:
    if _is_never(value):
        raise ValueError('"never" is allowed only in a rule ([[sweep.rules]] stale_after)')
    return parse_positive_duration(value)


def _parse_rule_stale_after(value: object) -> timedelta | Literal["inherit"] | None:
    """A rule's own limit: a duration, `never` (None: exempt), or `inherit` from [sweep]."""
    if _is_never(value):
        return None
    if value == "inherit":
        return "inherit"
    return parse_positive_duration(value)


def _parse_max_runtime(value: object) -> timedelta | None:
    """`never` (None: no step is a runaway) or a duration longer than zero."""
    return None if value is None or _is_never(value) else parse_positive_duration(value)


def _print_rule_stale_after(value: timedelta | str | None) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    return "never" if value is None else value


def _choice(*allowed: str, fold: bool = False) -> BeforeValidator:
    """One of `allowed`, or an error that lists them (and never repeats the value)."""

    def check(value: object) -> str:
        text = value.lower() if fold and isinstance(value, str) else value
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return str(text)

    return BeforeValidator(check)


#: A duration from 0s (where zero has a meaning: no jitter, no wait) to 3650d.
Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
#: A duration where zero would mean nothing sensible: longer than 0s, at most 3650d.
PositiveDuration = Annotated[
    timedelta,
    BeforeValidator(parse_positive_duration),
    PlainSerializer(format_duration, return_type=str),
]
StaleAfter = Annotated[
    timedelta,
    BeforeValidator(_parse_stale_after),
    PlainSerializer(format_duration, return_type=str),
]
RuleStaleAfter = Annotated[
    timedelta | Literal["inherit"] | None,
    BeforeValidator(_parse_rule_stale_after),
    PlainSerializer(_print_rule_stale_after, return_type=str),
]
MaxRuntime = Annotated[
    timedelta | None,
    BeforeValidator(_parse_max_runtime),
    PlainSerializer(_print_rule_stale_after, return_type=str),
]
#: A rule's max_runtime: a duration, `never`, or `inherit` (from [sweep], the default).
RuleMaxRuntime = Annotated[
    timedelta | Literal["inherit"] | None,
    BeforeValidator(lambda v: "inherit" if v == "inherit" else _parse_max_runtime(v)),
    PlainSerializer(_print_rule_stale_after, return_type=str),
]
FINAL_STATUSES = (StepStatus.FAILED.value, StepStatus.CANCELLED.value)
FinalStatus = Annotated[Literal[StepStatus.FAILED, StepStatus.CANCELLED], _choice(*FINAL_STATUSES)]
ErrorCode = Annotated[str, Field(min_length=1, max_length=64)]

#: Slower than one request a minute is no rate limit but a stall.
MIN_RATE = 1 / 60

_STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)


def check_template(template: str, names: tuple[str, ...] = MESSAGE_FIELDS) -> str:
    """Only the plain placeholders: no attribute, index, conversion or format spec.

    Anything more could fail or blow up (`{idle:>999999999}`) when a step is marked.
    """
    allowed = ", ".join("{" + f + "}" for f in names)
    try:
        fields = [
            (name, conversion, spec)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise ValueError(f"not a message template ({exc}); write {{{{ for a brace") from None
    for name, conversion, spec in fields:
        if name not in names or conversion or spec:
            raise ValueError(f"bad placeholder; only {allowed} may be used")
    return template


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    # ::ffff:127.0.0.1 is this host's loopback too (Python 3.11 says it is not).
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


#: A DNS host name (RFC 1123 labels, an optional root dot) or an IPv4 address.
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
    re.ASCII,
)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class ApiSettings(BaseModel):
    model_config = _STRICT

    base_url: str
    token: SecretStr | None = None
    token_file: Path | None = None
    ca_bundle: Path | None = None
    timeout: PositiveDuration = timedelta(seconds=10)
    max_concurrency: int = Field(default=8, ge=1, le=1024)
    max_rate: float = Field(default=20, ge=0, le=1_000_000, allow_inf_nan=False)

    @field_validator("max_rate")
    @classmethod
    def _check_rate(cls, value: float) -> float:
        if 0 < value < MIN_RATE:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_RATE} requests per second")
        return value

    max_attempts: int = Field(default=5, ge=1, le=100)
    max_retry_after: Duration = timedelta(seconds=60)
    retry_backoff: Duration = timedelta(seconds=0.5)
    retry_backoff_max: Duration = timedelta(seconds=30)
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _check_url(self) -> ApiSettings:
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL:
            raise KeyProblem(("base_url",), "not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise KeyProblem(("base_url",), "must be http(s)://host[:port]")
        if url.userinfo or "@" in urllib.parse.urlsplit(self.base_url).netloc:
            # The bearer token authenticates; a password in the URL would be printed
            # with the settings and refused by the transport at every run. Never echoed.
            raise KeyProblem(
                ("base_url",), "must not hold user info (user:password@): the token authenticates"
            )
        if url.port is not None and not 0 < url.port < 65536:
            raise KeyProblem(("base_url",), "the port must be 1 to 65535")
        if url.path not in ("", "/") or any(c in self.base_url for c in "?#"):
            # The API's paths are absolute: a path here would be dropped, not prefixed.
            raise KeyProblem(
                ("base_url",), "must be scheme and host only (http(s)://host[:port]), no path"
            )
        if url.scheme == "http" and not self.allow_insecure_http and not is_loopback(url.host):
            raise KeyProblem(
                ("base_url",),
                "plain http:// is refused except to a loopback host; "
                "use https:// or set api.allow_insecure_http = true",
            )
        if self.ca_bundle is not None:
            if not self.ca_bundle.is_file():
                raise KeyProblem(("ca_bundle",), f"{self.ca_bundle} is not a readable file")
            try:
                ssl.create_default_context(cafile=str(self.ca_bundle))
            except (ssl.SSLError, OSError, ValueError):
                raise KeyProblem(
                    ("ca_bundle",), f"{self.ca_bundle} holds no usable PEM certificate"
                ) from None
        return self


class ScheduleSettings(BaseModel):
    model_config = _STRICT

    interval: PositiveDuration | None = None
    cron: str | None = None
    timezone: str = "UTC"
    jitter: Duration = timedelta(0)
    #: Daemon only: mark each zombie the moment it crosses its limit, between listings.
    precise: bool = True

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError("not a known time zone") from None
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        # Checked in UTC: whether an expression parses, or ever fires, is the same in any zone.
        from sweeper.cron import cron_trigger  # loads APScheduler only when used

        if value is not None:
            try:
                cron_trigger(value, "UTC")
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleSettings:
        if self.interval is not None and self.cron is not None:
            raise KeyProblem(("interval", "cron"), "set at most one of them")
        return self

    @property
    def effective_interval(self) -> timedelta:
        return self.interval or timedelta(minutes=5)


class RuleSettings(BaseModel):
    model_config = _STRICT

    name: str = Field(min_length=1)
    match: dict[str, list[Annotated[str, Field(min_length=1)]]] = Field(default_factory=dict)
    stale_after: RuleStaleAfter = "inherit"
    status: FinalStatus | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    max_runtime: RuleMaxRuntime = "inherit"
    runaway_status: FinalStatus | None = None
    runaway_error_code: ErrorCode | None = None
    runaway_message: str | None = None

    @field_validator("match")
    @classmethod
    def _check_match(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, patterns in value.items():
            if key not in MATCHABLE_FIELDS:
                raise ValueError(
                    f"{key!r} is not a step field; use one of {list(MATCHABLE_FIELDS)}"
                )
            if not patterns:
                raise ValueError(f"{key}: give at least one pattern")
        return value

    @field_validator("error_message")
    @classmethod
    def _check_message(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value)

    @field_validator("runaway_message")
    @classmethod
    def _check_runaway_message(cls, value: str | None) -> str | None:
        return None if value is None else check_template(value, RUNAWAY_MESSAGE_FIELDS)


class SweepSettings(BaseModel):
    model_config = _STRICT

    stale_after: StaleAfter = timedelta(hours=2)
    status: FinalStatus = StepStatus.FAILED
    error_code: ErrorCode = DEFAULT_ERROR_CODE
    error_message: str = DEFAULT_ERROR_MESSAGE
    page_size: int = Field(default=200, ge=1, le=1000)
    max_steps: int = Field(default=500, ge=0)
    recheck: bool = True
    max_clock_skew: PositiveDuration = timedelta(minutes=2)
    deadline: PositiveDuration = timedelta(minutes=4)
    organizations: list[str] = Field(default_factory=list)
    exclude_organizations: list[str] = Field(default_factory=list)
    dry_run: bool = False
    max_runtime: MaxRuntime = None
    runaway_status: FinalStatus = StepStatus.CANCELLED
    runaway_error_code: ErrorCode = DEFAULT_RUNAWAY_ERROR_CODE
    runaway_message: str = DEFAULT_RUNAWAY_MESSAGE
    rules: list[RuleSettings] = Field(default_factory=list)

    @field_validator("error_message")
    @classmethod
    def _check_message(cls, value: str) -> str:
        return check_template(value)

    @field_validator("runaway_message")
    @classmethod
    def _check_runaway_message(cls, value: str) -> str:
        return check_template(value, RUNAWAY_MESSAGE_FIELDS)

    @model_validator(mode="after")
    def _runtime_not_below_staleness(self) -> SweepSettings:
        """A max_runtime shorter than the same rule's stale_after would mark every live
        step that outlives it; refused, naming both keys (as resolved for that rule)."""
        problems = []
        for index, r in enumerate(self.rules):
            limit = self.stale_after if r.stale_after == "inherit" else r.stale_after
            runtime = self.max_runtime if r.max_runtime == "inherit" else r.max_runtime
            if isinstance(limit, timedelta) and isinstance(runtime, timedelta) and runtime < limit:
                problems.append(
                    (
                        "max_runtime"
                        if r.max_runtime == "inherit"
                        else f"rules.{index}.max_runtime",
                        "stale_after"
                        if r.stale_after == "inherit"
                        else f"rules.{index}.stale_after",
                        r.name,
                    )
                )
        if self.max_runtime is not None and self.max_runtime < self.stale_after:
            problems.insert(0, ("max_runtime", "stale_after", DEFAULT_RULE_NAME))
        if problems:
            keys = tuple(dict.fromkeys(key for p in problems for key in p[:2]))
            names = ", ".join(repr(p[2]) for p in problems)
            raise KeyProblem(
                keys,
                f"max_runtime must not be shorter than stale_after (rule {names}): every "
                "live step that outlives it would be marked a runaway",
            )
        return self

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, value: list[RuleSettings]) -> list[RuleSettings]:
        names = [r.name for r in value]
        duplicates = sorted(
            {n for n in names if names.count(n) > 1} | ({DEFAULT_RULE_NAME} & set(names))
        )
        if duplicates:
            raise ValueError(
                f"rule names must be unique and not {DEFAULT_RULE_NAME!r}: {duplicates}"
            )
        return value

    def build_rules(self) -> Rules:
        default = Rule(
            name=DEFAULT_RULE_NAME,
            stale_after=self.stale_after,
            status=StepStatus(self.status),
            error_code=self.error_code,
            error_message=self.error_message,
            max_runtime=self.max_runtime,
            runaway_status=StepStatus(self.runaway_status),
            runaway_error_code=self.runaway_error_code,
            runaway_message=self.runaway_message,
        )
        overrides = tuple(
            Rule(
                name=r.name,
                stale_after=default.stale_after if r.stale_after == "inherit" else r.stale_after,
                status=StepStatus(r.status or default.status),
                error_code=r.error_code or default.error_code,
                error_message=r.error_message or default.error_message,
                match={k: tuple(v) for k, v in r.match.items()},
                max_runtime=default.max_runtime if r.max_runtime == "inherit" else r.max_runtime,
                runaway_status=StepStatus(r.runaway_status or default.runaway_status),
                runaway_error_code=r.runaway_error_code or default.runaway_error_code,
                runaway_message=r.runaway_message or default.runaway_message,
            )
            for r in self.rules
        )
        return Rules(overrides=overrides, default=default)


class LogSettings(BaseModel):
    model_config = _STRICT

    format: Annotated[Literal["json", "console", "auto"], _choice("json", "console", "auto")] = (
        "auto"
    )
    level: Annotated[
        Literal["debug", "info", "warning", "error"],
        _choice("debug", "info", "warning", "error", fold=True),
    ] = "info"


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


def _unbindable(host: str) -> str | None:
    """Why the ops server could not listen on this host, or None: a name that does not
    resolve, or an address that is not this machine's, fails at every start (exit 75, a
    restart loop), so check-config refuses it. Tried on port 0: the port itself may be
    busy for a moment, which a restart fixes; this never does."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return f"{host[:64]!r} does not resolve on this host"
    errors: list[str] = []
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((address[0], 0, *address[2:]))
        except OSError as exc:
            errors.append(exc.strerror or type(exc).__name__)
            continue
        return None
    return f"cannot listen on {host[:64]!r}: {errors[0] if errors else 'no address'}"


class ServerSettings(BaseModel):
    model_config = _STRICT

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        valid_port = port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536
        if not sep or not host or not valid_port:
            raise ValueError("must be host:port, e.g. 0.0.0.0:9108 or [::1]:9108")
        # An IPv6 address is bracketed, so that its last group is never read as the port.
        bracketed = host.startswith("[") and host.endswith("]") and _is_ipv6(host[1:-1])
        if not bracketed and any(c in host for c in ":[]"):
            raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:9108")
        if not bracketed and not _HOST_NAME.fullmatch(host):
            # getaddrinfo would fail at every start: a restart loop, not a running daemon.
            raise ValueError(f"not a host name or address: {host[:64]!r}")
        problem = _unbindable(host.removeprefix("[").removesuffix("]"))
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        assert self.listen is not None
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


class Settings(BaseSettings):
    """The whole configuration; build it with `load_settings`, never at import."""

    model_config = SettingsConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        validate_default=True,
    )

    api: ApiSettings
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    sweep: SweepSettings = Field(default_factory=SweepSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)

    #: The file the token came from (api.token_file or the systemd credential), if any.
    _token_path: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges file, environment (sweeper.envvars) and flags itself:
        # pydantic-settings would ignore a misspelled variable and crash on a plain list.
        return (init_settings,)

    def token(self) -> str:
        assert self.api.token is not None, "load_settings resolves the token"
        return self.api.token.get_secret_value()

    @property
    def token_path(self) -> Path | None:
        return self._token_path

    @property
    def token_source(self) -> str:
        """Where the token came from, for messages (never the token itself)."""
        if self._token_path is not None:
            return f"the file {absolute(self._token_path)}"
        return "api.token (in the configuration file or SWEEPER_API__TOKEN)"

    def redacted(self) -> dict[str, Any]:
        """The effective settings for display: secrets masked, durations spelled."""
        shown: dict[str, Any] = self.model_dump(mode="json")
        if shown["api"].get("token") is not None:
            shown["api"]["token"] = REDACTED
        # The values in force, not the keys as written: the default interval, and
        # what each rule takes from [sweep].
        if self.schedule.cron is None:
            shown["schedule"]["interval"] = format_duration(self.schedule.effective_interval)
        sweep = shown["sweep"]
        for rule in sweep["rules"]:
            for key in ("stale_after", "status", "error_code", "error_message"):
                if rule.get(key) in (None, "inherit"):
                    rule[key] = sweep[key]
        return shown


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
        problems.extend(_describe(exc, origins, flags))
    api = merged.get("api")
    token: tuple[str, Path | None] | None = None
    if settings is not None:
        if (room := check_lease_room(settings.leader, settings.api.timeout)) is not None:
            problems.append(room)
        if (watch := check_watch_rate(settings)) is not None:
            problems.append(watch)
        if settings.leader.enabled and settings.leader.identity is None:
            settings.leader.identity = default_identity(env)
        token = _token(settings.api.token, settings.api.token_file, env, warnings, problems)
    elif isinstance(api, dict) and _plain(api.get("token")) and _plain(api.get("token_file")):
        # The rest is wrong, but say what is wrong with the token too, in the same message.
        inline, path = api.get("token"), api.get("token_file")
        _token(
            None if inline is None else SecretStr(inline),
            None if not path else Path(path),
            env,
            [],
            problems,
        )
    if problems or settings is None or token is None:
        if config_path is None and any(": required" in problem for problem in problems):
            problems.insert(0, _where_files_are_looked_for(default_path))
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    file_api = file_data.get("api")
    if config_path is not None and isinstance(file_api, dict) and "token" in file_api:
        # Only a configuration file that holds a secret has to be private.
        warn_if_shared(config_path, "config file (it holds api.token)", warnings)
    settings.api.token = SecretStr(token[0])
    settings._token_path = token[1]
    return settings, warnings


def _plain(value: object) -> bool:
    return value is None or (isinstance(value, str) and "\x00" not in value)


def _token(
    inline: SecretStr | None,
    path: Path | None,
    env: Mapping[str, str],
    warnings: list[str],
    problems: list[str],
) -> tuple[str, Path | None] | None:
    try:
        return resolve_token(inline, path, env, warnings)
    except ConfigError as exc:
        problems.append(str(exc))
        return None


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


def _describe(
    exc: ValidationError, origins: dict[tuple[str, str], str], flags: dict[str, Any]
) -> list[str]:
    """One line per wrong key, named by its dotted path (and variable); values never echoed."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        section, key = [*(str(part) for part in error["loc"][:2]), "", ""][:2]
        variable = origins.get((section, key))
        if variable and key not in flags.get(section, {}):
            loc += f" (from {variable})"
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, KeyProblem):
            keys = ", ".join(f"{loc}.{key}" if loc else key for key in cause.keys)
            lines.append(f"{keys}: {cause.reason}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required"
        lines.append(f"{loc}: {message}" if loc else message)
    return lines
