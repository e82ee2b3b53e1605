"""Content-Encoding, undone layer by layer under a size cap, a bounded piece at a time.

httpx decodes a whole received chunk at once, so one small chunk of stacked gzip can
decode to gigabytes before any cap sees it. Here every layer hands on at most PIECE
bytes per step and stops as soon as its output passes the cap: memory stays bounded
by the cap, whatever the encodings stack, and an encoding not known is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

#: The most a layer produces in one step.
PIECE = 64 * 1024
#: More stacked encodings than this is no real server's answer.
MAX_LAYERS = 4
_GZIP = 16 + zlib.MAX_WBITS


class EncodingError(ValueError):
    """The answer's Content-Encoding is unknown, broken, or decodes past the cap."""


class _Inflate:
    """One gzip or deflate layer (gzip members may follow one another)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._wbits = _GZIP if name == "gzip" else zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(self._wbits)
        self._started = False  # deflate: zlib-wrapped, or raw as some servers send it
        self._head = b""  # deflate: zlib's header is 2 bytes; decide on both, not on 1

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.name == "deflate" and not self._started:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
        while True:
            try:
                out = self._inflater.decompress(data, PIECE)
            except zlib.error as exc:
                if self.name == "deflate" and not self._started:
                    self._started = True
                    self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise EncodingError(f"{self.name}: {exc}") from None
            self._started = True
            if out:
                yield out
            if self._inflater.eof:
                rest = self._inflater.unused_data
                if not rest:
                    return
                if self.name != "gzip":
                    raise EncodingError(f"{self.name}: data after the end of the stream")
                self._inflater = zlib.decompressobj(self._wbits)  # the next gzip member
                data = rest
                continue
            data = self._inflater.unconsumed_tail
            if not data and len(out) < PIECE:
                return  # all input used, all output given

    def finish(self) -> None:
        if (self._started or self._head) and not self._inflater.eof:
            raise EncodingError(f"{self.name}: the stream ends early")


class Decoded:
    """Feed the raw answer in; get its decoded pieces out, the cap enforced on every layer."""

    def __init__(self, encodings: Sequence[str], cap: int) -> None:
        names = [e.strip().lower() for e in encodings]
        names = [n for n in names if n and n != "identity"]
        if len(names) > MAX_LAYERS:
            raise EncodingError(f"{len(names)} stacked encodings, more than {MAX_LAYERS}")
        unknown = sorted({n for n in names if n not in ("gzip", "x-gzip", "deflate")})
        if unknown:
            raise EncodingError(f"unknown Content-Encoding {', '.join(unknown)[:64]!r}")
        # The last encoding applied is the first undone.
        self._layers = [_Inflate("gzip" if n == "x-gzip" else n) for n in reversed(names)]
        self._sizes = [0] * len(self._layers)
        self._cap = cap

    def feed(self, raw: bytes) -> Iterator[bytes]:
        return self._through(0, raw)

    def _through(self, index: int, data: bytes) -> Iterator[bytes]:
        if index == len(self._layers):
            yield data
            return
        for piece in self._layers[index].feed(data):
            self._sizes[index] += len(piece)
            if self._sizes[index] > self._cap:
                raise EncodingError(f"decodes to more than {self._cap} bytes")
            yield from self._through(index + 1, piece)

    def finish(self) -> None:
        """The raw answer has ended: every layer must have ended with it."""
        for layer in self._layers:
            layer.finish()
