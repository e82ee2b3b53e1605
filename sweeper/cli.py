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
from sweeper.errors import ConfigError, os_reason
from sweeper.logs import LOG_FORMATS, LOG_LEVELS
from sweeper.model import ERROR_CODE_MAX_LENGTH, FINAL_STATUSES, StepStatus
from sweeper.outputs import EXIT_PIPE_CLOSED, StdoutClosed, emit, unwritable_reason
from sweeper.report import ExitCode, SweepReport, write_report

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from sweeper.election import Leadership
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


EXIT_CODES = """exit codes:
  0   finished: every zombie marked or left alone for a harmless reason
  1   finished, but some steps could not be marked
  2   wrong command-line usage
  3   a guard refused the sweep (too many zombies, clock skew)
  70  an unexpected error (a bug)
  75  the platform could not be reached, or SIGTERM/SIGINT
  77  the platform refused the token
  78  the configuration is invalid, or a file to write cannot be written"""

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
        help="TOML configuration file (default: $SWEEPER_CONFIG, else /etc/sweeper/config.toml "
        "when it exists, else the environment alone)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help="log lines as JSON or for a person (default: log.format, auto: console on a "
        "terminal, JSON otherwise)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=_level,
        default=default,
        help="the least severe events logged; warn is warning (default: log.level, info)",
    )
    if suppress:  # the top-level parser has its own
        parser.add_argument("--version", action="version", version=f"sweeper {__version__}")


def _level(text: str) -> str:
    text = text.lower()
    return "warning" if text == "warn" else text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _gateway(text: str) -> str:
    # Not echoed back: argparse errors never repeat a value.
    if not re.fullmatch(r"https?://[^/\s?#@]+/?", text):
        raise argparse.ArgumentTypeError("must be http(s)://host[:port]")
    return text.rstrip("/")


def _final_status(text: str) -> str:
    # Not argparse's `choices`: its error would repeat the value (a stray token, say).
    if text.upper() not in FINAL_STATUSES:
        raise argparse.ArgumentTypeError(f"must be {' or '.join(FINAL_STATUSES)}")
    return text.upper()


def _error_code(text: str) -> str:
    if not 1 <= len(text) <= ERROR_CODE_MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"must be 1 to {ERROR_CODE_MAX_LENGTH} characters")
    return text


