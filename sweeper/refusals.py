"""The tokens the platform refused, kept by the side that runs sweeps, not by a client.

A refusal belongs to the (base URL, token) pair, kept as a digest (no token is held):
a client asks before each request, a reload to another pair gets its chance at once,
and a reload back to a refused pair finds it still refused. A refused pair is tried
again after `retry_after` even if it did not change: a platform whose token list was
fixed should not need every sweeper restarted.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

#: A refused token is tried again after this long (seconds) even if it did not change.
TOKEN_RETRY_SECONDS = 3600.0


def credentials(base_url: str, authorization: str | None) -> str:
    """The key of one (base URL, token) pair: a digest, never the token."""
    return hashlib.sha256(f"{base_url}\n{authorization}".encode()).hexdigest()


class TokenRefusals:
    """Refused (base URL, token) pairs and when (monotonic seconds)."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        retry_after: float = TOKEN_RETRY_SECONDS,
    ) -> None:
        self._monotonic = monotonic
        self._retry_after = retry_after
        self._at: dict[str, float] = {}

    def refused(self, pair: str) -> bool:
        return pair in self._at

    def refuse(self, pair: str, at: float | None = None) -> None:
        """The platform refused this pair (at `at`, default now): nothing more is sent
        with it until `expire` finds it old enough."""
        self._at[pair] = self._monotonic() if at is None else at

    def expire(self) -> None:
        """Forget refusals as old as `retry_after`. Called when a sweep begins and when a
        reload takes over, never in the middle of a sweep."""
        now = self._monotonic()
        self._at = {pair: at for pair, at in self._at.items() if now - at < self._retry_after}
