"""Where the bearer token comes from: api.token, api.token_file or the systemd credential.

Exactly one source; a file is read whole and stripped; the token itself never
appears in an error message.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from sweeper.errors import ConfigError, os_reason

#: The name under which systemd's LoadCredential= provides the token.
CREDENTIAL_NAME = "api-token"


def resolve_token(
    inline: SecretStr | None,
    token_file: Path | None,
    env: Mapping[str, str],
    warnings: list[str],
) -> tuple[str, Path | None]:
    """The token, and the file it came from (None when it was given inline)."""
    if inline is not None and token_file is not None:
        raise ConfigError("api.token, api.token_file: set exactly one of them, not both")
    if inline is not None:
        token = inline.get_secret_value().strip()
        check_token(token, "api.token")
        return token, None
    path, source = token_file, "api.token_file"
    if path is None and env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        source = f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}"
    if path is None:
        raise ConfigError(
            "api.token: required: set api.token or api.token_file "
            f"(or provide $CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME})"
        )
    token = read_token_file(path, source)
    warn_if_shared(path, "token file", warnings)
    return token, path


def read_token_file(path: Path, source: str) -> str:
    """The token in a file, surrounding whitespace stripped; ConfigError if unusable."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or a NUL in the name
        reason = os_reason(exc) if isinstance(exc, OSError) else "not UTF-8 text, or a bad name"
        raise ConfigError(f"{source}: {absolute(path)} cannot be read ({reason})") from None
    check_token(token, source)
    return token


def absolute(path: Path) -> str:
    """A path as errors name it: absolute, as the process resolved it."""
    try:
        return str(path.resolve())
    except (OSError, ValueError, RuntimeError):
        return str(path)


def check_token(token: str, source: str) -> None:
    if not token:
        raise ConfigError(f"{source}: the token is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError(f"{source}: the token contains whitespace or control characters")
    if not token.isascii():
        # An HTTP header carries ASCII only: such a token could never be sent.
        raise ConfigError(f"{source}: the token must be ASCII (an HTTP header carries no other)")


def warn_if_shared(path: Path, what: str, warnings: list[str]) -> None:
    """Secrets and configuration should be readable by their owner alone."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"{what} {path} is readable by group or others (mode {mode & 0o777:o})")
