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
- Mixed fleets (issue 16): a slot's class is its agent's `device`. Demand stays in reference
  slot-seconds (the slowest profile); each class is worth what its profiles say
  (`coordinator.demand.class_speeds`), and a model that meets its SLO on some classes only is
  placed on those. A fleet of one class decides exactly as before.
"""

from __future__ import annotations

import msgspec

from coordinator.demand import class_speeds, model_demand
from coordinator.placement import (
    ModelDemand,
    PlacementConfig,
    base_model,
    piece_names,
    plan_assignment,
    split_counts,
)
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
    class_profiles: dict[str, dict[str, ModelProfile]] = {}  # model -> slot class -> slowest of that class


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
    configs = model_configs(models, inputs.profiles, inputs.class_profiles)
    previous = inputs.previous
    new = next_assignment(configs, inputs.rates, live, hosts, previous, core=core, placement=placement,
                          slot_classes=slot_classes(inputs.agents))
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


def model_configs(models: list[ModelSettings], profiles: dict[str, ModelProfile],
                  class_profiles: dict[str, dict[str, ModelProfile]] | None = None) -> list[ModelConfig]:
    """Each model with its measured profile (the slowest among its agents), else its fallback,
    and the slowest per slot class (`class_profiles`, where measured)."""
    by_class = class_profiles or {}
    return [ModelConfig(name=m.name, slo_ns=int(m.slo_ms * 1e6), profile=profiles.get(m.name) or m.fallback_profile(),
                        class_profiles=by_class.get(m.name, {}) if m.name in profiles else {})
            for m in models]


def slot_classes(agents: dict[str, AgentHeartbeat]) -> dict[str, str]:
    """slot -> its class: the device its agent reports (every slot of an agent is one class)."""
    return {slot.slot_id: beat.device for beat in agents.values() for slot in beat.slots}


def fleet_speeds(models: list[ModelConfig], core: CoreConfig) -> dict[str, dict[str, float]]:
    """model -> slot class -> speed (`class_speeds`); empty when every speed is one (a
    homogeneous fleet, which then takes today's arithmetic everywhere)."""
    speeds = {m.name: class_speeds(m, core) for m in models}
    mixed = any(v != 1.0 for by_class in speeds.values() for v in by_class.values())
    return {name: by_class for name, by_class in speeds.items() if by_class} if mixed else {}


def placeable_hosts(hosts: dict[str, frozenset[str]], classes: dict[str, str],
                    speeds: dict[str, dict[str, float]]) -> dict[str, frozenset[str]]:
    """`hosts` without the models a slot's class cannot serve within their SLO (speed 0): a
    model that fits only some classes stays on those. Slots of one class hosting the same
    models are filtered together, once (a per-slot filter took half a second an epoch at
    1,000 slots)."""
    barred = {(m, name) for m, by_class in speeds.items() for name, speed in by_class.items() if speed <= 0}
    if not barred:
        return hosts
    filtered: dict[tuple[frozenset[str], str], frozenset[str]] = {}
    result = {}
    for slot, models in hosts.items():
        key = (models, classes.get(slot, ""))
        if key not in filtered:
            filtered[key] = frozenset(m for m in models if (m, key[1]) not in barred)
        result[slot] = filtered[key]
    return result


def slot_weights(demands: dict[str, float], speeds: dict[str, dict[str, float]],
                 classes: dict[str, str]) -> dict[str, float] | None:
    """slot -> the reference slots it is worth: its class's speed averaged over the models with
    a profile on that class, harmonically and weighted by their demand (reference slot-seconds
    over the class's own slot-seconds for that mix). None when every slot is worth one."""
    reference: dict[str, float] = {}
    own: dict[str, float] = {}
    for model in sorted(speeds):
        demand = demands.get(model, 0.0)
        for name, speed in speeds[model].items():
            if speed > 0 and demand > 0:
                reference[name] = reference.get(name, 0.0) + demand
                own[name] = own.get(name, 0.0) + demand / speed
    worth = {name: reference[name] / own[name] for name in reference}
    weights = {slot: worth.get(name, 1.0) for slot, name in classes.items()}
    return weights if any(w != 1.0 for w in weights.values()) else None


def fleet_for_autoscaler(models: list[ModelSettings], inputs: EpochInputs, demands: dict[str, float], core: CoreConfig,
                         classes: dict[str, str]) -> tuple[dict[str, float], dict[str, frozenset[str]]]:
    """What the autoscaler needs of a mixed fleet: slot -> reference slots it is worth (empty:
    one each), for every slot whose class is known (`classes`, remembered beyond its agent's
    life so that a stopped slot keeps its place in the order), and slot -> the models it may be
    given (a slot that cannot meet a model's SLO is no host of it when choosing what to keep).
    `demands`: model -> reference slots it keeps busy (`ModelDemand.demand`), the weights' mix."""
    hosts = slot_hosts(inputs.agents)
    configs = model_configs(models, inputs.profiles, inputs.class_profiles)
    speeds = fleet_speeds(configs, core)
    if not speeds:
        return {}, hosts
    return slot_weights(demands, speeds, classes) or {}, placeable_hosts(hosts, classes, speeds)


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
    return sum(d.rate_rps * d.cost_s for d in model_demands(models, rates, profiles, core))


def model_demands(models: list[ModelSettings], rates: dict[str, float], profiles: dict[str, ModelProfile],
                  core: CoreConfig) -> list[ModelDemand]:
    """Each model's demand at its rate, on its reference profile, in `models` order."""
    return [model_demand(m, rates.get(m.name, 0.0), core, []) for m in model_configs(models, profiles)]


def next_assignment(models: list[ModelConfig], rates: dict[str, float], shards: list[str],
                    hosts: dict[str, frozenset[str]], previous: Assignment | None, *, core: CoreConfig,
                    placement: PlacementConfig, slot_classes: dict[str, str] | None = None) -> Assignment:
    """Rates, profiles (in `models`), live shards, what each slot runs and the previous
    assignment -> the next one (its epoch is the previous one's + 1). The one way from rates to
    an assignment: the live coordinator and the simulator both call it, with the shards' core
    configuration. `slot_classes` (slot -> class, the keys of `ModelConfig.class_profiles`):
    a mixed fleet, placed by speed; None or one class: every slot worth one."""
    speeds = fleet_speeds(models, core) if slot_classes else {}
    hosts = placeable_hosts(hosts, slot_classes or {}, speeds)
    by_model = models_hosted(hosts)
    hosts_of = {m.name: list(by_model.get(m.name, ())) for m in models}
    counts = split_counts(previous, rates, {name: len(h) for name, h in hosts_of.items()}, len(shards), placement)
    demands = []
    for m in models:
        share = model_demand(m, rates.get(m.name, 0.0) / counts[m.name], core, hosts_of[m.name])
        demands += [msgspec.structs.replace(share, name=piece) for piece in piece_names(m.name, counts[m.name])]
    weights = None
    if speeds:
        totals: dict[str, float] = {}
        for d in demands:
            totals[base_model(d.name)] = totals.get(base_model(d.name), 0.0) + d.demand
        weights = slot_weights(totals, speeds, {s: c for s, c in (slot_classes or {}).items() if s in hosts})
    return plan_assignment(previous, demands, shards, sorted(hosts), placement, weights)


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
