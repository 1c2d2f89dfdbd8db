"""Simulating a partitioned deployment: the coordinator's algorithm splits models and slots
across shards (each a policy instance of its own), and at every epoch re-allocates slots from
the rates the shards measure, as the live coordinator does."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from coordinator.epoch import next_assignment
from coordinator.placement import Assignment, PlacementConfig
from load.sim.records import ShardSpec, SimOptions
from shard.core.config import CoreConfig, ModelConfig
from shard.core.policies import make_policy
from shard.core.policy import Policy


def partitioned_shards(models: list[ModelConfig], slots: int, options: SimOptions,
                       policy_name: str, slot_classes: list[str] = ()) -> list[ShardSpec]:
    """The first split, from the models' rate hints, as the coordinator makes it with no previous
    one. A model too hot for one shard (`options.shard_rps_max`) is on several, each shard's
    policy planning for its share of the rate. `slot_classes`: slot i's class in a mixed fleet
    (load.workload.classes_of_slots; empty: homogeneous), placed by class as the live
    coordinator places it (the models carry their class profiles)."""
    hosts = {str(s): frozenset(m.name for m in models) for s in range(slots)}  # simulated slots run every model
    shard_ids = [f"shard-{k}" for k in range(options.shards)]
    assignment = next_assignment(models, {m.name: m.rate_hint_rps for m in models}, shard_ids, hosts, None,
                                 core=options.core, placement=_placement(options.quotas, options.shard_rps_max),
                                 slot_classes=classes_by_slot(slot_classes, range(slots)))
    specs = []
    by_name = {m.name: m for m in models}
    for shard in shard_ids:
        owned = assignment.models_of(shard)
        if not owned:
            continue
        mine = [msgspec.structs.replace(by_name[name], rate_hint_rps=by_name[name].rate_hint_rps
                                        / len(assignment.shards_of(name))) for name in sorted(owned)]
        specs.append(ShardSpec(make_policy(policy_name, mine, options.core), [m.name for m in mine],
                               sorted(int(slot) for slot, s in assignment.slots.items() if s == shard)))
    return specs


def _placement(quotas: str, shard_rps_max: float) -> PlacementConfig:
    return PlacementConfig(quotas=quotas, shard_rps_max=shard_rps_max)


def classes_by_slot(slot_classes: list[str], slots: Iterable[int]) -> dict[str, str] | None:
    """The coordinator's slot -> class map for the simulated slots (slot i: the pattern's
    `i % len`, as load.sim.slots.FakeSlots runs it); None for a homogeneous fleet, so that its
    placement is exactly what it was before classes existed."""
    if not slot_classes:
        return None
    return {str(s): slot_classes[s % len(slot_classes)] for s in slots}


def previous_assignment(shards: list[ShardSpec], owner: dict[int, int]) -> Assignment:
    """What the simulated shards hold, as the assignment the coordinator would have written."""
    shard_ids = [f"shard-{k}" for k in range(len(shards))]
    serving: dict[str, list[str]] = {}
    for k, spec in enumerate(shards):
        for name in spec.models:
            serving.setdefault(name, []).append(shard_ids[k])
    return Assignment(epoch=0, models={name: ids[0] for name, ids in serving.items()},
                      splits={name: ids for name, ids in serving.items() if len(ids) > 1},
                      slots={str(slot): shard_ids[k] for slot, k in owner.items()})


def epoch_assignment(policies: list[Policy], shards: list[ShardSpec], owner: dict[int, int],
                     models: list[ModelConfig], config: CoreConfig | None = None,
                     quotas: str = "delay", shard_rps_max: float = 0.0,
                     slot_classes: list[str] = ()) -> tuple[dict[int, int], int]:
    """Slot moves {slot: new shard index} from the shards' measured rates, and desired slots.
    Models stay where they are (splits included): only slots move between epochs. In a mixed
    fleet (`slot_classes`, as for `partitioned_shards`) slots are weighed and barred by class."""
    config = config or CoreConfig()
    hosts = {str(s): frozenset(m.name for m in models) for s in sorted(owner)}
    measured: dict[str, float] = {}
    for policy in policies:  # a split model's rate is the sum of its shards'; 0.0: the policy keeps none
        for name, stats in policy.stats().items():
            measured[name] = measured.get(name, 0.0) + stats.rate_rps
    rates = {m.name: measured.get(m.name) or m.rate_hint_rps for m in models}
    shard_ids = [f"shard-{k}" for k in range(len(shards))]
    assignment = next_assignment(models, rates, shard_ids, hosts, previous_assignment(shards, owner), core=config,
                                 placement=_placement(quotas, shard_rps_max),
                                 slot_classes=classes_by_slot(slot_classes, sorted(owner)))
    index = {sid: k for k, sid in enumerate(shard_ids)}
    moves = {int(slot): index[s] for slot, s in assignment.slots.items() if index[s] != owner[int(slot)]}
    return moves, assignment.desired_slots
