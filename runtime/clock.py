"""The one place a service reads time: a monotonic clock for durations and schedules inside the
process, and a wall clock for the instants that cross processes and hosts (STYLE §4,
ARCHITECTURE principle 4). Both services take a clock object instead of calling `time`, so a
test can run one of them on a host whose wall clock is off (`wall_offset_ns`)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Monotonic nanoseconds: durations and schedules inside this process only."""

    def wall_ns(self) -> int:
        """Unix nanoseconds: instants that travel to other processes and hosts."""

    def to_loop_time(self, at_ns: int) -> float:
        """A `now_ns` instant as asyncio's loop.time()."""


class MonotonicClock:
    """The production clock. `wall_offset_ns` moves only the wall clock, as on a host whose
    clock is that far ahead (positive) or behind (negative): set by tests and by the agent's
    entry point from SYMPHONY_CLOCK_OFFSET_MS (docs/reliability.md §1.1), zero everywhere else."""

    __slots__ = ("wall_offset_ns",)

    def __init__(self, wall_offset_ns: int = 0) -> None:
        self.wall_offset_ns = wall_offset_ns

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        """Deadlines cross processes (and hosts, NTP-synced) as wall-clock time."""
        return time.time_ns() + self.wall_offset_ns

    @staticmethod
    def to_loop_time(at_ns: int) -> float:
        """asyncio's loop.time() is time.monotonic() in seconds."""
        return at_ns / 1e9
