"""A set of step identities that stays small for a long listing.

A listing remembers every step it spared, so that a step listed twice is counted
once. Held as (organization, step id) tuples, each entry kept a tuple and two
strings alive: about 250 bytes a step, a quarter more memory for 50,000 live
steps. Grouped by organization, each organization's name is held once and a step
costs its id and a set slot. Exact: no digest that could collide.
"""

from __future__ import annotations

from sweeper.report import StepKey


class StepSet:
    """Step identities (organization, step id), grouped by organization."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, set[str]] = {}

    def __contains__(self, key: StepKey) -> bool:
        ids = self._ids.get(key[0])
        return ids is not None and key[1] in ids

    def add(self, key: StepKey) -> None:
        organization, step_id = key
        ids = self._ids.get(organization)
        if ids is None:
            ids = self._ids[organization] = set()
        ids.add(step_id)

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())
