"""The request rate the coordinator plans each model with. Pure.

Shards report each model's measured rate in their heartbeats, but a report is not always the
model's rate: a model that just moved is reported by neither shard for a moment, and its new
shard's rate meter starts from zero. Planning with those dips would make the balance rule move
models back and forth while nothing changed (issue 11: no model moves while members are
unchanged). So a rate rises at once and falls only after it has stayed lower for `hold_ns`:
the peak of the last hold period. The autoscaling signal (desired slots) falls as late.
"""

from __future__ import annotations

from schemas.control import ShardHeartbeat


class RateMemory:
    def __init__(self, hold_ns: int) -> None:
        assert hold_ns > 0
        self.hold_ns = hold_ns
        self._peak: dict[str, tuple[float, int]] = {}  # model -> (rate, when it was last that high)

    def update(self, shards: dict[str, ShardHeartbeat], now_ns: int,
               splits: dict[str, list[str]] | None = None) -> dict[str, float]:
        """The planning rate of every model any shard reports or reported within the hold. A model
        split across shards (`splits`, the assignment's) arrives at the sum of what the shards
        serving it report; any other at the largest report, since a model moving is reported by
        both shards for a moment."""
        current: dict[str, float] = {}
        splits = splits or {}
        for shard, beat in shards.items():
            for name, load in beat.models.items():
                if name in splits:
                    if shard in splits[name]:
                        current[name] = current.get(name, 0.0) + load.rate_rps
                else:
                    current[name] = max(current.get(name, 0.0), load.rate_rps)
        for name in sorted(set(current) | set(self._peak)):
            rate = current.get(name, 0.0)
            peak, at_ns = self._peak.get(name, (0.0, now_ns))
            if rate >= peak or now_ns - at_ns >= self.hold_ns:
                self._peak[name] = (rate, now_ns)
        return {name: rate for name, (rate, _at) in sorted(self._peak.items())}
