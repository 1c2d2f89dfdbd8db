"""The shard's wake-up timer: the core's one wake-up, on the event loop. The clock it reads is
runtime/clock.py's (STYLE §4), which the agent uses too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from runtime.clock import Clock


class WakeTimer:
    """The one wake-up the core asks for (`Step.wake_at_ns`), re-armed after every step: arming
    the time already set costs nothing. When it fires, `on_wake` gets the time it was set for."""

    __slots__ = ("_at_ns", "_clock", "_handle", "_on_wake")

    def __init__(self, clock: Clock, on_wake: Callable[[int], None]) -> None:
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
