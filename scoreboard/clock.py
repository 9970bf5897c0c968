"""Injected clocks: every window, period and limit reads time through one of these."""

from __future__ import annotations

import time


class Clock:
    """Wall clock in Unix milliseconds."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock(Clock):
    """A clock that only moves when told to: tests use it instead of sleeping."""

    def __init__(self, start_ms: int = 1_795_000_000_000) -> None:
        self.current_ms = start_ms

    def now_ms(self) -> int:
        return self.current_ms

    def advance(self, ms: int) -> None:
        self.current_ms += ms

    def set(self, ms: int) -> None:
        self.current_ms = ms
