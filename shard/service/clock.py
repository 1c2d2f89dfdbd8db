"""The only place the shard reads time: a monotonic clock in ns (STYLE §4)."""

from __future__ import annotations

import time


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
