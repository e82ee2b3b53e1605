"""Configuration from environment variables: `SWEEPER_<SECTION>__<KEY>`, every one accounted for.

A `SWEEPER_` variable that names no key is an error, like an unknown key in the
file (pydantic-settings would ignore it silently). List values are JSON or
comma-separated. Values are never repeated in a message: one could be a token.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

#: `SWEEPER_` variables that are not configuration keys.
OTHER_VARIABLES = ("CONFIG", "DEV_TOKEN")


def environment_values(
    env: Mapping[str, str], prefix: str, sections: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str], list[str]]:
    """The values the environment sets, by section and key; which variable set each; problems.

    `sections` maps a section's name to its model class. Names are matched without
    regard to case, as pydantic-settings did.
    """
    values: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for name in sorted(env):
        if not name.upper().startswith(prefix.upper()):
            continue
        rest = name[len(prefix) :]
        if rest in OTHER_VARIABLES:
            continue
        section, separator, key = rest.lower().partition("__")
        model = sections.get(section)
        fields = (
            model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        )
        if not separator or key not in fields:
            problems.append(f"{name}: {_why_unknown(section, separator, key, sections)}")
            continue
        try:
            values.setdefault(section, {})[key] = decode(fields[key].annotation, env[name])
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        origins[(section, key)] = name
    return values, origins, problems


def _why_unknown(section: str, separator: str, key: str, sections: Mapping[str, Any]) -> str:
    example = "e.g. SWEEPER_SWEEP__STALE_AFTER"
    if section not in sections:
        known = ", ".join(s.upper() for s in sections)
        return (
            f"names no configuration key: the section must be one of {known}, "
            f"followed by two underscores and the key ({example})"
        )
    if not separator:
        return (
            "names no configuration key: write SWEEPER_<SECTION>__<KEY>, "
            f"with two underscores ({example})"
        )
    return f"names no configuration key: {section} has no key {key!r}"


def decode(annotation: Any, raw: str) -> Any:
    """The value of one variable for a field: lists as JSON or comma-separated, tables as JSON."""
    text = raw.strip()
    if _is_string_list(annotation):
        if text.startswith("["):
            return _json(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    if _is_structured(annotation):
        return _json(text)
    return raw


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None


def _is_string_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,)


def _is_structured(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, dict, tuple, set):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
