"""Outage grace: remember when the platform could not be reached.

While the platform is down, workers cannot record heartbeats either, so their
steps look idle without being dead. The daemon keeps the windows in which its own
requests failed to reach the platform; the decision does not count that time
toward a step's idle time (see policy.decide). A window opens at the last
successful contact before the failure (the outage may have begun any time after
it) and closes at the first successful contact after it: both ends err toward
discounting more, which only ever delays a mark.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sweeper.policy import Window

#: Answers that mean "the platform was not there", as the client reports them.
UNREACHABLE = frozenset({"error", "timeout", "408", "429", "500", "502", "503", "504"})


class OutageLog:
    def __init__(self, clock: Callable[[], datetime], keep: timedelta = timedelta(days=7)) -> None:
        self._clock = clock
        self._keep = keep
        self._last_contact: datetime | None = None
        self._open_since: datetime | None = None
        self._closed: list[Window] = []

    def observe(self, method: str, status: str) -> None:
        """Feed every request's result (the client's observer hook)."""
        now = self._clock()
        if status in UNREACHABLE:
            if self._open_since is None:
                self._open_since = self._last_contact or now
            return
        if self._open_since is not None:
            self._closed.append((self._open_since, now))
            self._open_since = None
        self._last_contact = now
        horizon = now - self._keep
        self._closed = [w for w in self._closed if w[1] >= horizon]

    def windows(self) -> list[Window]:
        """Closed windows, plus the open one (until now) if the platform is still away."""
        if self._open_since is None:
            return list(self._closed)
        return [*self._closed, (self._open_since, self._clock())]
