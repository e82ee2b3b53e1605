"""Commands, flags and exit codes; the only module that calls sys.exit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from sweeper import __version__
from sweeper.errors import ConfigError
from sweeper.model import StepStatus
from sweeper.report import ExitCode, SweepReport, write_report

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from sweeper.logs import Redactor
    from sweeper.settings import Settings
    from sweeper.sweep import Sweeper

log = structlog.get_logger("sweeper.cli")


class _Parser(argparse.ArgumentParser):
    """argparse, except that stray arguments and values are not echoed: one could be a token."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            words = message.removeprefix(prefix).split()
            flags = [w.split("=", 1)[0] for w in words if w.startswith("-")]
            others = len(words) - len(flags)
            shown = " ".join(flags) + (f" (and {others} other value(s))" if others else "")
            message = prefix + shown.strip()
        # argparse quotes a value outside `choices`, or one its type function refused.
        message = _CHOICE.sub("invalid choice (choose from", message)
        message = _INVALID_VALUE.sub(r"invalid \1 value", message)
        super().error(message)


_CHOICE = re.compile(r"invalid choice: .*? \(choose from", re.DOTALL)
_INVALID_VALUE = re.compile(r"invalid (\S+) value: .*", re.DOTALL)


def _global_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Accepted before or after the command; after it, only when given.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="PATH",
        help="TOML configuration file (also SWEEPER_CONFIG)",
    )
    parser.add_argument("--log-format", choices=("json", "console", "auto"), default=default)
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        type=str.lower,
        default=default,
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _final_status(text: str) -> str:
    # Not argparse's `choices`: its error would repeat the value (a stray token, say).
    if text.upper() not in ("FAILED", "CANCELLED"):
        raise argparse.ArgumentTypeError("must be FAILED or CANCELLED")
    return text.upper()


def _error_code(text: str) -> str:
    if not 1 <= len(text) <= 64:
        raise argparse.ArgumentTypeError("must be 1 to 64 characters")
    return text


def _message(text: str) -> str:
    from sweeper.settings import check_template  # the rule the configuration uses

    try:
        return check_template(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sweeper", description="Find zombie workflow steps and mark them FAILED or CANCELLED."
    )
    parser.add_argument("--version", action="version", version=f"sweeper {__version__}")
    _global_flags(parser, suppress=False)
    common = _Parser(add_help=False)
    _global_flags(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="sweep on the schedule, or once")
    run.add_argument("--once", action="store_true", help="one sweep, then exit with its code")
    run.add_argument("--dry-run", action="store_true", help="decide and report, write nothing")
    run.add_argument(
        "--max-steps", type=_positive, metavar="N", help="override sweep.max_steps for this run"
    )
    run.add_argument("--report", type=Path, metavar="PATH", help="write the outcome as JSON")
    run.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="with --once: write Prometheus metrics to this file",
    )

    commands.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print it, token redacted",
    )

    mark = commands.add_parser("mark", parents=[common], help="mark one step by hand")
    mark.add_argument("step_id", metavar="STEP_ID")
    mark.add_argument("--org", required=True, metavar="ORG", help="the step's organization")
    mark.add_argument("--status", type=_final_status, metavar="{FAILED,CANCELLED}")
    mark.add_argument("--error-code", type=_error_code, metavar="C")
    mark.add_argument("--message", type=_message, metavar="M")
    mark.add_argument("--dry-run", action="store_true")
    mark.add_argument("--report", type=Path, metavar="PATH")

    from sweeper.devserver.cli import add_commands  # small module: no server imports

    add_commands(commands, common)
    return parser


def run_cli(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("dev-server", "demo"):
        from sweeper.devserver.cli import run_command

        return run_command(args)
    if args.command == "run" and args.metrics_file and not args.once:
        parser.error("--metrics-file goes with --once")
    # Refuse before sweeping rather than lose the outcome after it.
    for flag in ("report", "metrics_file"):
        path = getattr(args, flag, None)
        if path is not None and not _writable_target(path):
            parser.error(f"--{flag.replace('_', '-')}: cannot write to {path}")
    return _configured_command(args)


def _writable_target(path: Path) -> bool:
    if path.exists():
        return path.is_file() and os.access(path, os.W_OK)
    parent = path.parent
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "dry_run", False):
        overrides.setdefault("sweep", {})["dry_run"] = True
    if getattr(args, "max_steps", None) is not None:
        overrides.setdefault("sweep", {})["max_steps"] = args.max_steps
    if args.log_format:
        overrides.setdefault("log", {})["format"] = args.log_format
    if args.log_level:
        overrides.setdefault("log", {})["level"] = args.log_level
    return overrides


