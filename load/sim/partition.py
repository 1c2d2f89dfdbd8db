"""Simulating a partitioned deployment: the coordinator's algorithm splits models and slots
across shards (each a policy instance of its own), and at every epoch re-allocates slots from
the rates the shards measure, as the live coordinator does."""

from __future__ import annotations

from coordinator.demand import model_demand
from coordinator.placement import Assignment, PlacementConfig, plan_assignment
from shard.core.config import CoreConfig, ModelConfig
from shard.core.policies import make_policy


def partitioned_shards(models: list[ModelConfig], slots: int, options, policy_name: str) -> list:  # noqa: ANN001
    from load.sim.kernel import ShardSpec

    slot_names = [str(s) for s in range(slots)]
    demands = [model_demand(m, m.rate_hint_rps, options.core, slot_names) for m in models]
    shard_ids = [f"shard-{k}" for k in range(options.shards)]
    assignment = plan_assignment(None, demands, shard_ids, slot_names, PlacementConfig(quotas=options.quotas))
    specs = []
    by_name = {m.name: m for m in models}
    for shard in shard_ids:
        owned = [name for name, s in assignment.models.items() if s == shard]
        if not owned:
            continue
        mine = [by_name[name] for name in sorted(owned)]
        specs.append(ShardSpec(make_policy(policy_name, mine, options.core), [m.name for m in mine],
                               sorted(int(slot) for slot, s in assignment.slots.items() if s == shard)))
    return specs


def epoch_assignment(policies: list, shards: list, owner: dict[int, int], models: list[ModelConfig],
                     config: CoreConfig | None = None, quotas: str = "delay") -> tuple[dict[int, int], int]:
    """Slot moves {slot: new shard index} from the shards' measured rates, and desired slots."""
    config = config or CoreConfig()
    slot_names = [str(s) for s in sorted(owner)]
    rates: dict[str, float] = {}
    for policy in policies:
        stats = getattr(policy, "model_stats", None)
        if stats is not None:
            rates.update({name: rate for name, (_held, _target, rate) in stats().items()})
    demands = [model_demand(m, rates.get(m.name, m.rate_hint_rps), config, slot_names) for m in models]
    shard_ids = [f"shard-{k}" for k in range(len(shards))]
    previous = Assignment(
        epoch=0,
        models={name: shard_ids[k] for k, spec in enumerate(shards) for name in spec.models},
        slots={str(slot): shard_ids[k] for slot, k in owner.items()},
    )
    assignment = plan_assignment(previous, demands, shard_ids, slot_names, PlacementConfig(quotas=quotas))
    index = {sid: k for k, sid in enumerate(shard_ids)}
    moves = {int(slot): index[s] for slot, s in assignment.slots.items() if index[s] != owner[int(slot)]}
    return moves, assignment.desired_slots
