"""Structured logging: one JSON object per line (or console lines on a terminal), redacted.

Only the entry point calls `configure_logging`; modules take lazy loggers from
structlog. Library records (httpx, APScheduler, uvicorn) go through the same
renderer, and every rendered line is scrubbed of the secrets it is given, which
covers tracebacks and messages we did not write ourselves.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, TextIO, get_args

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"

#: The log formats and levels: [log] format/level and --log-format/--log-level accept these.
LogFormat = Literal["json", "console", "auto"]
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
_LEVELS: dict[str, int] = {
    name: logging.getLevelNamesMapping()[name.upper()] for name in LOG_LEVELS
}


class Redactor:
    """Replaces every known secret in a rendered line; the set can grow after start-up."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        # As written, and as JSON or repr() escape it (a quote, a backslash, non-ASCII):
        # lines are scrubbed after rendering.
        forms = {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}
        for form in sorted(forms, key=len, reverse=True):
            if form and form not in self._secrets:
                self._secrets = (*self._secrets, form)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


#: sd-daemon(3) priority prefixes, which journald reads off the start of a line.
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2}


def to_the_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Is `stream` the journal's own stream (systemd sets JOURNAL_STREAM to its dev:inode)?"""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def _redacting(render: Processor, redactor: Redactor, journal: bool = False) -> Processor:
    def render_and_scrub(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", name)).lower()
        rendered = render(logger, name, event_dict)
        line = redactor(rendered if isinstance(rendered, str) else str(rendered))
        if journal:  # `journalctl -p warning` then sees warnings and errors
            return f"<{_PRIORITIES.get(level, 6)}>{line}"
        return line

    return render_and_scrub


def configure_logging(
    fmt: str = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> Redactor:
    """Set up structlog and the standard library's root logger; returns the redactor.

    Pass the redactor in use to configure again (a reload) without forgetting a secret.
    """
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    redactor = redactor or Redactor()
    for secret in secrets:
        redactor.add(secret)
    level_number = _LEVELS.get(level.lower(), logging.INFO)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        # Frame locals could hold the token: tracebacks never show them.
        exceptions: Processor = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty() and not os.environ.get("NO_COLOR"),  # no-color.org
            exception_formatter=structlog.dev.plain_traceback,
        )
        exceptions = _passthrough
    final = _redacting(renderer, redactor, journal=to_the_journal(out))

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            exceptions,
            final,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                final,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_number)
    # httpx narrates every request at INFO; our own events say what matters.
    for noisy in ("httpx", "httpcore", "apscheduler.scheduler", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(max(level_number, logging.WARNING))
    return redactor


def _passthrough(
    logger: WrappedLogger, name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return event_dict