def _message(text: str) -> str:
    from sweeper.settings import check_template  # the rule the configuration uses

    try:
        return check_template(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sweeper",
        description="Find zombie workflow steps and mark them FAILED or CANCELLED.",
        epilog="`sweeper COMMAND --help` for each command's flags and exit codes.",
    )
    parser.add_argument("--version", action="version", version=f"sweeper {__version__}")
    _global_flags(parser, suppress=False)
    common = _Parser(add_help=False)
    _global_flags(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[common],
        help="sweep on the schedule (the daemon), or once",
        description="Without --once: the daemon, until SIGTERM or SIGINT (exit 0); SIGHUP "
        "reloads the configuration. With --once: one sweep, then exit with its code.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--once", action="store_true", help="one sweep, then exit with its code (default: daemon)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="decide, re-read and report; write nothing (default: sweep.dry_run, false)",
    )
    run.add_argument(
        "--max-steps",
        type=_positive,
        metavar="N",
        help="mark none when a sweep finds more zombies than N (default: sweep.max_steps, 500)",
    )
    run.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="with --once: write the outcome as JSON, a summary and one entry per zombie "
        "(default: none)",
    )
    run.add_argument(
        "--push-gateway",
        type=_gateway,
        metavar="URL",
        help="with --once: push the metrics to this Prometheus Pushgateway at the end of the "
        "run, as job sweeper-once, e.g. http://pushgateway.monitoring:9091 (default: none)",
    )
    run.add_argument(
        "--metrics-file",
        type=Path,
        metavar="PATH",
        help="with --once: write Prometheus metrics there for node_exporter's textfile "
        "collector (default: none)",
    )

    commands.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and show the values in force, token redacted",
        description="Exit 0 when the configuration is valid, 78 when it is not.",
    )

    mark = commands.add_parser(
        "mark",
        parents=[common],
        help="mark one step by hand",
        description="Read the step, check it is RUNNING and stale, and mark it.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mark.add_argument("step_id", metavar="STEP_ID", help="the step's id")
    mark.add_argument("--org", required=True, metavar="ORG", help="the step's organization")
    mark.add_argument(
        "--status",
        type=_final_status,
        metavar="{" + ",".join(FINAL_STATUSES) + "}",
        help="what the step becomes (default: sweep.status, FAILED)",
    )
    mark.add_argument(
        "--error-code",
        type=_error_code,
        metavar="C",
        help=f"at most {ERROR_CODE_MAX_LENGTH} characters (default: MARKED_BY_HAND)",
    )
    mark.add_argument(
        "--message",
        type=_message,
        metavar="M",
        help="the error message; may use {idle}, {stale_after}, {status}, {rule} "
        "(default: a sentence saying it was marked by hand)",
    )
    mark.add_argument(
        "--force",
        action="store_true",
        help="mark it even when it is within its limit (its rule's stale_after), "
        "e.g. a wedged step that still heartbeats (default: refuse)",
    )
    mark.add_argument(
        "--dry-run", action="store_true", help="read and decide, write nothing (default: false)"
    )
    mark.add_argument(
        "--report", type=Path, metavar="PATH", help="write the outcome as JSON (default: none)"
    )

    from sweeper.devserver.cli import add_commands  # small module: no server imports

    add_commands(commands, common)
    return parser


def run_cli(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("dev-server", "demo"):
        from sweeper.devserver.cli import run_command

        return run_command(args)
    if args.command == "run" and not args.once:
        # The daemon runs many sweeps: one file would hold only the last (or none);
        # and it is scraped, so it pushes nothing.
        for flag in ("metrics_file", "report", "push_gateway"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} goes with --once")
    # Refuse before sweeping rather than lose the outcome after it: a path that
    # cannot be written is the installation's fault, like a bad configuration.
    problems = []
    for flag in ("report", "metrics_file"):
        path = getattr(args, flag, None)
        reason = None if path is None else unwritable_reason(path)
        if reason:
            problems.append(f"--{flag.replace('_', '-')}: {reason}")
    if problems:
        from sweeper.logs import configure_logging

        configure_logging(args.log_format or "auto", args.log_level or "info")
        log.error("config.invalid", error="; ".join(problems))
        return ExitCode.CONFIG
    return _configured_command(args)


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
        if _for_a_person():
            from sweeper.settings import config_path_of
            from sweeper.summary import settings_summary
            from sweeper.tokens import absolute

            path = config_path_of(args.config, os.environ)
            source = absolute(path) if path else "the environment alone (no file)"
            emit(settings_summary(settings.redacted(), source, settings.token_source))
        else:
            emit(json.dumps(settings.redacted(), indent=2))
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
            log.error("report.unwritable", path=str(args.report), error=os_reason(exc))
    if _for_a_person():
        from sweeper.summary import mark_summary, sweep_summary

        if args.command == "mark":
            emit(redactor(mark_summary(report, args.step_id, args.org)))
        else:
            took = report.finished_at - report.started_at if report.finished_at else None
            emit(redactor(sweep_summary(report, took)))
    return int(report.exit_code)


def _for_a_person() -> bool:
    """A table for a terminal; JSON events and --report stay the format for machines."""
    return sys.stdout.isatty()


async def _one_shot(
    settings: Settings,
    work: Callable[[Sweeper, SweepReport], Awaitable[SweepReport]],
    observer: Callable[[str, str], None] | None = None,
    on_retry: Callable[[str, str], None] | None = None,
    *,
    elect: bool = False,
) -> SweepReport:
    """Run one piece of work (a sweep, a mark) with signal handling and a drained stop.

    With `elect` ([leader], a sweep): the lease is taken for the work and released after.
    """
    from sweeper.app import build_sweeper, http_client
    from sweeper.schedule import SHUTDOWN_GRACE_SECONDS, drain, install_stop_handlers

    stop = asyncio.Event()
    install_stop_handlers(stop)
    leadership = electing = None
    if elect and settings.leader.enabled:
        from sweeper.election import build_leadership
        from sweeper.leader import EngineError

        try:
            leadership = build_leadership(settings)
        except EngineError as exc:  # e.g. no namespace to be found outside a pod
            return _misconfigured(str(exc))
        electing = asyncio.ensure_future(leadership.elector.run())
    gate = leadership.gate if leadership is not None else None
    async with http_client(settings, gate=gate) as http:
        sweeper = build_sweeper(
            settings,
            http,
            stop=stop,
            observer=observer,
            on_retry=on_retry,
            gate=gate,
        )
        report = sweeper.new_report()
        try:
            if leadership is not None and not await _lead_once(leadership, settings, stop, report):
                return report
            task = asyncio.ensure_future(work(sweeper, report))
            await drain(task, stop, SHUTDOWN_GRACE_SECONDS)
        finally:
            if leadership is not None:
                await leadership.close(electing)
    if not task.cancelled() and task.exception() is not None:
        # The sweep ends every path itself; this is the last net under it.
        _crashed(report, task.exception())
    return report


def _misconfigured(error: str) -> SweepReport:
    """[leader] that cannot be built (an engine setting found wrong at start): exit 78."""
    from datetime import UTC, datetime

    from sweeper.errors import Result

    report = SweepReport(sweep_id="-", started_at=datetime.now(UTC), dry_run=False)
    report.result, report.error = Result.MISCONFIGURED, error
    report.tally()
    log.error("config.invalid", error=error)
    return report


async def _lead_once(
    leadership: Leadership, settings: Settings, stop: asyncio.Event, report: SweepReport
) -> bool:
    """`run --once` with [leader]: wait at most one lease for it; else say who holds it."""
    from sweeper.election import take_for_one_sweep
    from sweeper.errors import Result

    wait = settings.leader.lease.total_seconds()
    held, holder = await take_for_one_sweep(leadership, wait, stop)
    if held:
        return True
    if stop.is_set():
        report.result, report.error = Result.INTERRUPTED, "stopped while waiting for the lease"
    else:
        report.result = Result.UNAVAILABLE
        report.error = f"another copy holds the lease: {holder or 'unknown'}"
    report.tally()
    report.finished_at = report.started_at
    log.error("sweep.aborted", result=report.result.value, error=report.error, holder=holder)
    return False


def _crashed(report: SweepReport, exc: BaseException | None) -> None:
    from sweeper.errors import Crashed

    crashed = Crashed(exc)
    report.end(crashed)
    report.settle_pending(crashed.outcome, crashed.reason)
    report.tally()
    log.error("sweep.aborted", **crashed.log_fields())


async def _once(settings: Settings, args: argparse.Namespace) -> SweepReport:
    if not args.metrics_file and not args.push_gateway:
        return await _one_shot(settings, lambda sweeper, report: sweeper.run(report), elect=True)
    from prometheus_client import CollectorRegistry

    from sweeper.ops import PUSH_JOB, Metrics

    metrics = Metrics(CollectorRegistry())
    report = await _one_shot(
        settings,
        lambda sweeper, report: sweeper.run(report),
        metrics.observe_request,
        metrics.observe_retry,
        elect=True,
    )
    metrics.observe_sweep(report)
    if args.metrics_file:
        try:
            metrics.write_textfile(str(args.metrics_file))
        except OSError as exc:
            log.error("metrics.unwritable", path=str(args.metrics_file), error=os_reason(exc))
    if args.push_gateway:
        try:
            await asyncio.to_thread(metrics.push, args.push_gateway)
        except OSError as exc:  # urllib's errors are OSErrors; the exit code stays the sweep's
            log.error("metrics.push_failed", gateway=args.push_gateway, error=str(exc))
        else:
            log.info("metrics.pushed", gateway=args.push_gateway, job=PUSH_JOB)
    return report


async def _mark(settings: Settings, args: argparse.Namespace) -> SweepReport:
    from sweeper.policy import MANUAL_ERROR_CODE, manual_rule

    rule = manual_rule(
        StepStatus(args.status or settings.sweep.status),
        args.error_code or MANUAL_ERROR_CODE,
        args.message,
    )
    return await _one_shot(
        settings,
        lambda sweeper, report: sweeper.mark(args.step_id, args.org, rule, report, args.force),
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        code = run_cli(argv)
    except StdoutClosed:
        code = EXIT_PIPE_CLOSED  # the reader has what it wanted: no error, no traceback
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
