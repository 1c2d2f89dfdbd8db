"""The shard's recent slot utilisation: the contention signal Symphony+ acts on (issue 3)."""

from __future__ import annotations


class UtilizationMeter:
    """EWMA of the slot time dispatched per rate-meter bin over the slot time available: the
    shard's recent utilisation, the contention signal of Symphony+ (closed bins are sealed
    lazily on the same grid as the rate meters)."""

    __slots__ = ("alpha", "bin_end_ns", "bin_ns", "busy_ns", "ewma")

    def __init__(self, bin_ns: int, alpha: float, now_ns: int) -> None:
        self.bin_ns = bin_ns
        self.alpha = alpha
        self.bin_end_ns = now_ns + bin_ns
        self.busy_ns = 0
        self.ewma = 0.0

    def _seal(self, now_ns: int, slots: int) -> None:
        bins = (now_ns - self.bin_end_ns) // self.bin_ns + 1
        capacity = self.bin_ns * max(slots, 1)
        self.ewma += self.alpha * (min(self.busy_ns / capacity, 1.0) - self.ewma)
        self.ewma *= (1.0 - self.alpha) ** min(bins - 1, 64)  # later bins saw no dispatches
        self.busy_ns = 0
        self.bin_end_ns += bins * self.bin_ns

    def add(self, now_ns: int, busy_ns: int, slots: int) -> None:
        if now_ns >= self.bin_end_ns:
            self._seal(now_ns, slots)
        self.busy_ns += busy_ns

    def value(self, now_ns: int, slots: int) -> float:
        if now_ns >= self.bin_end_ns:
            self._seal(now_ns, slots)
        return self.ewma
