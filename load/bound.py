"""The analytic bound: the least slot time any scheduler needs for a workload's load.

For each model, b* is the largest batch with E(b*) <= SLO - Dresp - Dctrl - Ddata*b*: the
biggest batch that can still meet the SLO if it starts the moment its plan arrives. E(b*)/b*
is then the cheapest slot time per request. No scheduler can serve the bench rates on fewer
slot-seconds per second than sum(rate * cost); that is our physical limit.

Bench rates may change by segment (seconds long, far longer than any SLO), so the limit is set
by the busiest stretch: `bound_scale = slots / max over the bench of sum(rate(t) * cost)`. For a
single-segment workload that is the plain mean. `needed_slots` is the mean demand over the
bench window, the figure busy slots are compared with.

A mixed fleet (issue 16) has a b* and a cost per request per model and slot class (k_mc, none
where even a batch of 1 misses the SLO on that class), and the cheapest way to serve the load
spreads each model over the classes. For each stretch of constant rates r_m a linear programme
gives the largest scale lambda with sum_c x_mc = lambda * r_m (every model served) and
sum_m k_mc * x_mc <= n_c (no class over its slots), x >= 0; the bound is the least lambda over the
bench. `needed_slots` then counts slots of the workload's own mix (n_c in its proportions). A
fleet of one class keeps the closed form above.
"""

from __future__ import annotations

import math

import msgspec

from load.workload import LoadedWorkload, ModelWorkload, classes_of_slots
from schemas.profile import ModelProfile
from shard.core.config import CoreConfig
from shard.core.latency import LatencyModel
from shard.core.target_batch import best_batch as core_best_batch


class ModelBound(msgspec.Struct, frozen=True):
    name: str
    batch_size: int  # b*, 0 when even a batch of 1 misses the SLO
    cost_s_per_request: float  # in a mixed fleet: on its cheapest class
    bench_rps: float
    class_costs: dict[str, float] = {}  # mixed fleet: cost per request on each class (inf: misses the SLO)


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
    """The bound for `slots` slots (in a mixed fleet: the workload's class pattern, repeated)."""
    config = config or CoreConfig()
    pattern = _counts(loaded.slot_classes)
    if len(pattern) <= 1:
        profiles = loaded.class_profiles[next(iter(pattern))] if pattern else loaded.profiles
        return _one_class_bound(loaded, profiles, slots, config)
    return _mixed_bound(loaded, _counts(classes_of_slots(loaded, slots)), pattern, config)


def _best(model: ModelWorkload, profile: ModelProfile, config: CoreConfig) -> tuple[int, float]:
    """b* and the slot seconds per request at b* (inf when b* is 0)."""
    latency = LatencyModel(profile)
    b = best_batch(latency, int(model.slo_ms * 1e6), config)
    return b, (latency.exec_ns[b] / b / 1e9 if b else float("inf"))


def _one_class_bound(loaded: LoadedWorkload, profiles: dict[str, ModelProfile], slots: int,
                     config: CoreConfig) -> Bound:
    """The closed form: every slot alike, so the bound is slots over the peak demand."""
    models: list[ModelBound] = []
    demand = 0.0
    steps: list[tuple[float, float]] = []  # (time since start, change in demand)
    for model in loaded.workload.models:
        b, cost = _best(model, profiles[model.name], config)
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


def _counts(classes: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    return counts


def _mixed_bound(loaded: LoadedWorkload, here: dict[str, int], pattern: dict[str, int],
                 config: CoreConfig) -> Bound:
    """The LP bound over each stretch of constant rates, for the classes `here` (counts)."""
    workload_models = loaded.workload.models
    classes = list(pattern)
    costs: list[list[float]] = []  # [model][class]
    models: list[ModelBound] = []
    for model in workload_models:
        best = [_best(model, loaded.class_profiles[c][model.name], config) for c in classes]
        row = [cost for _b, cost in best]
        cheapest = min(range(len(classes)), key=lambda i: row[i])
        costs.append(row)
        models.append(ModelBound(model.name, best[cheapest][0], row[cheapest], model.bench_mean_rps,
                                 class_costs=dict(zip(classes, row, strict=True))))
    slots = [here.get(c, 0) for c in classes]
    scales = [max_scale(rates, costs, slots) for rates in _rate_stretches(workload_models) if any(rates)]
    scale = min(scales, default=float("inf"))
    total = sum(pattern.values())
    unit = max_scale([m.bench_mean_rps for m in workload_models], costs, [pattern[c] / total for c in classes])
    peak = sum(slots) / scale if scale > 0 else float("inf")
    return Bound(models=models, bound_scale=scale, demand_slots_at_scale_1=1 / unit if unit > 0 else float("inf"),
                 peak_demand_slots_at_scale_1=peak)


def _rate_stretches(models: list[ModelWorkload]) -> list[tuple[float, ...]]:
    """The distinct vectors of bench rates (one per model) over the stretches where none changes."""
    edges: set[float] = set()
    spans: list[list[tuple[float, float, float]]] = []  # per model: (start, end, rps) of bench segments
    for model in models:
        at, mine = model.warmup_s, []
        for segment in model.bench:
            mine.append((round(at, 9), round(at + segment.seconds, 9), segment.rps))
            at += segment.seconds
        edges |= {t for start, end, _ in mine for t in (start, end)}
        spans.append(mine)
    times = sorted(edges)
    stretches: dict[tuple[float, ...], None] = {}
    for lo, hi in zip(times, times[1:], strict=False):
        mid = (lo + hi) / 2
        stretches[tuple(next((r for s, e, r in mine if s <= mid < e), 0.0) for mine in spans)] = None
    return list(stretches)


def max_scale(rates: list[float] | tuple[float, ...], costs: list[list[float]], slots: list[float]) -> float:
    """Largest lambda such that rates x lambda can be served: model m sends x_mc requests per
    second to class c at k_mc = costs[m][c] slot seconds each, within slots[c] on each class.
    0 when some model with a rate can run on no class."""
    from scipy.optimize import linprog  # imported here: only mixed fleets need it

    pairs = [(m, c) for m in range(len(rates)) for c in range(len(slots))
             if math.isfinite(costs[m][c]) and slots[c] > 0]
    if any(rates[m] > 0 and all(pm != m for pm, _ in pairs) for m in range(len(rates))):
        return 0.0
    n = 1 + len(pairs)  # lambda, then x per (model, class) pair
    a_eq = [[-rates[m]] + [1.0 if pm == m else 0.0 for pm, _ in pairs] for m in range(len(rates))]
    a_ub = [[0.0] + [costs[pm][pc] if pc == c else 0.0 for pm, pc in pairs] for c in range(len(slots))]
    result = linprog([-1.0] + [0.0] * (n - 1), A_ub=a_ub, b_ub=list(slots), A_eq=a_eq, b_eq=[0.0] * len(rates),
                     bounds=[(0, None)] * n, method="highs")
    if result.status == 3:  # unbounded: nothing to serve
        return float("inf")
    if result.status != 0:
        raise ValueError(f"the mixed-fleet bound's LP failed: {result.message}")
    return float(result.x[0])
