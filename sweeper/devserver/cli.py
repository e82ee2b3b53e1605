"""The `dev-server` and `demo` commands: their flags here, their work imported only when run."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import timedelta
from typing import Any

from sweeper.durations import parse_duration

DEFAULT_TOKEN = "dev-token"
#: The optional server stack (`pip install 'zombie-step-sweeper[devserver]'`) and what it pulls in.
SERVER_STACK = frozenset({"starlette", "uvicorn", "click"})
INSTALL_HINT = "pip install 'zombie-step-sweeper[devserver]'"
#: Exit code when the stack is missing: the installation lacks a part, like a
#: configuration that cannot work (EX_CONFIG); the command line itself was right.
EXIT_MISSING_STACK = 78


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _signed_duration(text: str) -> timedelta:
    if text.startswith("-"):
        return -_duration(text[1:])
    return _duration(text.removeprefix("+"))


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(text)


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    dev = commands.add_parser(
        "dev-server",
        parents=[common],
        help="run the local stand-in of the platform API (needs the devserver extra)",
    )
    dev.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    dev.add_argument(
        "--port", type=_count, default=8700, help="port to listen on; 0 picks one (default: 8700)"
    )
    dev.add_argument(
        "--token",
        default=os.environ.get("SWEEPER_DEV_TOKEN", DEFAULT_TOKEN),
        help="bearer token to accept (default: $SWEEPER_DEV_TOKEN, else dev-token)",
    )
    dev.add_argument(
        "--zombies",
        type=_count,
        default=25,
        metavar="N",
        help="RUNNING steps seeded long silent (default: 25)",
    )
    dev.add_argument(
        "--live",
        type=_count,
        default=10,
        metavar="N",
        help="RUNNING steps seeded with a recent heartbeat (default: 10)",
    )
    dev.add_argument(
        "--runaways",
        type=_count,
        default=0,
        metavar="N",
        help="RUNNING steps wedged for over a day whose heartbeat keeps moving (default: 0)",
    )
    dev.add_argument(
        "--latency",
        type=_duration,
        default=timedelta(0),
        metavar="DURATION",
        help="delay added to every answer, in seconds or as 2s, 1m (default: 0s)",
    )
    dev.add_argument(
        "--error-rate",
        type=_fraction,
        default=0.0,
        metavar="FRACTION",
        help="share of requests answered 503, 0 to 1 (default: 0)",
    )
    dev.add_argument(
        "--clock-skew",
        type=_signed_duration,
        default=timedelta(0),
        metavar="DURATION",
        help="offset of the platform's clock (its Date and its timestamps) from the real one,"
        " e.g. -5m (default: 0s)",
    )
    dev.add_argument(
        "--seed",
        default="0",
        metavar="S",
        help="seed of the steps and faults, for repeatable runs (default: 0)",
    )
    commands.add_parser(
        "demo",
        parents=[common],
        help="sweep a stand-in platform once and show what happened (needs the devserver extra)",
    )


def run_command(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in SERVER_STACK:
            raise
        print(
            f"sweeper {args.command}: the stand-in platform needs the server stack "
            f"(starlette, uvicorn), which this installation lacks ({exc.name} is missing).\n"
            f"Install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return EXIT_MISSING_STACK


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from sweeper.devserver.demo import run_demo

        return run_demo()
    import asyncio
    from datetime import UTC, datetime

    from sweeper.devserver.app import Faults
    from sweeper.devserver.server import serve_forever
    from sweeper.devserver.state import PlatformState

    skew = args.clock_skew
    # A platform whose clock is off stamps its steps with it, not only its Date header.
    state = PlatformState(clock=lambda: datetime.now(UTC) + skew)
    state.seed(args.zombies, args.live, args.seed)
    state.seed_runaways(args.runaways, args.seed)
    faults = Faults(latency=args.latency, error_rate=args.error_rate, seed=args.seed)
    # uvicorn handles SIGTERM/SIGINT while serving, then re-raises them under the
    # handlers it found: with these, a clean stop exits 0 instead of dying by signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        asyncio.run(serve_forever(state, args.token, args.host, args.port, faults))
    except OSError as exc:
        print(f"sweeper dev-server: cannot listen on {args.host}:{args.port}: {exc.strerror}")
        return 75
    return 0
