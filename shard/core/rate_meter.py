"""Per-model request-rate meter (reference §1.4): fixed bins, a sliding window of samples.

The reference seals a bin on a 50 ms timer from construction. Here bins are sealed lazily on the
same grid whenever the meter is touched, which gives identical samples without a timer event
per bin per model. Counts are kept as integers so the mean is exact.
"""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Mean and population std of per-bin request rates over the last `window_bins` bins."""

    __slots__ = (
        "bin_ns",
        "counter",
        "mean_rps",
        "next_seal_ns",
        "samples",
        "std_rps",
        "sum_counts",
        "sum_squares",
        "window_bins",
    )

    def __init__(self, bin_ns: int, window_bins: int, now_ns: int) -> None:
        self.bin_ns = bin_ns
        self.window_bins = window_bins
        self.samples: deque[int] = deque()  # per-bin counts, newest last
        self.sum_counts = 0
        self.sum_squares = 0
        self.counter = 0
        # The reference's first seal happens at construction and only records the start.
        self.next_seal_ns = now_ns + bin_ns
        self.mean_rps = 0.0
        self.std_rps = 0.0

    @property
    def has_sample(self) -> bool:
        return bool(self.samples)

    def hit(self, now_ns: int) -> None:
        if now_ns >= self.next_seal_ns:
            self.advance(now_ns)
        self.counter += 1

    def advance(self, now_ns: int) -> None:
        """Seal every bin whose boundary is at or before now."""
        due = (now_ns - self.next_seal_ns) // self.bin_ns + 1
        if due <= 0:
            return
        self.next_seal_ns += due * self.bin_ns
        if not self.samples and self.counter == 0:
            return  # waiting for the first request
        self._push(self.counter)
        self.counter = 0
        # Bins after the first are empty; more than a window of them is a window of zeros.
        for _ in range(min(due - 1, self.window_bins)):
            self._push(0)
        self._refresh()

    def _push(self, count: int) -> None:
        samples = self.samples
        if len(samples) == self.window_bins:
            old = samples.popleft()
            self.sum_counts -= old
            self.sum_squares -= old * old
        samples.append(count)
        self.sum_counts += count
        self.sum_squares += count * count

    def _refresh(self) -> None:
        n = len(self.samples)
        per_bin_to_rps = 1e9 / self.bin_ns
        mean_count = self.sum_counts / n
        mean = mean_count * per_bin_to_rps
        if mean < 1e-9:
            self.mean_rps = self.std_rps = 0.0
            return
        variance = max(0.0, self.sum_squares / n - mean_count * mean_count)
        self.mean_rps = mean
        self.std_rps = variance**0.5 * per_bin_to_rps
