"""The sweeper's error tree: every failure above `api.py` is one of these.

    SweeperError
     ├── ConfigError                 the configuration is wrong: exit 78
     ├── GuardRefused                a guard refused the sweep: exit 3
     │    └── ClockSkewRefused       the platform's clock is too far from ours
     ├── Interrupted                 SIGTERM/SIGINT stopped the work
     │    ├── WriteAppliedUnderSkew  ...seen on the answer to a write it applied
     │    └── LeaseLost              this copy does not hold the lease (long enough)
     └── PlatformError               anything the platform answered or failed to
          ├── PlatformUnavailable    transient failures, after every try: exit 75
          │    ├── WriteUnanswered   one write attempt got no usable answer
          │    └── DeadlineReached   a wait would cross the caller's deadline
          ├── InvalidAnswer          an answer that breaks the contract
          │    └── InvalidListing    a listing that does not end (repeated cursor)
          └── PlatformRefused        a 4xx the platform meant
               ├── TokenRefused      401/403: stop everything, exit 77
               ├── StepNotFound      404
               ├── ListingNotFound   404 on the listing: base_url is wrong, exit 78
               ├── StepConflict      409
               └── BodyRejected      400/422 (and any other refusal)

No message built here ever includes the token: callers pass only statuses,
URL paths and the platform's own error text.
"""

from __future__ import annotations

import errno
from typing import Any


class SweeperError(Exception):
    """Base of every error the sweeper raises on purpose."""


class ConfigError(SweeperError):
    """The configuration is invalid; the message names every wrong key."""


def os_reason(exc: OSError) -> str:
    """An OSError as an operator searches for it: `Permission denied (EACCES)`."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or type(exc).__name__
    return f"{text} ({name})" if name else text


class GuardRefused(SweeperError):
    """A safety guard refused to let the sweep write anything."""

    def __init__(self, guard: str, message: str, **figures: object) -> None:
        super().__init__(message)
        self.guard = guard
        self.figures = figures


class ClockSkewRefused(GuardRefused):
    """The platform's Date header is further from our clock than allowed."""

    def __init__(self, skew_seconds: float, max_skew_seconds: float) -> None:
        super().__init__(
            "clock_skew",
            f"platform clock differs from ours by {skew_seconds:+.1f}s "
            f"(allowed {max_skew_seconds:.0f}s)",
            skew_seconds=round(skew_seconds, 3),
            max_clock_skew_seconds=max_skew_seconds,
        )
        self.skew_seconds = skew_seconds


class WriteAppliedUnderSkew(GuardRefused):
    """The platform applied a write, but its Date header shows a skewed clock.

    The write is reported as applied; the guard then stops every write after it.
    """

    def __init__(self, skew: GuardRefused, data: dict[str, Any]) -> None:
        super().__init__(skew.guard, str(skew), **skew.figures)
        self.data = data


class Interrupted(SweeperError):
    """A stop was requested (SIGTERM/SIGINT) before this work started."""


class LeaseLost(Interrupted):
    """[leader]: this copy does not hold the lease with api.timeout + 1 s left.

    Raised before a request is sent, never after: what was not sent is not attempted.
    """


class PlatformError(SweeperError):
    """The platform did not answer the way the contract says."""

    def __init__(self, message: str, *, http_status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.attempts = attempts


class PlatformUnavailable(PlatformError):
    """Connect errors, timeouts, 408/429/5xx: still failing after every try."""


class WriteUnanswered(PlatformUnavailable):
    """One write attempt failed in a way worth trying again (408, 429, 5xx, no answer).

    It may have been applied all the same: the re-read before the next attempt tells.
    """

    def __init__(self, message: str, *, http_status: int | None, retry_after: float | None) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


class DeadlineReached(PlatformUnavailable):
    """A wait (a retry, a rate-limit slot) would have ended past the caller's deadline:
    given up before sending. For a write, that is the deadline's skip, not a failure."""


class InvalidAnswer(PlatformError):
    """A 2xx that is not JSON, lacks `success: true`, is too large or misshapen."""


class InvalidListing(InvalidAnswer):
    """A listing that cannot be finished: its nextCursor repeats."""


class PlatformRefused(PlatformError):
    """A deliberate refusal (4xx) of one request."""


class TokenRefused(PlatformRefused):
    """401/403: the token is missing, wrong or not allowed."""


class StepNotFound(PlatformRefused):
    """404: no such step in that organization."""


class ListingNotFound(PlatformRefused):
    """404 on the listing itself: base_url points at no platform. A configuration
    error (exit 78): retrying a permanent misconfiguration helps nobody."""


class StepConflict(PlatformRefused):
    """409: the step's state conflicts with the write (already finished)."""


class BodyRejected(PlatformRefused):
    """400/422 or another refusal: the platform did not accept the request."""
