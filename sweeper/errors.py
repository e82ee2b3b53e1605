"""The sweeper's error tree, and the fate each error carries: every failure above
`api.py` is one of these, and each says what it does to the sweep (`result`) and to
the zombie whose write it stops (`outcome`, `reason`; `halts`: every write not yet
sent stops too). One `except SweeperError` and these attributes replace a ladder.

    SweeperError                     (the unforeseen, as `Crashed`: exit 70)
     ├── ConfigError                 the configuration is wrong: exit 78
     ├── Crashed                     an error nobody foresaw, wrapped: exit 70
     ├── GuardRefused                a guard refused the sweep: exit 3
     │    ├── ClockSkewRefused       the platform's clock is too far from ours
     │    └── WriteAppliedUnderSkew  ...seen on the answer to a write it applied
     ├── Interrupted                 SIGTERM/SIGINT stopped the work: exit 75
     │    └── LeaseLost              this copy does not hold the lease (long enough)
     ├── Transient                   one failed try worth repeating (inside api.py only)
     ├── OutOfTime                   a wait would cross a deadline (inside api.py only)
     └── PlatformError               anything the platform answered or failed to
          ├── PlatformUnavailable    transient failures, after every try: exit 75
          │    ├── WriteUnanswered   one write attempt got no usable answer
          │    ├── DeadlineReached   a wait would cross the caller's deadline
          │    └── ListingOverran    the listing did not end within sweep.deadline
          ├── InvalidAnswer          an answer that breaks the contract
          │    └── InvalidListing    a listing that does not end (repeated cursor)
          └── PlatformRefused        a 4xx the platform meant
               ├── TokenRefused      401/403: stop everything, exit 77
               ├── StepNotFound      404
               ├── ListingNotFound   404 on the listing: base_url is wrong, exit 78
               ├── StepConflict      409
               └── BodyRejected      400/422 (and any other refusal)

`AlreadySettled` (a second outcome for one zombie) is a bug, not a failure the
sweeper raises on purpose: a RuntimeError, which ends the sweep as `crashed`.

No message built here ever includes the token: callers pass only statuses,
URL paths and the platform's own error text.
"""

from __future__ import annotations

import errno
from enum import StrEnum
from typing import Any


class Result(StrEnum):
    """How a sweep as a whole ended."""

    COMPLETED = "completed"
    REFUSED = "refused"
    TOKEN_REFUSED = "token_refused"
    UNAVAILABLE = "unavailable"
    INTERRUPTED = "interrupted"
    INVALID_LISTING = "invalid_listing"
    MISCONFIGURED = "misconfigured"
    CRASHED = "crashed"


class Outcome(StrEnum):
    """The one fate of one zombie. Every entry leaves PENDING exactly once."""

    PENDING = "pending"
    MARKED = "marked"
    WOULD_MARK = "would_mark"
    SKIPPED = "skipped"
    FAILED = "failed"
    REFUSED = "refused"
    NOT_ATTEMPTED = "not_attempted"


class SkipReason(StrEnum):
    """Why a zombie was left alone (the `reason` of `step.skipped`)."""

    GONE = "gone"
    FINISHED = "finished"
    ALIVE = "alive"
    CONFLICT = "conflict"
    DEADLINE = "deadline"
    SHUTDOWN = "shutdown"

    @property
    def counted_as(self) -> str:
        """The name a skip is counted under in the report and the metrics."""
        return "skipped_" + self.value

    @property
    def text(self) -> str:
        """For a person at a terminal (the summary tables, the demo)."""
        return _SKIP_TEXT[self]


_SKIP_TEXT = {
    SkipReason.FINISHED: "finished between the listing and the write (real result kept)",
    SkipReason.ALIVE: "showed a sign of life on the re-read",
    SkipReason.GONE: "no longer exists",
    SkipReason.CONFLICT: "the platform reported a conflict",
    SkipReason.DEADLINE: "left for the next sweep (deadline)",
    SkipReason.SHUTDOWN: "not started (stop signal)",
}


class FailReason(StrEnum):
    """Why a zombie could not be marked (the `reason` of `step.failed`)."""

    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    INVALID_ANSWER = "invalid_answer"
    TOKEN_REFUSED = "token_refused"


class Guard(StrEnum):
    """What stops writes on purpose: the guards (`guard` of `sweep.refused`) and the lease."""

    MAX_STEPS = "max_steps"
    CLOCK_SKEW = "clock_skew"
    LEASE_LOST = "lease_lost"


class MarkReason(StrEnum):
    """Why a marked zombie says more than `marked`."""

    APPLIED_EARLIER = "applied_earlier"


#: The `reason` of a report entry. Entries that never got their write (not_attempted,
#: refused) say what stopped it: a guard, or how the sweep ended (a Result).
Reason = SkipReason | FailReason | Guard | Result | MarkReason