def _configured_command(args: argparse.Namespace) -> int:
    from sweeper.logs import configure_logging
    from sweeper.settings import load_settings

    try:
        settings, warnings = load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        configure_logging(args.log_format or "auto", args.log_level or "info")
        log.error("config.invalid", error=str(exc))
        return ExitCode.CONFIG
    redactor = configure_logging(
        settings.log.format, settings.log.level, secrets=[settings.token()]
    )
    for warning in warnings:
        log.warning("config.warning", detail=warning)

    if args.command == "check-config":
        print(json.dumps(settings.redacted(), indent=2))
        return ExitCode.OK
    if args.command == "mark":
        return _finish(asyncio.run(_mark(settings, args)), args, redactor)
    if args.once:
        return _finish(asyncio.run(_once(settings, args)), args, redactor)
    from sweeper.daemon import run

    return run(settings, redactor, args.config, _overrides(args))


def _finish(report: SweepReport, args: argparse.Namespace, redactor: Redactor) -> int:
    if args.report:
        try:
            write_report(report, args.report, scrub=redactor)
        except OSError as exc:
            log.error("report.unwritable", path=str(args.report), error=exc.strerror)
    return int(report.exit_code)


async def _one_shot(
    settings: Settings,
    work: Callable[[Sweeper, SweepReport], Awaitable[SweepReport]],
    observer: Callable[[str, str], None] | None = None,
    on_retry: Callable[[str, str], None] | None = None,
) -> SweepReport:
    """Run one piece of work (a sweep, a mark) with signal handling and a drained stop."""
    from sweeper.app import build_sweeper, http_client
    from sweeper.schedule import SHUTDOWN_GRACE_SECONDS, drain, install_stop_handlers

    stop = asyncio.Event()
    install_stop_handlers(stop)
    async with http_client(settings) as http:
        sweeper = build_sweeper(settings, http, stop=stop, observer=observer, on_retry=on_retry)
        report = sweeper.new_report()
        task = asyncio.ensure_future(work(sweeper, report))
        await drain(task, stop, SHUTDOWN_GRACE_SECONDS)
    if not task.cancelled() and task.exception() is not None:
        # The sweep ends every path itself; this is the last net under it.
        _crashed(report, task.exception())
    return report


def _crashed(report: SweepReport, exc: BaseException | None) -> None:
    from sweeper.report import Outcome, Result

    report.result = Result.CRASHED
    report.error = f"{type(exc).__name__}: {exc}"
    report.settle_pending(Outcome.NOT_ATTEMPTED, Result.CRASHED.value)
    report.tally()
    log.error("sweep.aborted", result=report.result.value, error=report.error, exc_info=exc)


async def _once(settings: Settings, args: argparse.Namespace) -> SweepReport:
    if not args.metrics_file:
        return await _one_shot(settings, lambda sweeper, report: sweeper.run(report))
    from prometheus_client import CollectorRegistry

    from sweeper.ops import Metrics

    metrics = Metrics(CollectorRegistry())
    report = await _one_shot(
        settings,
        lambda sweeper, report: sweeper.run(report),
        metrics.observe_request,
        metrics.observe_retry,
    )
    metrics.observe_sweep(report)
    try:
        metrics.write_textfile(str(args.metrics_file))
    except OSError as exc:
        log.error("metrics.unwritable", path=str(args.metrics_file), error=exc.strerror)
    return report


async def _mark(settings: Settings, args: argparse.Namespace) -> SweepReport:
    from sweeper.policy import manual_rule

    rule = manual_rule(
        StepStatus(args.status or settings.sweep.status),
        args.error_code or settings.sweep.error_code,
        args.message,
    )
    return await _one_shot(
        settings, lambda sweeper, report: sweeper.mark(args.step_id, args.org, rule, report)
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        code = run_cli(argv)
    except Exception as exc:
        # Fail closed: never Python's default 1, which the one-shot timer counts as success.
        code = ExitCode.CRASHED
        with contextlib.suppress(Exception):  # the log itself may be what failed
            log.error("sweeper.crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    try:
        sys.stderr.flush()
    except OSError:
        # stderr is gone (a full disk, a closed pipe): say nothing more, keep the code.
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        code = code or ExitCode.CRASHED
    sys.exit(code)
