"""The live autoscaler's pure parts: slot phases (coordinator/slots.py), the local actuator
(runtime/actuator.py), the shard's interval load, and the config table that feeds `decide`."""

from __future__ import annotations

import random

import msgspec
import pytest

from coordinator.autoscale import AutoscaleConfig
from coordinator.epoch import shard_rates
from coordinator.slots import (
    NOT_QUIET,
    SlotPhases,
    SlotSeen,
    apply_target,
    autoscale_status,
    held_slots,
    keep_hosts,
    observe,
    phases_from_status,
)
from runtime.actuator import actuate
from runtime.cluster_config import AutoscaleEntry
from schemas.control import (
    Assignment,
    AutoscaleStatus,
    ModelLoad,
    ShardHeartbeat,
    autoscale_status_decoder,
    encode,
    freshest,
)
from shard.service.follower import IntervalLoad, Totals, interval_load

RANKED = ["s0", "s1", "s2", "s3"]


def seen(at_ns: int = 10, open_plans: int = 0, slots: list[str] = RANKED) -> dict[str, SlotSeen]:
    return {s: SlotSeen(plans_open=open_plans, seen_ns=at_ns) for s in slots}


def test_scaling_down_drains_the_least_preferred_slots_first() -> None:
    phases = apply_target(SlotPhases(), RANKED, 2, seen(), now_ns=100)
    assert phases.draining == {"s2": NOT_QUIET, "s3": NOT_QUIET}
    assert sorted(phases.serving(seen())) == ["s0", "s1"]


def test_a_drained_slot_is_released_only_when_no_shard_holds_it_and_a_later_heartbeat_shows_it_empty() -> None:
    phases = SlotPhases(draining={"s3": NOT_QUIET})
    held = frozenset({"s3"})  # its shard still owns it or has a plan on it
    assert observe(phases, seen(), held, 100).draining == {"s3": NOT_QUIET}
    quiet = observe(phases, seen(at_ns=90), frozenset(), 100)
    assert quiet.draining == {"s3": 100} and not quiet.released  # quiet from now on
    stale = observe(quiet, seen(at_ns=90), frozenset(), 200)
    assert stale.draining == {"s3": 100}, "a heartbeat from before the quiet moment proves nothing"
    busy = observe(quiet, seen(at_ns=150, open_plans=1), frozenset(), 200)
    assert busy.draining == {"s3": 100}, "plans still open: not released"
    done = observe(quiet, seen(at_ns=150), frozenset(), 200)
    assert done.released == {"s3"} and not done.draining


def test_a_shard_that_holds_the_slot_again_makes_it_not_quiet() -> None:
    phases = SlotPhases(draining={"s3": 100})
    assert observe(phases, seen(at_ns=150), frozenset({"s3"}), 200).draining == {"s3": NOT_QUIET}


def test_held_slots_are_the_shards_held_slots_and_the_newest_assignments() -> None:
    shards = {"a": ShardHeartbeat(shard_id="a", slots_held=["s1"])}
    assert held_slots(shards, Assignment(slots={"s0": "a"})) == {"s0", "s1"}


def test_a_starting_slot_serves_once_a_heartbeat_arrives_after_it_was_asked_for() -> None:
    phases = apply_target(SlotPhases(), RANKED, 3, seen(slots=["s0", "s1"]), now_ns=100)
    assert phases.starting == {"s2": 100}
    assert observe(phases, seen(at_ns=50, slots=["s0", "s1", "s2"]), frozenset(), 150).starting == {"s2": 100}
    later = observe(phases, seen(at_ns=120, slots=["s0", "s1", "s2"]), frozenset(), 150)
    assert not later.starting and "s2" in later.serving(seen(slots=["s0", "s1", "s2"]))


def test_scaling_up_takes_a_draining_slot_back_before_starting_a_cold_one() -> None:
    phases = SlotPhases(draining={"s3": NOT_QUIET})
    after = apply_target(phases, RANKED, 4, seen(), now_ns=100)
    assert not after.draining and not after.starting and after.serving(seen()) == set(RANKED)


def test_a_released_or_draining_slot_whose_agent_is_gone_is_idle() -> None:
    phases = SlotPhases(draining={"s2": 5}, released=frozenset({"s3"}))
    after = observe(phases, seen(slots=["s0", "s1"]), frozenset(), 100)
    status = autoscale_status(after, RANKED, seen(slots=["s0", "s1"]), target_slots=2)
    assert status.active == ["s0", "s1"] and status.idle == ["s2", "s3"] and not status.draining


