"""The analytic bound: the least slot time any scheduler needs for a workload's load.

For each model, b* is the largest batch with E(b*) <= SLO - Dresp - Dctrl - Ddata*b*: the
biggest batch that can still meet the SLO if it starts the moment its plan arrives. E(b*)/b*
is then the cheapest slot time per request. No scheduler can serve the bench rates on fewer
slot-seconds per second than sum(rate * cost); that is our physical limit.

Bench rates may change by segment (seconds long, far longer than any SLO), so the limit is set
by the busiest stretch: `bound_scale = slots / max over the bench of sum(rate(t) * cost)`. For a
single-segment workload that is the plain mean. `needed_slots` is the mean demand over the
bench window, the figure busy slots are compared with.
"""

from __future__ import annotations

import msgspec

from load.workload import LoadedWorkload
from shard.core.config import CoreConfig
from shard.core.latency import LatencyModel
from shard.core.target_batch import best_batch as core_best_batch


class ModelBound(msgspec.Struct, frozen=True):
    name: str
    batch_size: int  # b*, 0 when even a batch of 1 misses the SLO
    cost_s_per_request: float
    bench_rps: float


class Bound(msgspec.Struct, frozen=True):
    models: list[ModelBound]
    bound_scale: float  # slots / peak sum(rate * cost) over the bench segments
    demand_slots_at_scale_1: float  # mean sum(rate * cost) over the bench window
    peak_demand_slots_at_scale_1: float

    def needed_slots(self, scale: float) -> float:
        return scale * self.demand_slots_at_scale_1


def best_batch(latency: LatencyModel, slo_ns: int, config: CoreConfig) -> int:
    return core_best_batch(latency, slo_ns, config.resp_ns, config.ctrl_ns, config.data_ns)


def analytic_bound(loaded: LoadedWorkload, slots: int, config: CoreConfig | None = None) -> Bound:
    config = config or CoreConfig()
    models: list[ModelBound] = []
    demand = 0.0
    steps: list[tuple[float, float]] = []  # (time since start, change in demand)
    for model in loaded.workload.models:
        latency = LatencyModel(loaded.profiles[model.name])
        b = best_batch(latency, int(model.slo_ms * 1e6), config)
        cost = latency.exec_ns[b] / b / 1e9 if b else float("inf")
        models.append(ModelBound(model.name, b, cost, model.bench_mean_rps))
        demand += model.bench_mean_rps * cost
        at = model.warmup_s
        for segment in model.bench:
            steps.append((at, segment.rps * cost))
            steps.append((at + segment.seconds, -segment.rps * cost))
            at += segment.seconds
    peak = _peak(steps)
    scale = slots / peak if peak > 0 else float("inf")
    return Bound(models=models, bound_scale=scale, demand_slots_at_scale_1=demand,
                 peak_demand_slots_at_scale_1=peak)


def _peak(steps: list[tuple[float, float]]) -> float:
    """Largest running sum of step changes; at equal times ends apply before starts."""
    level = peak = 0.0
    for _at, change in sorted(steps, key=lambda s: (round(s[0], 9), s[1])):
        level += change
        peak = max(peak, level)
    return peak
