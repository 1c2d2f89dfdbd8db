"""Simulating a partitioned deployment: the coordinator's algorithm splits models and slots
across shards (each a policy instance of its own), and at every epoch re-allocates slots from
the rates the shards measure, as the live coordinator does."""

from __future__ import annotations

from coordinator.epoch import next_assignment
from coordinator.placement import Assignment, PlacementConfig
from load.sim.records import ShardSpec, SimOptions
from shard.core.config import CoreConfig, ModelConfig
from shard.core.policies import make_policy
from shard.core.policy import Policy


def partitioned_shards(models: list[ModelConfig], slots: int, options: SimOptions,
                       policy_name: str) -> list[ShardSpec]:
    """The first split, from the models' rate hints, as the coordinator makes it with no previous one."""
    hosts = {str(s): frozenset(m.name for m in models) for s in range(slots)}  # simulated slots run every model
    shard_ids = [f"shard-{k}" for k in range(options.shards)]
    assignment = next_assignment(models, {m.name: m.rate_hint_rps for m in models}, shard_ids, hosts, None,
                                 core=options.core, placement=PlacementConfig(quotas=options.quotas))
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


def epoch_assignment(policies: list[Policy], shards: list[ShardSpec], owner: dict[int, int],
                     models: list[ModelConfig], config: CoreConfig | None = None,
                     quotas: str = "delay") -> tuple[dict[int, int], int]:
    """Slot moves {slot: new shard index} from the shards' measured rates, and desired slots."""
    config = config or CoreConfig()
    hosts = {str(s): frozenset(m.name for m in models) for s in sorted(owner)}
    rates = {m.name: m.rate_hint_rps for m in models}
    for policy in policies:  # a measured rate replaces the hint; 0.0 means the policy keeps none
        rates.update({name: stats.rate_rps for name, stats in policy.stats().items() if stats.rate_rps > 0})
    shard_ids = [f"shard-{k}" for k in range(len(shards))]
    previous = Assignment(
        epoch=0,
        models={name: shard_ids[k] for k, spec in enumerate(shards) for name in spec.models},
        slots={str(slot): shard_ids[k] for slot, k in owner.items()},
    )
    assignment = next_assignment(models, rates, shard_ids, hosts, previous, core=config,
                                 placement=PlacementConfig(quotas=quotas))
    index = {sid: k for k, sid in enumerate(shard_ids)}
    moves = {int(slot): index[s] for slot, s in assignment.slots.items() if index[s] != owner[int(slot)]}
    return moves, assignment.desired_slots
