"""Integer-nanosecond latency tables, built once from a profile at the core's edge.

Reference §2.2: l(b) beyond the profiled range is 3600 s; that constant ends every search loop
and is the de-facto batch-size cap. Tables are lists indexed by batch size so lookups on the hot
path are one subscript.
"""

from __future__ import annotations

from schemas.profile import ModelProfile

OUT_OF_RANGE_NS = 3600 * 1_000_000_000  # reference §2.2: 3600 s beyond the profiled range
NEVER_NS = 1 << 62  # "+inf" for instants; arithmetic on it stays far beyond any real time
NEVER_BEFORE_NS = -(1 << 62)  # "-inf"


def us_to_ns(us: float) -> int:
    """Reference §1.2: microseconds to nanoseconds by truncation."""
    return int(us * 1000)


class LatencyModel:
    """l(b), pre+post and E(b) = pre + post + l(b) in ns, indexed by batch size.

    `forward_ns[b]` and `exec_ns[b]` are valid for 0 <= b <= batch_size_max + 1: index 0 is 0 and
    index batch_size_max + 1 is the out-of-range sentinel, so `exec_ns[bs + 1]` is always safe
    for a batch size within range.
    """

    __slots__ = ("batch_size_max", "forward_ns", "exec_ns", "pre_post_ns")

    def __init__(self, profile: ModelProfile, *, monotone: bool = True) -> None:
        if monotone:
            profile = profile.monotone()
        self.batch_size_max = profile.batch_size_max
        forward = [0] + [us_to_ns(profile.forward_us(b)) for b in range(1, self.batch_size_max + 1)]
        forward.append(OUT_OF_RANGE_NS)
        self.forward_ns = forward
        self.pre_post_ns = us_to_ns(profile.pre_us) + us_to_ns(profile.post_us)
        self.exec_ns = [0] + [f + self.pre_post_ns for f in forward[1:]]

    def forward(self, batch_size: int) -> int:
        """l(b) in ns; the 3600 s sentinel beyond the profiled range."""
        if 1 <= batch_size <= self.batch_size_max:
            return self.forward_ns[batch_size]
        return OUT_OF_RANGE_NS

    def exec(self, batch_size: int) -> int:
        """E(b) = pre + post + l(b) in ns; the 3600 s sentinel beyond the profiled range."""
        if 1 <= batch_size <= self.batch_size_max:
            return self.exec_ns[batch_size]
        return OUT_OF_RANGE_NS + self.pre_post_ns