def test_every_slot_is_in_exactly_one_list_of_the_published_status() -> None:
    phases = SlotPhases(starting={"s2": 1}, draining={"s1": NOT_QUIET}, released=frozenset({"s3"}))
    status = autoscale_status(phases, RANKED, seen(slots=["s0", "s1", "s3"]), target_slots=2)
    assert (status.active, status.starting, status.draining, status.released, status.idle) == (
        ["s0"], ["s2"], ["s1"], ["s3"], [])
    assert autoscale_status_decoder.decode(encode(status)) == status


def test_a_new_leader_takes_over_the_published_phases_and_sees_released_slots_quiet_itself() -> None:
    status = AutoscaleStatus(starting=["s2"], draining=["s3"], released=["s1"])
    phases = phases_from_status(status, 7)
    assert phases.starting == {"s2": 7} and phases.draining == {"s3": NOT_QUIET, "s1": NOT_QUIET}
    assert phases.released == frozenset()


def test_a_starting_slot_drained_while_its_agent_runs_is_drained_like_any_other() -> None:
    """Seed 1596: a leader that inherited "starting" cannot know its predecessor gave it no work."""
    phases = apply_target(SlotPhases(starting={"s3": 5}), RANKED, 2, seen(), now_ns=100)
    assert phases.draining.get("s3") == NOT_QUIET and "s3" not in phases.released


# ---- the local actuator ----------------------------------------------------------------------
AGENTS = {"a0": ["s0"], "a1": ["s1"], "a2": ["s2"]}


def test_the_actuator_does_nothing_before_a_decision() -> None:
    plan = actuate(None, AGENTS, {"a0", "a1", "a2"}, {}, 0.0, 5.0)
    assert plan.start == [] and plan.stop == []


def test_the_actuator_stops_only_agents_whose_slots_are_all_released() -> None:
    status = AutoscaleStatus(active=["s0"], draining=["s1"], released=["s2"])
    assert actuate(status, AGENTS, {"a0", "a1", "a2"}, {}, 0.0, 5.0).stop == ["a2"]
    two = {"a0": ["s0"], "a1": ["s1", "s2"]}
    assert actuate(status, two, {"a0", "a1"}, {}, 0.0, 5.0).stop == [], "s1 of the same agent still drains"


def test_the_actuator_starts_a_starting_slots_agent_after_the_cold_start() -> None:
    status = AutoscaleStatus(active=["s0"], starting=["s1"], idle=["s2"])
    first = actuate(status, AGENTS, {"a0"}, {}, 10.0, 5.0)
    assert first.start == [] and first.asked_s == {"a1": 10.0}
    assert actuate(status, AGENTS, {"a0"}, first.asked_s, 14.9, 5.0).start == []
    assert actuate(status, AGENTS, {"a0"}, first.asked_s, 15.0, 5.0).start == ["a1"]
    assert actuate(status, AGENTS, {"a0"}, {}, 10.0, 0.0).start == ["a1"]


# ---- the shard's interval load and the config table ----------------------------------------------
def test_a_shard_reports_busy_slot_seconds_per_second_and_the_bad_fraction_of_its_answers() -> None:
    assert interval_load(None, Totals(1, 0.0, 0, 0)) == IntervalLoad()
    before, after = Totals(0, 1.0, 5, 100, {"m": 60, "n": 40}), Totals(2_000_000_000, 2.0, 15, 200, {"m": 160, "n": 40})
    load = interval_load(before, after)
    assert (load.busy_slots, load.bad_rate, load.rates_rps) == (0.5, 0.1, {"m": 50.0, "n": 0.0})


def test_a_step_up_shows_in_the_autoscalers_rate_before_the_meter_catches_up() -> None:
    slow = ShardHeartbeat(shard_id="a", models={"m": ModelLoad(rate_rps=100.0, pending=0, recent_rps=400.0)})
    other = ShardHeartbeat(shard_id="b", models={"m": ModelLoad(rate_rps=50.0, pending=0, recent_rps=20.0)})
    assert shard_rates({"a": slow, "b": other}) == {"m": 450.0}


def test_the_config_table_has_exactly_the_deciders_fields_and_defaults() -> None:
    entry = AutoscaleEntry()
    assert not entry.enabled
    assert entry.decision() == AutoscaleConfig()
    assert type(entry.decision()) is AutoscaleConfig


def test_a_bad_autoscale_table_is_refused_with_the_field_named() -> None:
    try:
        msgspec.convert({"target_utilization": 1.5}, AutoscaleEntry)
    except msgspec.ValidationError as error:
        assert "target_utilization" in str(error)
    else:
        raise AssertionError("a utilisation above 1 was accepted")


