"""What a model asks of the GPUs: predicted slot-seconds per second at the batch size the core
would aim for at its measured rate, in reference slot-seconds (on the slowest profile among its
agents); in a mixed fleet (issue 16) `class_speeds` says what one slot of each class is worth.
Pure; shared by the live coordinator and the simulator, so both turn rates into demands the same
way."""

from __future__ import annotations

from coordinator.placement import ModelDemand
from schemas.profile import ModelProfile
from shard.core.config import CoreConfig, ModelConfig
from shard.core.latency import LatencyModel
from shard.core.target_batch import best_batch, estimate_target_batch_size, max_batch_with_full_budget

# Classes within this of the reference count as the reference: agents on the same hardware measure
# a few percent apart, and weights that followed that noise would move slots for nothing.
SPEED_SAME = 0.05


def model_demand(model: ModelConfig, rate_rps: float, config: CoreConfig, hosts: list[str]) -> ModelDemand:
    """Rate x per-request cost at the target batch the core would use at that rate."""
    latency = LatencyModel(model.profile)
    if rate_rps > 0:
        budget = model.slo_ns - config.ctrl_ns - config.resp_ns
        target = estimate_target_batch_size(latency, budget, config.data_ns, rate_rps)
    else:
        target = max_batch_with_full_budget(latency, model.slo_ns // 2)
    target = max(1, min(target, latency.batch_size_max))
    return ModelDemand(name=model.name, rate_rps=rate_rps, cost_s=latency.exec_ns[target] / target / 1e9,
                       hosts=hosts, slo_s=model.slo_ns / 1e9, batch_s=latency.exec_ns[target] / 1e9)


def class_speeds(model: ModelConfig, config: CoreConfig) -> dict[str, float]:
    """Slot class -> how many reference slots one slot of that class is worth for this model
    (issue 16): the reference (slowest merged) profile's per-request cost over the class's,
    each at its own best batch (shard.core.target_batch.best_batch), so a faster class that
    also fits larger batches in the SLO counts both. A profile that meets the SLO at no batch
    is costed at a batch of one (the batch its demand is estimated at then). 0.0: the class
    cannot meet the SLO while another class can, so the model must not be placed there; a
    model that meets it nowhere is placed as before, on every host. Empty without class
    profiles (a homogeneous fleet): every slot is worth one; within `SPEED_SAME` of one, one."""
    if not model.class_profiles:
        return {}
    if all(p == model.profile for p in model.class_profiles.values()):  # one class, or classes alike
        return dict.fromkeys(sorted(model.class_profiles), 1.0)
    best = {c: _best_cost_ns(p, model, config) for c, p in sorted(model.class_profiles.items())}
    fits = any(cost is not None for cost in best.values())
    reference = _best_cost_ns(model.profile, model, config)
    reference = _batch_of_one_ns(model.profile) if reference is None else reference
    speeds = {}
    for name, cost in best.items():
        if cost is None and fits:
            speeds[name] = 0.0
            continue
        cost = _batch_of_one_ns(model.class_profiles[name]) if cost is None else cost
        speed = reference / cost if cost > 0 and reference > 0 else 1.0  # a profile of zeros: no yardstick
        speeds[name] = 1.0 if abs(speed - 1.0) <= SPEED_SAME else speed
    return speeds


def _best_cost_ns(profile: ModelProfile, model: ModelConfig, config: CoreConfig) -> float | None:
    """Slot nanoseconds per request at the largest batch that meets the SLO (None: none does)."""
    latency = LatencyModel(profile)
    best = best_batch(latency, model.slo_ns, config.resp_ns, config.ctrl_ns, config.data_ns)
    return latency.exec_ns[best] / best if best > 0 else None


def _batch_of_one_ns(profile: ModelProfile) -> float:
    return float(LatencyModel(profile).exec_ns[1])
