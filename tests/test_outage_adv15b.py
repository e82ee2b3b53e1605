"""Third adversary pass on outage grace (adv15b): siblings of the clock, start and
answer classes, through the simulated world (tests/outage_world.py)."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest

from tests.outage_world import World, check, populate

S = timedelta(seconds=1)
Z = timedelta(0)


@dataclass
class GatewayWorld(World):
    """During an outage a gateway answers with ITS clock's Date (within max_clock_skew of
    the platform's), or a 200 of another shape."""

    gateway_skew: timedelta = Z
    gateway_body: object = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.down():
            return super().handler(request)
        self.requests += 1
        self.elapsed += self.latency
        date = email.utils.format_datetime(self.platform_clock() + self.gateway_skew, usegmt=True)
        if self.gateway_body is not None:
            return httpx.Response(200, json=self.gateway_body, headers={"Date": date})
        return httpx.Response(503, headers={"Date": date})


L90 = timedelta(seconds=90)


@pytest.mark.parametrize("gateway_skew", [Z, -100 * S, 100 * S, -60 * S, 60 * S, -2 * S, 2 * S])
@pytest.mark.parametrize("gap", [L90 / 10, L90 / 3, L90])
def test_two_outages_with_a_gateway_date_in_the_second_mark_no_live_worker(
    gateway_skew: timedelta, gap: timedelta
) -> None:
    """Two outages an up-time apart, the second longer than `keep` (two limits); in it a
    gateway answers 503 with its own Date, off the platform's by less than
    max_clock_skew. Broke (adv15b) with a 9 s up-time and any Date: closing the second
    outage forgot the first, by the clock, though a worker silent since before it was
    still being judged (90 s of outage counted as idle)."""
    end = 10 * L90
    first = (2 * L90, 3 * L90)
    second = (first[1] + gap, first[1] + gap + 2 * L90)
    world = GatewayWorld(L90, [first, second], gateway_skew=gateway_skew)
    populate(world, end, dead_at=second[1] + L90)
    check(world, end, second[1] + L90)
