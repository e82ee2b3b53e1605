"""The message-template rule: the configuration and `sweeper mark --message` both use it."""

from __future__ import annotations

import string

from sweeper.policy import MESSAGE_FIELDS


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
