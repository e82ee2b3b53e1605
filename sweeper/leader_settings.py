"""The `[leader]` section: which engine holds the lease, how long it lasts, who we are.

Validated like every section (unknown keys refused, values never echoed). The
cross-check with `api.timeout` lives in `check_lease_room`: a lease too short to
leave any moment with `api.timeout` + 1 s left would let a leader write nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from sweeper.durations import format_duration, parse_positive_duration

_STRICT = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)

#: A write or listing starts only with at least api.timeout plus this much lease left.
LEASE_MARGIN = timedelta(seconds=1)

_Positive = Annotated[
    timedelta,
    BeforeValidator(parse_positive_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _check_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise ValueError("not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be http(s)://host[:port]")
    return value.rstrip("/")


def _readable(path: Path | None, key: str) -> None:
    if path is not None and not path.is_file():
        raise ValueError(f"{key}: {path} is not a readable file")


class EtcdSettings(BaseModel):
    model_config = _STRICT

    endpoints: list[str] = Field(default_factory=list)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str]) -> list[str]:
        return [_check_url(v) for v in value]

    @model_validator(mode="after")
    def _check_files(self) -> EtcdSettings:
        for key in ("ca_file", "cert_file", "key_file", "password_file"):
            _readable(getattr(self, key), key)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self


class KubernetesSettings(BaseModel):
    model_config = _STRICT

    namespace: str | None = None
    api_url: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)


class LeaderSettings(BaseModel):
    model_config = _STRICT

    backend: Annotated[Literal["etcd", "kubernetes"] | None, Field()] = None
    name: str = Field(default="sweeper", min_length=1, max_length=253, pattern=r"^[a-z0-9.-]+$")
    #: Resolved at load when unset: $POD_NAME, else host name and process id.
    identity: str | None = Field(default=None, min_length=1, max_length=253)
    lease: _Positive = timedelta(seconds=15)
    renew_every: _Positive = timedelta(seconds=2)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @model_validator(mode="after")
    def _check(self) -> LeaderSettings:
        if self.renew_every >= self.lease:
            raise ValueError("leader.renew_every must be shorter than leader.lease")
        if self.backend == "etcd" and not self.etcd.endpoints:
            raise ValueError("leader.etcd.endpoints: required with backend = etcd")
        return self

    @property
    def enabled(self) -> bool:
        return self.backend is not None


def default_identity(env: Mapping[str, str]) -> str:
    """$POD_NAME (the downward API), else the host name and this process's id."""
    return env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def check_lease_room(leader: LeaderSettings, api_timeout: timedelta) -> str | None:
    """Why the lease leaves no time to write, or None.

    Right after a renewal the holder has `lease` left, and one `renew_every` later
    `lease - renew_every`: that must still exceed api.timeout + 1 s, or whole
    stretches between renewals could start no request.
    """
    if not leader.enabled:
        return None
    needed = api_timeout + LEASE_MARGIN + leader.renew_every
    if leader.lease <= needed:
        return (
            "leader.lease: must be longer than api.timeout + 1s + leader.renew_every"
            f" ({format_duration(needed)}): a request starts only with api.timeout + 1s"
            " of lease left"
        )
    return None
