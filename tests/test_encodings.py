"""Answers are capped before decompression and after it, a bounded piece at a time,
whatever Content-Encoding stacks; an unknown or broken encoding is an invalid answer."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from sweeper import api, exchange, pages
from sweeper.api import PlatformClient, build_http_client
from sweeper.encodings import MAX_LAYERS, PIECE, Decoded, EncodingError
from sweeper.errors import InvalidAnswer
from sweeper.retries import RetryPolicy
from tests.fakes import TOKEN

BENCH = Path(__file__).parent.parent / "bench" / "answer_bomb.py"
PAGE = json.dumps({"success": True, "data": [], "nextCursor": None}).encode()


def encode(data: bytes, encoding: str) -> bytes:
    """`data` under the encodings listed, in the order a server applies them."""
    for name in (n.strip().lower() for n in encoding.split(",")):
        if name in ("gzip", "x-gzip"):
            data = gzip.compress(data)
        elif name == "deflate":
            data = zlib.compress(data)
        elif name == "raw-deflate":
            packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            data = packer.compress(data) + packer.flush()
    return data


def zeros_bomb(encoding: str, inflated: int) -> bytes:
    """`inflated` zeros, compressed in 1 MiB steps (never held whole), then the rest."""
    names = [n.strip() for n in encoding.split(",")]
    packer = zlib.compressobj(1, zlib.DEFLATED, 31 if names[0] == "gzip" else 15)
    zeros = bytes(1024 * 1024)
    inner = b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros)))
    inner += packer.flush()
    return encode(inner, ", ".join(names[1:])) if len(names) > 1 else inner


def decode(encodings: list[str], data: bytes, cap: int = 1 << 20, step: int = 1000) -> bytes:
    decoded = Decoded(encodings, cap)
    out = b"".join(
        piece
        for start in range(0, len(data), step)
        for piece in decoded.feed(data[start : start + step])
    )
    decoded.finish()
    return out


@pytest.mark.parametrize(
    ("header", "encodings"),
    [
        ("gzip", ["gzip"]),
        ("x-gzip", ["x-gzip"]),
        ("deflate", ["deflate"]),
        ("raw-deflate", ["deflate"]),
        ("gzip, gzip", ["gzip", "gzip"]),
        ("deflate, gzip", ["deflate", "gzip"]),
        ("gzip, deflate, gzip", ["GZIP", " Deflate ", "gzip"]),
        ("", []),
        ("", ["identity"]),
        ("gzip", ["identity", "gzip"]),
    ],
)
def test_every_known_stack_decodes(header: str, encodings: list[str]) -> None:
    """Known encodings in any order, case and spacing, fed in small pieces, decode whole."""
    assert decode(encodings, encode(PAGE * 50, header)) == PAGE * 50


@pytest.mark.parametrize(
    ("header", "encodings"),
    [
        ("deflate", ["deflate"]),
        ("raw-deflate", ["deflate"]),
        ("gzip", ["gzip"]),
        ("raw-deflate, gzip", ["deflate", "gzip"]),
    ],
)
def test_an_answer_arriving_a_byte_at_a_time_decodes_whole(
    header: str, encodings: list[str]
) -> None:
    """However the answer is cut into chunks (a byte at a time included), it decodes the
    same: raw deflate is told from zlib-wrapped deflate on its first two bytes, not on
    whatever the first chunk held."""
    assert decode(encodings, encode(PAGE * 3, header), step=1) == PAGE * 3


def test_an_empty_raw_deflate_body_decodes_to_nothing() -> None:
    """The shortest raw deflate stream is two bytes (one empty final block): both are
    enough to tell it from zlib-wrapped deflate, and it ends the stream."""
    empty = encode(b"", "raw-deflate")
    assert len(empty) == 2
    assert decode(["deflate"], empty) == b""
    assert decode(["deflate"], empty, step=1) == b""


@pytest.mark.parametrize("header", ["raw-deflate", "deflate", "gzip"])
def test_an_answer_cut_in_two_anywhere_decodes_whole(header: str) -> None:
    """Output a layer still holds when its input runs out is given on, not left in zlib
    until more input comes: the stream must end with the answer, wherever it was cut."""
    packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = bytes(2 * PIECE)
    if header == "raw-deflate":
        body = packer.compress(data) + packer.flush()
    else:
        body = encode(data, header)
    for cut in range(len(body) + 1):
        decoded = Decoded([header.removeprefix("raw-")], 1 << 20)
        out = b"".join([*decoded.feed(body[:cut]), *decoded.feed(body[cut:])])
        decoded.finish()
        assert out == data, cut


def test_the_cap_is_the_most_a_layer_may_produce() -> None:
    """An answer that decodes to exactly the cap is read; one byte more is refused, on
    every layer of a stack."""
    for encodings, header in ((["gzip"], "gzip"), (["deflate", "gzip"], "deflate, gzip")):
        exact = bytes(1000)
        assert decode(encodings, encode(exact, header), cap=1000) == exact
        with pytest.raises(EncodingError, match="decodes to more than 1000 bytes"):
            decode(encodings, encode(exact + b"\0", header), cap=1000)


def test_as_many_stacked_encodings_as_allowed_decode() -> None:
    header = ", ".join(["gzip"] * MAX_LAYERS)
    assert decode(["gzip"] * MAX_LAYERS, encode(PAGE, header)) == PAGE


def test_gzip_members_one_after_another_decode_whole() -> None:
    """Two gzip members back to back (RFC 1952) are one answer."""
    assert decode(["gzip"], gzip.compress(PAGE) + gzip.compress(PAGE)) == PAGE * 2


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip", "deflate, gzip", "gzip, deflate"])
def test_a_bomb_stops_at_the_cap_a_piece_at_a_time(encoding: str) -> None:
    """64 MiB of zeros under a 1 MiB cap: refused once past it, no piece above PIECE."""
    bomb = zeros_bomb(encoding, 64 * 1024 * 1024)
    decoded = Decoded([e.strip() for e in encoding.split(",")], 1 << 20)
    pieces: list[int] = []

    def consume() -> None:
        pieces.extend(len(piece) for piece in decoded.feed(bomb))

    with pytest.raises(EncodingError, match="decodes to more than 1048576 bytes"):
        consume()
    biggest, total = max(pieces), sum(pieces)
    assert biggest <= PIECE
    assert total <= (1 << 20) + PIECE


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "x-custom", "gzip, br", "*"])
def test_an_unknown_encoding_is_refused(encoding: str) -> None:
    """Nothing is guessed: an encoding we cannot undo makes the answer invalid."""
    with pytest.raises(EncodingError, match="unknown Content-Encoding"):
        Decoded([e.strip() for e in encoding.split(",")], 1 << 20)


def test_an_unknown_encoding_is_named_and_its_name_cut_short() -> None:
    """The refusal names every unknown encoding (sorted, once each), and a hostile
    header cannot make the message, which is logged, longer than 64 characters of it."""
    with pytest.raises(EncodingError) as named:
        Decoded(["zstd", "br", "gzip", "br"], 1 << 20)
    assert str(named.value) == "unknown Content-Encoding 'br, zstd'"
    with pytest.raises(EncodingError) as cut:
        Decoded(["x" * 1000], 1 << 20)
    assert str(cut.value) == f"unknown Content-Encoding {'x' * 64!r}"


def test_more_stacked_encodings_than_a_server_sends_are_refused() -> None:
    with pytest.raises(EncodingError, match="stacked encodings"):
        Decoded(["gzip"] * (MAX_LAYERS + 1), 1 << 20)


@pytest.mark.parametrize(
    ("encodings", "data", "reason"),
    [
        (["gzip"], gzip.compress(PAGE)[:-6], "ends early"),
        (["gzip"], b"not gzip at all", "gzip"),
        (["deflate"], b"\xff\xfe not deflate", "deflate"),
        (["deflate"], zlib.compress(PAGE) + b"more", "data after the end"),
        (["gzip"], gzip.compress(PAGE) + b"trailing", "gzip"),
        (["gzip", "gzip"], gzip.compress(PAGE), "gzip"),
        (["deflate"], zlib.compress(PAGE)[:1], "ends early"),
    ],
)
def test_a_broken_stream_is_refused(encodings: list[str], data: bytes, reason: str) -> None:
    with pytest.raises(EncodingError, match=reason):
        decode(encodings, data)


class Trickle(httpx.AsyncByteStream):
    """An answer body sent in the pieces given (not read ahead by httpx)."""

    def __init__(self, data: bytes, step: int = 4096) -> None:
        self.data, self.step = data, step

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.step):
            yield self.data[start : start + self.step]


def list_once(handler: httpx.MockTransport) -> object:
    async def go() -> object:
        async with build_http_client(
            "https://platform.test",
            TOKEN,
            timeout=timedelta(seconds=5),
            max_connections=1,
            transport=handler,
        ) as http:
            client = PlatformClient(http, retry=RetryPolicy(max_attempts=1))
            try:
                async for page in client.list_running(api.utc_now(), 10):
                    return page
            except InvalidAnswer as exc:
                return exc
        return None

    return asyncio.run(go())


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip", "deflate", "gzip, deflate, gzip"])
def test_a_compressed_listing_is_read(encoding: str) -> None:
    """Through PlatformClient: a listing under any known stack is one page."""
    body = encode(PAGE, encoding)
    page = list_once(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200, headers={"Content-Encoding": encoding}, stream=Trickle(body, 7)
            )
        )
    )
    assert isinstance(page, pages.Page)


@pytest.mark.parametrize(
    ("encoding", "reason"),
    [
        ("gzip, gzip", "decodes to more than"),
        ("deflate, gzip", "decodes to more than"),
        ("br", "unknown Content-Encoding"),
        ("gzip, zstd", "unknown Content-Encoding"),
    ],
)
def test_a_listing_bomb_or_unknown_encoding_is_an_invalid_answer(
    monkeypatch: pytest.MonkeyPatch, encoding: str, reason: str
) -> None:
    """Through PlatformClient: past the cap (8 MiB of zeros, cap 1 MiB) or not decodable,
    the listing is an invalid answer, never a page and never a retry."""
    monkeypatch.setattr(exchange, "MAX_ANSWER_BYTES", 1 << 20)
    known = encoding if "zstd" not in encoding and encoding != "br" else "gzip"
    body = zeros_bomb(known, 8 * 1024 * 1024)
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, headers={"Content-Encoding": encoding}, stream=Trickle(body))

    refused = list_once(httpx.MockTransport(answer))
    assert isinstance(refused, InvalidAnswer)
    assert reason in str(refused)
    assert calls == [1]


def test_a_compressed_answer_is_capped_on_the_wire_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """More compressed bytes than the cap, with no Content-Length: refused as they come."""
    monkeypatch.setattr(exchange, "MAX_ANSWER_BYTES", 1 << 16)
    noise = bytes(range(256)) * 1024  # barely compressible
    body = gzip.compress(noise, compresslevel=0)
    refused = list_once(
        httpx.MockTransport(
            lambda r: httpx.Response(
                200, headers={"Content-Encoding": "gzip"}, stream=Trickle(body)
            )
        )
    )
    assert isinstance(refused, InvalidAnswer)
    assert f"answer over {1 << 16} bytes" in str(refused)


@pytest.mark.parametrize(("encoding", "mib"), [("gzip, gzip", 2048), ("deflate, gzip", 512)])
def test_peak_memory_under_a_bomb_stays_under_100_mib(encoding: str, mib: int) -> None:
    """bench/answer_bomb.py in its own process: a few KB on the wire that decode to GiBs
    of zeros, over the real transport. Invalid answer, and ru_maxrss under 100 MiB."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--inflated-mib", str(mib), "--encoding", encoding],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(done.stdout)
    print(figures)
    assert figures["outcome"].startswith("InvalidAnswer: ")
    assert "decodes to more than" in figures["outcome"]
    assert figures["peak_rss_mib"] < 100, figures
