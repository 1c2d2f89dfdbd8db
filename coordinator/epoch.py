"""One epoch's decision: from the members the coordinator sees, the drains, the profiles and the
previous assignment, the next assignment, or why none is written. Pure: the live coordinator
and the control-plane simulator call the same function.

Rules the decision keeps (issue 11 §1):
- No live shard means no new assignment: the last one stays. An assignment without models is
  never written, so nothing a reader sees can take every model away at once.
- Placement is sticky (coordinator/placement.py): a model moves only when its shard leaves or
  drains, or when the balance rule asks.
- Nothing changed (models, slots, the autoscaling signal): nothing is written.
- Epochs never go back: the floor is the highest epoch anyone reported.
- The new assignment is checked before it is written (`assignment_errors`): every model and
  slot on a live shard, every slot of a live agent, a shard's slots hosting all its models.
"""

from __future__ import annotations

import msgspec

from coordinator.demand import model_demand
from coordinator.placement import PlacementConfig, piece_names, plan_assignment, split_counts
from schemas.control import AgentHeartbeat, Assignment, ShardHeartbeat
from schemas.profile import ModelProfile, profile_from_sleep_spec
from shard.core.config import CoreConfig, ModelConfig


class ModelSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the coordinator knows of a model before any agent measured it."""

    name: str
    slo_ms: float
    kind: str
    batch_size_max: int

    def fallback_profile(self) -> ModelProfile:
        if self.kind.startswith(("sleep:", "sleep#")):
            return profile_from_sleep_spec(self.kind, self.batch_size_max)
        return profile_from_sleep_spec("sleep:1000,5000", self.batch_size_max)  # until an agent has measured it


class EpochInputs(msgspec.Struct, frozen=True, kw_only=True):
    shards: dict[str, ShardHeartbeat]  # alive in the coordinator's view
    agents: dict[str, AgentHeartbeat]
    drains: frozenset[str]  # shards asked to give everything up
    previous: Assignment | None  # the basis for sticky placement
    previous_written: bool = True  # False: the KV holds no readable assignment; write one anyway
    latest_epoch: int = 0  # the highest epoch this coordinator wrote or saw
    rates: dict[str, float] = {}  # planning rate per model (coordinator/rates.py)
    profiles: dict[str, ModelProfile] = {}  # slowest measured profile per model


class EpochDecision(msgspec.Struct, frozen=True, kw_only=True):
    assignment: Assignment | None  # to write; None: write nothing
    reason: str  # "changed", "unchanged", "no_live_shards", "invalid"
    errors: list[str] = []


def live_shards(inputs: EpochInputs) -> list[str]:
    return sorted(s for s, beat in inputs.shards.items() if not beat.draining and s not in inputs.drains)


def membership_of(inputs: EpochInputs) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    """What a change of triggers an epoch at once: the live shards and each agent's slots."""
    agents = tuple((a, tuple(sorted(s.slot_id for s in beat.slots))) for a, beat in sorted(inputs.agents.items()))
    return tuple(live_shards(inputs)), agents


def slot_hosts(agents: dict[str, AgentHeartbeat]) -> dict[str, frozenset[str]]:
    """slot -> the models it can run, from the agents' heartbeats."""
    return {slot.slot_id: frozenset(slot.models) for beat in agents.values() for slot in beat.slots}


def decide_epoch(models: list[ModelSettings], inputs: EpochInputs, *, core: CoreConfig,
                 placement: PlacementConfig, coordinator_id: str) -> EpochDecision:
    live = live_shards(inputs)
    if not live:
        return EpochDecision(assignment=None, reason="no_live_shards")
    hosts = slot_hosts(inputs.agents)
    configs = model_configs(models, inputs.profiles)
    previous = inputs.previous
    new = next_assignment(configs, inputs.rates, live, hosts, previous, core=core, placement=placement)
    floor = max([previous.epoch if previous else 0, inputs.latest_epoch]
                + [beat.epoch for beat in inputs.shards.values()])
    new = msgspec.structs.replace(new, coordinator=coordinator_id, epoch=max(new.epoch, floor + 1))
    if (inputs.previous_written and previous is not None and previous.models == new.models
            and previous.splits == new.splits and previous.slots == new.slots
            and previous.desired_slots == new.desired_slots):
        return EpochDecision(assignment=None, reason="unchanged")
    errors = assignment_errors(new, live, hosts, [m.name for m in models])
    if errors:
        return EpochDecision(assignment=None, reason="invalid", errors=errors)
    return EpochDecision(assignment=new, reason="changed")


