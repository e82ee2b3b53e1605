"""Kept only for branches written before tests/fakes.py: import from tests.fakes instead."""

from tests.fakes import NOW, TOKEN, FakeClock, FakePlatform, Handler, record, step

__all__ = ["NOW", "TOKEN", "FakeClock", "FakePlatform", "Handler", "record", "step"]
