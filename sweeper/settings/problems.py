"""Rendering what is wrong with a configuration: one line per key, values never echoed."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class KeyProblem(ValueError):
    """A check that spans a section names the keys it is about."""

    def __init__(self, keys: tuple[str, ...], reason: str) -> None:
        super().__init__(f"{', '.join(keys)}: {reason}")
        self.keys = keys
        self.reason = reason


def describe(
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
