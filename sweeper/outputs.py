"""What the CLI writes outside its logs: output files probed before a sweep, and stdout.

A file that cannot be written is found before the sweep (not after it, when the
outcome would be lost); a closed stdout (`sweeper check-config | head -1`) ends the
program quietly, as any Unix tool.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from sweeper.errors import os_reason
from sweeper.tokens import absolute

#: The status a shell reports for a tool that SIGPIPE ended (128 + 13).
EXIT_PIPE_CLOSED = 141


class StdoutClosed(Exception):
    """The reader of stdout went away."""


def unwritable_reason(path: Path) -> str | None:
    """Why `path` cannot be written (atomically, through a file beside it), or None."""
    if path.is_dir():
        return f"{absolute(path)} is a directory"
    try:
        # Exactly what the atomic writers do: a temporary file in the same directory.
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        return f"{absolute(path)} cannot be written ({os_reason(exc)})"
    except ValueError:  # a NUL in the name
        return "not a usable file name"
    return None


def emit(text: str) -> None:
    """Print to stdout; a closed pipe raises StdoutClosed once stdout is made harmless."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would flush stdout again at exit and complain: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise StdoutClosed from None