class SweeperError(Exception):
    """Base of every error the sweeper raises on purpose, with the fate it carries."""

    #: How the sweep ends when this error ends it.
    result: Result = Result.CRASHED
    #: Whether it stops every write not yet sent (the sweep's halt latch), settling
    #: each zombie left with `outcome` and `reason`; otherwise they settle only the
    #: zombie whose write it stopped.
    halts: bool = True
    outcome: Outcome = Outcome.NOT_ATTEMPTED
    reason: Reason = Result.CRASHED
    #: What the platform answered, for `step.failed` (PlatformError sets them).
    http_status: int | None = None
    attempts: int = 0

    def log_fields(self) -> dict[str, Any]:
        """The fields of the event that ends a sweep with this error."""
        return {"result": self.result.value, "error": str(self)}


class ConfigError(SweeperError):
    """The configuration is invalid; the message names every wrong key."""

    result = Result.MISCONFIGURED
    reason: Reason = Result.MISCONFIGURED


class Crashed(SweeperError):
    """An error nobody foresaw, wrapped: the one place where the unforeseen becomes
    `crashed`, never success (fail closed)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause

    def log_fields(self) -> dict[str, Any]:
        # Its traceback, never frame locals (logs.py renders exc_info without them).
        return {**super().log_fields(), "exc_info": self.cause}


def as_error(exc: BaseException) -> SweeperError:
    """Any exception as a SweeperError: one raised on purpose as itself, else Crashed."""
    return exc if isinstance(exc, SweeperError) else Crashed(exc)


def os_reason(exc: OSError) -> str:
    """An OSError as an operator searches for it: `Permission denied (EACCES)`."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or type(exc).__name__
    return f"{text} ({name})" if name else text


class GuardRefused(SweeperError):
    """A safety guard refused to let the sweep write anything."""

    result = Result.REFUSED
    outcome = Outcome.REFUSED

    def __init__(self, guard: Guard, message: str, **figures: object) -> None:
        super().__init__(message)
        self.guard = guard
        self.reason = guard
        self.figures = figures

    def log_fields(self) -> dict[str, Any]:
        return {"guard": self.guard.value, "error": str(self), **self.figures}


class ClockSkewRefused(GuardRefused):
    """The platform's Date header is further from our clock than allowed."""

    def __init__(self, skew_seconds: float, max_skew_seconds: float) -> None:
        super().__init__(
            Guard.CLOCK_SKEW,
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

    result = Result.INTERRUPTED
    halts = False
    outcome = Outcome.SKIPPED
    reason: Reason = SkipReason.SHUTDOWN


class LeaseLost(Interrupted):
    """[leader]: this copy does not hold the lease with api.timeout + 1 s left.

    Raised before a request is sent, never after: what was not sent is not attempted.
    """

    halts = True
    outcome = Outcome.NOT_ATTEMPTED
    reason: Reason = Guard.LEASE_LOST


class Transient(SweeperError):
    """One failed try that may succeed later (408, 429, 5xx, transport errors).

    Never leaves api.py, which retries it or turns it into a PlatformError.
    """

    def __init__(self, message: str, http_status: int | None, retry_after: float | None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry_after = retry_after


class OutOfTime(SweeperError):
    """Waiting (a retry, a rate-limit slot) would end past the caller's deadline.

    Never leaves api.py, which turns it into DeadlineReached.
    """


class PlatformError(SweeperError):
    """The platform did not answer the way the contract says."""

    result = Result.UNAVAILABLE
    halts = False
    outcome = Outcome.FAILED
    reason: Reason = FailReason.UNAVAILABLE

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

    outcome = Outcome.SKIPPED
    reason: Reason = SkipReason.DEADLINE


class ListingOverran(PlatformUnavailable):
    """The listing did not end before sweep.deadline."""


class InvalidAnswer(PlatformError):
    """A 2xx that is not JSON, lacks `success: true`, is too large or misshapen."""

    reason: Reason = FailReason.INVALID_ANSWER


class InvalidListing(InvalidAnswer):
    """A listing that cannot be finished: its nextCursor repeats."""

    result = Result.INVALID_LISTING


class PlatformRefused(PlatformError):
    """A deliberate refusal (4xx) of one request."""

    reason: Reason = FailReason.REJECTED


class TokenRefused(PlatformRefused):
    """401/403: the token is missing, wrong or not allowed. It stops every write."""

    result = Result.TOKEN_REFUSED
    halts = True
    outcome = Outcome.NOT_ATTEMPTED
    reason: Reason = Result.TOKEN_REFUSED


class StepNotFound(PlatformRefused):
    """404: no such step in that organization."""

    outcome = Outcome.SKIPPED
    reason: Reason = SkipReason.GONE


class ListingNotFound(PlatformRefused):
    """404 on the listing itself: base_url points at no platform. A configuration
    error (exit 78): retrying a permanent misconfiguration helps nobody."""

    result = Result.MISCONFIGURED


class StepConflict(PlatformRefused):
    """409: the step's state conflicts with the write (already finished)."""

    outcome = Outcome.SKIPPED
    reason: Reason = SkipReason.CONFLICT


class BodyRejected(PlatformRefused):
    """400/422 or another refusal: the platform did not accept the request."""


class AlreadySettled(RuntimeError):
    """A second outcome for one zombie: a bug, and the sweep ends as crashed."""