def model_configs(models: list[ModelSettings], profiles: dict[str, ModelProfile]) -> list[ModelConfig]:
    """Each model with its measured profile (the slowest among its agents), else its fallback."""
    return [ModelConfig(name=m.name, slo_ns=int(m.slo_ms * 1e6), profile=profiles.get(m.name) or m.fallback_profile())
            for m in models]


def shard_rates(shards: dict[str, ShardHeartbeat]) -> dict[str, float]:
    """The rate each model arrives at now, summed over the shards that report it (during a move
    two shards may each see part of it): the larger of the core's meter (seconds of history) and
    the answers since the previous heartbeat, so that a step up shows within one heartbeat and a
    step down as the meter falls (the autoscaler's down window holds it longer still)."""
    rates: dict[str, float] = {}
    for beat in shards.values():
        for model, load in beat.models.items():
            rates[model] = rates.get(model, 0.0) + max(load.rate_rps, load.recent_rps)
    return rates


def demand_slots(models: list[ModelSettings], rates: dict[str, float], profiles: dict[str, ModelProfile],
                 core: CoreConfig) -> float:
    """The autoscaler's signal: slot-seconds per second the load needs, rate x per-request cost
    at the batch the core aims for at that rate (coordinator/demand.py), summed over models."""
    demands = [model_demand(m, rates.get(m.name, 0.0), core, []) for m in model_configs(models, profiles)]
    return sum(d.rate_rps * d.cost_s for d in demands)


def next_assignment(models: list[ModelConfig], rates: dict[str, float], shards: list[str],
                    hosts: dict[str, frozenset[str]], previous: Assignment | None, *, core: CoreConfig,
                    placement: PlacementConfig) -> Assignment:
    """Rates, profiles (in `models`), live shards, what each slot runs and the previous
    assignment -> the next one (its epoch is the previous one's + 1). The one way from rates to
    an assignment: the live coordinator and the simulator both call it, with the shards' core
    configuration."""
    by_model = models_hosted(hosts)
    hosts_of = {m.name: list(by_model.get(m.name, ())) for m in models}
    counts = split_counts(previous, rates, {name: len(h) for name, h in hosts_of.items()}, len(shards), placement)
    demands = []
    for m in models:
        share = model_demand(m, rates.get(m.name, 0.0) / counts[m.name], core, hosts_of[m.name])
        demands += [msgspec.structs.replace(share, name=piece) for piece in piece_names(m.name, counts[m.name])]
    return plan_assignment(previous, demands, shards, sorted(hosts), placement)


def models_hosted(hosts: dict[str, frozenset[str]]) -> dict[str, list[str]]:
    """model -> the slots that host it, in slot order: `hosts` inverted, where asking every slot
    about every model cost O(models x slots) per epoch. Slots that host the same models (every
    slot of a device class, as a rule) are inverted together, once per distinct set."""
    groups: dict[frozenset[str], list[str]] = {}
    for slot in sorted(hosts):
        groups.setdefault(hosts[slot], []).append(slot)
    by_model: dict[str, list[str]] = {}
    merged: set[str] = set()  # models hosted by two groups or more: their slots need sorting again
    for names, slots in groups.items():
        for name in names:
            if name in by_model:
                by_model[name] += slots
                merged.add(name)
            else:
                by_model[name] = list(slots)
    for name in merged:
        by_model[name].sort()
    return by_model


def assignment_errors(assignment: Assignment, live: list[str], hosts: dict[str, frozenset[str]],
                      models: list[str]) -> list[str]:
    """Why an assignment must not be written (empty: it may)."""
    errors = []
    alive = set(live)
    if models and live and not assignment.models:
        errors.append("no model is assigned while shards are live")
    errors += [f"model {m} on shard {s}, which is not live" for m in sorted(assignment.models)
               for s in assignment.shards_of(m) if s not in alive]
    served = assignment.models_by_shard()  # once: models_of(shard) per slot scans every model
    for slot, shard in sorted(assignment.slots.items()):
        if shard not in alive:
            errors.append(f"slot {slot} on shard {shard}, which is not live")
        elif slot not in hosts:
            errors.append(f"slot {slot} belongs to no live agent")
        else:
            missing = sorted(m for m in served.get(shard, ()) if m not in hosts[slot])
            if missing:
                errors.append(f"slot {slot} of shard {shard} does not host {missing}")
    return errors
