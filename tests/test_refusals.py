"""Token refusals: kept by (base URL, token) pair, as a digest, until old enough."""

from __future__ import annotations

from sweeper.refusals import TOKEN_RETRY_SECONDS, TokenRefusals, credentials


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_refusal_belongs_to_its_pair_only() -> None:
    """Refusing one (base URL, token) pair leaves another URL and another token free."""
    refusals = TokenRefusals(Clock())
    refused = credentials("https://p.test", "Bearer a")
    refusals.refuse(refused)
    assert refusals.refused(refused)
    assert not refusals.refused(credentials("https://q.test", "Bearer a"))
    assert not refusals.refused(credentials("https://p.test", "Bearer b"))


def test_the_key_is_a_digest_never_the_token() -> None:
    """No token is kept: the key is a SHA-256 of the pair."""
    key = credentials("https://p.test", "Bearer s3cret-token")
    assert "s3cret" not in key and len(key) == 64


def test_a_refusal_is_kept_until_it_is_as_old_as_the_retry_time() -> None:
    """`expire` forgets a refusal at TOKEN_RETRY_SECONDS, not a moment before; nothing
    expires on its own between two `expire` calls (never in the middle of a sweep)."""
    clock = Clock()
    refusals = TokenRefusals(clock)
    pair = credentials("https://p.test", "Bearer a")
    refusals.refuse(pair)
    clock.now += TOKEN_RETRY_SECONDS - 0.001
    refusals.expire()
    assert refusals.refused(pair)
    clock.now += 1.0
    assert refusals.refused(pair)  # old enough, but no sweep began
    refusals.expire()
    assert not refusals.refused(pair)


def test_a_refusal_may_be_dated() -> None:
    """`refuse(pair, at=...)` records when it was seen (monotonic seconds)."""
    clock = Clock()
    refusals = TokenRefusals(clock, retry_after=10.0)
    refusals.refuse("old", at=clock.now - 10.0)
    refusals.refuse("new", at=clock.now - 9.0)
    refusals.expire()
    assert (refusals.refused("old"), refusals.refused("new")) == (False, True)