def test_the_coordinator_drains_in_the_shards_preference_order_not_plain_sorted_names() -> None:
    """Regression: the core ranked slots with `sorted()` ("gpu-10" before "gpu-2") while shards
    pack work by `preference_order` ("gpu-2" before "gpu-10"), so scaling 3 slots to 2 drained
    gpu-2, one the shards keep busy, and kept gpu-10, the one they leave idle."""
    from coordinator.core import CoordinatorCore, CoordinatorTiming
    from coordinator.epoch import EpochInputs
    from coordinator.placement import PlacementConfig
    from schemas.control import AgentHeartbeat, AgentSlot
    from shard.core.config import CoreConfig

    slots = ["gpu-1", "gpu-2", "gpu-10"]
    timing = CoordinatorTiming(epoch_ns=10**9, lease_ns=3 * 10**9, heartbeat_ttl_ns=3 * 10**9)
    core = CoordinatorCore("c0", [], timing, core=CoreConfig(), placement=PlacementConfig(), now_ns=0,
                           autoscale=AutoscaleConfig(min_slots=2, down_cooldown_s=0, down_window_s=0), slots=slots)
    agents = {s: AgentHeartbeat(agent_id=s, device="cpu", slots=[AgentSlot(slot_id=s, models=[])]) for s in slots}
    for name, beat in agents.items():
        core.view.observe(f"agent.{name}", beat, 1, now_ns=0)
    core._autoscale(EpochInputs(shards={}, agents=agents, drains=frozenset(), previous=None), now_ns=10**9)
    assert core.autoscale_status.active == ["gpu-1", "gpu-2"]
    assert core.autoscale_status.draining == ["gpu-10"]


def test_a_released_slot_that_a_shard_holds_or_has_plans_open_is_draining_again() -> None:
    """Seed 1277 of `symphony sim control`: a new leader took over phases from a status older
    than what the cluster did since; released is re-checked against the heartbeats."""
    phases = SlotPhases(released=frozenset({"s2", "s3"}))
    after = observe(phases, seen(open_plans=0), held=frozenset({"s2"}), now_ns=50)
    assert after.released == {"s3"} and "s2" in after.draining
    after = observe(phases, seen(open_plans=3), held=frozenset(), now_ns=50)
    assert after.released == frozenset() and set(after.draining) == {"s2", "s3"}


def test_the_last_serving_host_of_a_model_is_not_drained() -> None:
    """Seed 1116: draining the only slot that runs some models left their shard with models and
    no slots; its rates vanished, the need fell and the pool flapped for 150 s."""
    hosts = {"s0": frozenset({"a"}), "s1": frozenset({"a"}), "s2": frozenset({"a", "b"}), "s3": frozenset({"a"})}
    assert keep_hosts(["s3", "s2", "s1"], {"s0", "s1", "s2", "s3"}, hosts) == ["s3", "s1"]
    phases = apply_target(SlotPhases(), RANKED, 1, seen(), now_ns=100, hosts=hosts)
    assert set(phases.draining) == {"s1", "s3"}


def test_an_actuator_never_goes_back_to_an_older_decision() -> None:
    """A stale read or a deposed leader's late put must not undo a newer decision."""
    old = AutoscaleStatus(lease_revision=5, seq=9, released=["s1"])
    new = AutoscaleStatus(lease_revision=7, seq=1, active=["s1"])
    assert freshest(old, new) is new and freshest(new, old) is new
    assert freshest(None, new) is new and freshest(new, None) is new
    newer_same_lease = AutoscaleStatus(lease_revision=7, seq=2)
    assert freshest(newer_same_lease, new) is newer_same_lease


@pytest.mark.parametrize("seed", range(30))
def test_keep_hosts_keeps_what_asking_every_remaining_slot_keeps(seed: int) -> None:
    """keep_hosts tracks the models the remaining slots run instead of asking each of them per
    model: the same slots go, in the same order, as the first form let go."""
    rng = random.Random(seed)
    slots = [f"s{k}" for k in range(rng.randrange(1, 16))]
    hosts = {s: frozenset(rng.sample("abcdef", rng.randrange(0, 4))) for s in slots if rng.random() < 0.9}
    serving = {s for s in slots if rng.random() < 0.8}
    drain = rng.sample(slots, rng.randrange(0, len(slots) + 1))
    remaining, models, allowed = serving - set(drain), {m for s in serving for m in hosts.get(s, ())}, []
    for slot in drain:
        stranded = [m for m in hosts.get(slot, ()) if not any(m in hosts.get(o, ()) for o in remaining)]
        if slot in serving and stranded and set(stranded) <= models:
            remaining.add(slot)
        else:
            allowed.append(slot)
    assert keep_hosts(drain, serving, hosts) == allowed
