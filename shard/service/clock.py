"""The only place the shard reads time: a monotonic clock in ns (STYLE §4), and the core's
wake-up timer on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class MonotonicClock:
    def now_ns(self) -> int:
        return time.monotonic_ns()

    @staticmethod
    def wall_ns() -> int:
        """Deadlines cross processes (and hosts, NTP-synced) as wall-clock time."""
        return time.time_ns()

    @staticmethod
    def to_loop_time(at_ns: int) -> float:
        """asyncio's loop.time() is time.monotonic() in seconds."""
        return at_ns / 1e9


class WakeTimer:
    """The one wake-up the core asks for (`Step.wake_at_ns`), re-armed after every step: arming
    the time already set costs nothing. When it fires, `on_wake` gets the time it was set for."""

    __slots__ = ("_at_ns", "_clock", "_handle", "_on_wake")

    def __init__(self, clock: MonotonicClock, on_wake: Callable[[int], None]) -> None:
        self._clock = clock
        self._on_wake = on_wake
        self._handle: asyncio.TimerHandle | None = None
        self._at_ns: int | None = None

    def arm(self, wake_at_ns: int | None) -> None:
        if wake_at_ns == self._at_ns:
            return
        self.cancel()
        self._at_ns = wake_at_ns
        if wake_at_ns is not None:
            self._handle = asyncio.get_running_loop().call_at(self._clock.to_loop_time(wake_at_ns), self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        due_ns = self._at_ns
        self._handle = None
        self._at_ns = None
        self._on_wake(due_ns)
