"""What a model asks of the GPUs: predicted slot-seconds per second at the batch size the core
would aim for at its measured rate. Pure; shared by the live coordinator and the simulator, so
both turn rates into demands the same way."""

from __future__ import annotations

from coordinator.placement import ModelDemand
from shard.core.config import CoreConfig, ModelConfig
from shard.core.latency import LatencyModel
from shard.core.target_batch import estimate_target_batch_size, max_batch_with_full_budget


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
