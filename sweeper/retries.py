"""How long to wait before trying a failed request again: a frozen policy, no state.

Reads retry inside the client; a write's next attempt is the writer's call (after its
own re-read), and waits what this policy says too.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """api.max_attempts, api.max_retry_after and the backoff (api.retry_backoff, its max)."""

    max_attempts: int = 5
    #: A Retry-After longer than this (seconds) is not waited for: the request has failed.
    max_retry_after: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and `initial * 2^(attempt-1)`, capped at the max
        (the same draw as tenacity's wait_random_exponential)."""
        return random.uniform(0, self._ceiling(attempt))

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """The wait after failed try number `attempt`: Retry-After when given, else backoff."""
        return retry_after if retry_after is not None else self.backoff(attempt)

    def _ceiling(self, attempt: int) -> float:
        initial, cap, exponent = self.backoff_initial, self.backoff_max, attempt - 1
        finite = initial > 0 and cap > 0 and math.isfinite(cap)
        if finite and exponent > math.log(cap, 2) - math.log(initial, 2):
            return cap  # 2^exponent would only be capped (and may not fit a float)
        try:
            return max(0.0, min(initial * 2.0**exponent, cap))
        except OverflowError:
            return cap
