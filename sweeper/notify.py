"""systemd's notify protocol in pure Python: READY=1, STOPPING=1, WATCHDOG=1.

A datagram to $NOTIFY_SOCKET (an abstract socket when it starts with '@').
Without the variable every call is a no-op, so the daemon runs anywhere.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import timedelta


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_is_ours = not pid or pid == str(os.getpid())
        self.watchdog_interval: timedelta | None = None
        if usec.isascii() and usec.isdigit() and 0 < int(usec) < 10**15 and watchdog_is_ours:
            # Ping at half the timeout, as sd_watchdog_enabled(3) advises.
            self.watchdog_interval = timedelta(microseconds=int(usec) / 2)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), self.address)
            except OSError:
                return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")
