"""How long to wait before trying a failed request again: a frozen policy, no state.

tenacity does the retrying: reads run in the `AsyncRetrying` this policy builds, and
a write's next attempt (the writer's call, after its own re-read) waits what this
policy's backoff says, drawn by the same tenacity strategy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from sweeper.errors import Transient


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """api.max_attempts, api.max_retry_after and the backoff (api.retry_backoff, its max)."""

    max_attempts: int = 5
    #: A Retry-After longer than this (seconds) is not waited for: the request has failed.
    max_retry_after: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Full jitter: uniform in [0, initial * 2^(attempt-1)], capped (too large: the cap).
    _backoff: wait_random_exponential = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        strategy = wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max)
        object.__setattr__(self, "_backoff", strategy)

    def retrying(
        self,
        sleep: Callable[[float], Awaitable[None]],
        before_sleep: Callable[[RetryCallState], None],
    ) -> AsyncRetrying:
        """The retry loop of one read: a Transient failure is tried again, up to
        max_attempts tries, after `wait` (`before_sleep` may still refuse the wait)."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(Transient),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def backoff(self, attempt: int) -> float:
        """The backoff after failed try number `attempt` (a write's, outside a loop)."""
        state = RetryCallState(AsyncRetrying(), None, (), {})
        state.attempt_number = attempt
        return float(self._backoff(state))

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """The wait after failed try number `attempt`: Retry-After when given, else backoff."""
        return retry_after if retry_after is not None else self.backoff(attempt)

    def _wait(self, state: RetryCallState) -> float:
        # tenacity asks for a wait only after an outcome (`and` only satisfies mypy).
        exc = state.outcome and state.outcome.exception()
        if isinstance(exc, Transient) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))
