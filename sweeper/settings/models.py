"""The configuration's sections as pydantic models: each key, its default and its checks.

Built by `load.load_settings` only, never at import.
"""

from __future__ import annotations

import ssl
import urllib.parse
import zoneinfo
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sweeper.addresses import is_loopback
from sweeper.durations import format_duration
from sweeper.leader_settings import LeaderSettings
from sweeper.model import MATCHABLE_FIELDS, StepStatus
from sweeper.policy import (
    DEFAULT_ERROR_CODE,
    DEFAULT_ERROR_MESSAGE,
    DEFAULT_RULE_NAME,
    DEFAULT_RUNAWAY_ERROR_CODE,
    DEFAULT_RUNAWAY_MESSAGE,
    RUNAWAY_MESSAGE_FIELDS,
    Rules,
)
from sweeper.settings.hosts import HOST_NAME, is_ipv6, unbindable
from sweeper.settings.problems import KeyProblem
from sweeper.settings.rules import build_rules, inherit
from sweeper.settings.templates import check_template
from sweeper.settings.values import (
    STRICT,
    Duration,
    ErrorCode,
    FinalStatus,
    LogFormatChoice,
    LogLevelChoice,
    MaxRuntime,
    PositiveDuration,
    RuleMaxRuntime,
    RuleStaleAfter,
    StaleAfter,
)
from sweeper.tokens import absolute

REDACTED = "**********"

#: Slower than one request a minute is no rate limit but a stall.
MIN_RATE = 1 / 60


class ApiSettings(BaseModel):
    model_config = STRICT

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
    model_config = STRICT

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
    model_config = STRICT

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
    model_config = STRICT

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
            limit = inherit(r.stale_after, self.stale_after)
            runtime = inherit(r.max_runtime, self.max_runtime)
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
        return build_rules(self)


class LogSettings(BaseModel):
    model_config = STRICT

    format: LogFormatChoice = "auto"
    level: LogLevelChoice = "info"


class ServerSettings(BaseModel):
    model_config = STRICT

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
        bracketed = host.startswith("[") and host.endswith("]") and is_ipv6(host[1:-1])
        if not bracketed and any(c in host for c in ":[]"):
            raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:9108")
        if not bracketed and not HOST_NAME.fullmatch(host):
            # getaddrinfo would fail at every start: a restart loop, not a running daemon.
            raise ValueError(f"not a host name or address: {host[:64]!r}")
        problem = unbindable(host.removeprefix("[").removesuffix("]"))
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

    def use_token(self, token: str, path: Path | None) -> None:
        """The token as `load_settings` resolved it, and the file it came from, if any."""
        self.api.token = SecretStr(token)
        self._token_path = path

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
