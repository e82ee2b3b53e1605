"""Wiring: the daemon's token rotation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from sweeper.app import TokenRefresher
from sweeper.logs import REDACTED, Redactor
from tests.helpers import TOKEN


def test_a_rotated_token_file_is_used_from_the_next_sweep(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    """A changed file swaps the Authorization header and joins the redaction."""
    path = tmp_path / "api-token"
    path.write_text(TOKEN)
    redactor = Redactor([TOKEN])

    async def go() -> list[str]:
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["authorization"])
            return httpx.Response(200)

        async with httpx.AsyncClient(
            transport=httpx.MockTransport(handler), headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            refresher = TokenRefresher(path, http, redactor, TOKEN)
            assert refresher.refresh() is False  # unchanged
            await http.get("https://p.test/")
            path.write_text("rotated-token-2\n")
            assert refresher.refresh() is True
            await http.get("https://p.test/")
            path.unlink()
            assert refresher.refresh() is False  # unreadable: keep the token in use
            await http.get("https://p.test/")
        return seen

    seen = asyncio.run(go())
    assert seen == [f"Bearer {TOKEN}", "Bearer rotated-token-2", "Bearer rotated-token-2"]
    assert redactor("x rotated-token-2 y") == f"x {REDACTED} y"
    assert [e["event"] for e in logs] == ["token.rotated", "token.unreadable"]
    assert "rotated-token-2" not in str(logs)
