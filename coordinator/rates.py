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

    def update(self, shards: dict[str, ShardHeartbeat], now_ns: int) -> dict[str, float]:
        """The planning rate of every model any shard reports or reported within the hold."""
        current: dict[str, float] = {}
        for beat in shards.values():  # a model moving is reported by both shards for a moment
            for name, load in beat.models.items():
                current[name] = max(current.get(name, 0.0), load.rate_rps)
        for name in sorted(set(current) | set(self._peak)):
            rate = current.get(name, 0.0)
            peak, at_ns = self._peak.get(name, (0.0, now_ns))
            if rate >= peak or now_ns - at_ns >= self.hold_ns:
                self._peak[name] = (rate, now_ns)
        return {name: rate for name, (rate, _at) in sorted(self._peak.items())}
