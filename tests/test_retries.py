"""The retry policy: a frozen value, its backoff ceiling, Retry-After first."""

from __future__ import annotations

import dataclasses
import math

import pytest

from sweeper.retries import RetryPolicy


@pytest.fixture(name="highest")
def _highest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every jitter draw gives its upper bound: the ceiling shows."""
    monkeypatch.setattr("tenacity.wait.random.uniform", lambda low, high: high)


@pytest.mark.parametrize(
    ("initial", "cap", "attempt", "ceiling"),
    [
        (0.5, 30.0, 1, 0.5),
        (0.5, 30.0, 2, 1.0),
        (0.5, 30.0, 4, 4.0),
        (0.5, 30.0, 7, 30.0),  # 32 capped
        (0.5, 30.0, 10_000, 30.0),  # 2^9999 is never computed
        (0.5, math.inf, 10_000, math.inf),  # no cap: too large a float is the cap
        (0.0, 30.0, 3, 0.0),  # no backoff at all
        (1.0, 0.0, 3, 0.0),
    ],
)
@pytest.mark.usefixtures("highest")
def test_backoff_doubles_from_the_initial_wait_up_to_the_cap(
    initial: float, cap: float, attempt: int, ceiling: float
) -> None:
    """The wait after try n is drawn from [0, initial * 2^(n-1)], capped at backoff_max."""
    policy = RetryPolicy(backoff_initial=initial, backoff_max=cap)
    assert policy.backoff(attempt) == ceiling
    assert policy.wait(attempt, None) == ceiling


def test_backoff_is_full_jitter_below_its_ceiling() -> None:
    """Draws spread over [0, ceiling]: many retrying sweepers do not wake together."""
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=8.0)
    draws = [policy.backoff(3) for _ in range(500)]
    assert all(0.0 <= d <= 4.0 for d in draws)
    assert min(draws) < 1.0 and max(draws) > 3.0


@pytest.mark.parametrize("retry_after", [0.0, 2.5, 60.0])
def test_retry_after_replaces_the_backoff(retry_after: float) -> None:
    """A Retry-After the platform gave is waited as given (0 included), whatever the try."""
    assert RetryPolicy().wait(3, retry_after) == retry_after


def test_the_policy_is_frozen() -> None:
    """Configuration, not state: nothing changes it after it is built."""
    policy = RetryPolicy(max_attempts=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 4  # type: ignore[misc]
