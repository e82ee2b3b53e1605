"""The lease gate: what the platform client asks just before each request goes out.

A small protocol passed down from the daemon (which owns the elector), so that
the client and the sweep never import the election.
"""

from __future__ import annotations

from typing import Protocol


class LeaseGate(Protocol):
    def check(self, method: str) -> None:
        """Return if a request may start now; else raise `sweeper.errors.LeaseLost`."""

    def holding(self) -> bool:
        """Whether this copy holds the lease now (with room to start a request)."""
