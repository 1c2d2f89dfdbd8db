"""The coordinator's decisions (coordinator/core.py), driven only through `handle()` with
explicit time: leadership by lease, epochs that wait for a warm view, that are never written
empty, that keep models where they are, and writes by compare-and-swap."""

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import core
from coordinator.demand import class_speeds
from coordinator.epoch import EpochInputs, ModelSettings, decide_epoch, model_configs, shard_rates, slot_classes
from coordinator.membership import ReadOutcome
from coordinator.placement import PlacementConfig
from schemas.control import AgentHeartbeat, AgentSlot, Assignment, ModelLoad, ShardHeartbeat
from schemas.profile import ModelProfile, profile_from_sleep_spec
from shard.core.config import CoreConfig

S = 1_000_000_000
TIMING = core.CoordinatorTiming(epoch_ns=5 * S, lease_ns=3 * S, heartbeat_ttl_ns=3 * S)
MODELS = [ModelSettings(name="jax_model", slo_ms=100, kind="sleep:500,2000", batch_size_max=32),
          ModelSettings(name="sleep_model", slo_ms=100, kind="sleep:1082,5204", batch_size_max=64)]
AGENTS = {"jax": ["j0", "j1"], "sleep": ["s0", "s1"]}


def new_core(now_ns: int = 0) -> core.CoordinatorCore:
    return core.CoordinatorCore("c0", MODELS, TIMING, core=CoreConfig(), placement=PlacementConfig(), now_ns=now_ns)


def of(commands: list, kind: type) -> list:
    return [c for c in commands if isinstance(c, kind)]


def notes(commands: list) -> list[str]:
    return [c.event for c in of(commands, core.Note)]


def join(c: core.CoordinatorCore, now_ns: int, shards=("shard-0", "shard-1"), revision: int = 1) -> None:
    for shard in shards:
        beat = ShardHeartbeat(shard_id=shard, models={})
        c.handle(core.MemberUpdate(key=f"shard.{shard}", heartbeat=beat, revision=revision), now_ns)
    for agent, slots in AGENTS.items():
        model = "jax_model" if agent == "jax" else "sleep_model"
        beat = AgentHeartbeat(agent_id=agent, device="cpu", slots=[AgentSlot(slot_id=s, models=[model]) for s in slots])
        c.handle(core.MemberUpdate(key=f"agent.{agent}", heartbeat=beat, revision=revision), now_ns)


def tick(c: core.CoordinatorCore, now_ns: int) -> list:
    """A tick whose lease writes (if any) succeed at once."""
    commands = c.handle(core.Tick(), now_ns)
    if of(commands, core.TakeLease) or of(commands, core.RenewLease):
        c.handle(core.LeaseResult(outcome=core.LeaseOutcome.HELD, revision=7), now_ns)
        commands += c.handle(core.Tick(), now_ns)
    return commands


def lead(c: core.CoordinatorCore, now_ns: int) -> list:
    """Take the lease; returns the commands of the tick after."""
    commands = c.handle(core.Tick(), now_ns)
    assert of(commands, core.TakeLease)
    c.handle(core.LeaseResult(outcome=core.LeaseOutcome.HELD, revision=7), now_ns)
    return c.handle(core.Tick(), now_ns)


def epoch(c: core.CoordinatorCore, now_ns: int, previous: Assignment | None, revision: int = 0) -> Assignment | None:
    """Run one epoch if the core starts one; returns what it wrote (and tells it the write worked)."""
    commands = tick(c, now_ns)
    if not of(commands, core.ReadAssignment):
        return None
    commands = c.handle(core.AssignmentRead(assignment=previous, revision=revision), now_ns)
    writes = of(commands, core.WriteAssignment)
    if not writes:
        return None
    c.handle(core.AssignmentWritten(outcome=core.WriteOutcome.WRITTEN), now_ns)
    return writes[0].assignment


def test_a_new_leader_writes_nothing_before_its_view_has_watched_for_a_ttl() -> None:
    c = new_core()
    join(c, 0)
    assert not of(lead(c, S), core.ReadAssignment), "the view is not warm yet: a member may be missing"
    first = epoch(c, TIMING.heartbeat_ttl_ns, None)
    assert first is not None and first.epoch == 1
    assert set(first.models) == {"jax_model", "sleep_model"}
    assert first.models["jax_model"] != first.models["sleep_model"], "the two host classes need two shards"


def test_no_assignment_is_written_while_no_shard_is_live() -> None:
    c = new_core()
    join(c, 0, shards=())
    lead(c, 0)
    assert of(tick(c, 4 * S), core.ReadAssignment)
    commands = c.handle(core.AssignmentRead(assignment=None, revision=0), 4 * S)
    assert not of(commands, core.WriteAssignment) and notes(commands) == ["epoch_no_live_shards"]


def test_models_stay_where_they_are_epoch_after_epoch_while_members_and_rates_hold() -> None:
    c = new_core()
    join(c, 0)
    lead(c, 0)
    current = epoch(c, 3 * S, None)
    for k in range(1, 40):
        now = 3 * S + k * TIMING.epoch_ns
        join(c, now, revision=k + 1)  # fresh heartbeats, same members
        assert epoch(c, now, current, revision=1) is None


def test_a_member_silent_for_a_ttl_is_read_before_it_is_declared_gone_and_its_models_move() -> None:
    c = new_core()
    join(c, 0, shards=("shard-0", "shard-1", "shard-2"))
    lead(c, 0)
    current = epoch(c, 3 * S, None)
    victim = current.models["jax_model"]
    survivors = [s for s in ("shard-0", "shard-1", "shard-2") if s != victim]
    now = 4 * S  # the victim's last heartbeat was at 0
    join(c, now, shards=survivors, revision=2)  # everyone else keeps heartbeating
    commands = tick(c, now)
    assert of(commands, core.ReadMember) == [core.ReadMember(key=f"shard.{victim}")]
    assert not of(commands, core.WriteAssignment)
    commands = c.handle(core.MemberRead(key=f"shard.{victim}", outcome=ReadOutcome.NOT_FOUND), now)
    assert notes(commands) == ["member_gone"]
    moved = epoch(c, now, current, revision=1)
    assert moved.models["jax_model"] in survivors and moved.epoch == current.epoch + 1


def test_a_failed_read_of_a_suspect_removes_nobody() -> None:
    c = new_core()
    join(c, 0)
    c.handle(core.MemberRead(key="shard.shard-0", outcome=ReadOutcome.FAILED), 4 * S)
    assert "shard-0" in c.view.shards()


def test_leadership_ends_a_lease_after_the_last_renewal_was_sent_even_without_an_answer() -> None:
    c = new_core()
    lead(c, 0)
    assert c.leading(TIMING.lease_ns - 1)
    commands = c.handle(core.Tick(), TIMING.lease_ns // 3)
    assert of(commands, core.RenewLease) == [core.RenewLease(revision=7)]
    assert not c.leading(TIMING.lease_ns), "a paused leader stops acting before a standby can take over"


def test_a_raced_write_is_read_again_and_retried() -> None:
    c = new_core()
    join(c, 0)
    lead(c, 0)
    assert of(tick(c, 3 * S), core.ReadAssignment)
    commands = c.handle(core.AssignmentRead(assignment=None, revision=0), 3 * S)
    assert of(commands, core.WriteAssignment)[0].revision == 0
    assert notes(c.handle(core.AssignmentWritten(outcome=core.WriteOutcome.RACED), 3 * S)) == ["assignment_raced"]
    assert of(tick(c, 3 * S + 1), core.ReadAssignment), "retried at once"


def test_a_kv_that_lost_the_assignment_gets_it_back_with_the_same_placement_and_a_higher_epoch() -> None:
    c = new_core()
    join(c, 0)
    lead(c, 0)
    first = epoch(c, 3 * S, None)
    join(c, 3 * S + TIMING.epoch_ns, revision=2)
    again = epoch(c, 3 * S + TIMING.epoch_ns, None)  # the bucket came back empty
    assert again is not None and again.models == first.models and again.epoch > first.epoch


def test_a_watch_silent_for_a_ttl_is_restarted() -> None:
    c = new_core()
    join(c, 0)
    assert not of(c.handle(core.Tick(), TIMING.heartbeat_ttl_ns), core.RestartWatches)
    commands = c.handle(core.Tick(), TIMING.heartbeat_ttl_ns + 1)
    assert of(commands, core.RestartWatches) and "watch_silent" in notes(commands)


def test_a_model_in_transit_keeps_its_rate_so_the_balance_rule_does_not_move_it_back() -> None:
    c = new_core()
    join(c, 0)
    busy = ShardHeartbeat(shard_id="shard-0", models={"jax_model": ModelLoad(rate_rps=500.0, pending=0)})
    c.handle(core.MemberUpdate(key="shard.shard-0", heartbeat=busy, revision=5), S)
    inputs = c._inputs(None, S)
    quiet = ShardHeartbeat(shard_id="shard-0", models={})
    c.handle(core.MemberUpdate(key="shard.shard-0", heartbeat=quiet, revision=6), 2 * S)
    assert inputs.rates["jax_model"] == 500.0
    assert c._inputs(None, 3 * S).rates["jax_model"] == 500.0


def test_merged_profiles_follow_every_update_and_withdrawal_as_a_full_merge_would() -> None:
    """The merged profile is cached per model: after any sequence of updates and withdrawals it
    is the slowest of the profiles left, folded in agent order, and a model with none left has none."""
    c = new_core()
    rng = random.Random(3)
    for _ in range(60):
        model, agent = rng.choice(["a", "b", "c"]), rng.choice(["x", "y", "z"])
        profile = None if rng.random() < 0.3 else profile_from_sleep_spec(
            f"sleep:{rng.randrange(100, 2000)},{rng.randrange(1000, 8000)}", rng.choice((8, 16)))
        c.handle(core.ProfileUpdate(model=model, agent=agent, profile=profile), 0)
        full: dict[str, ModelProfile] = {}
        for (name, _agent), each in sorted(c.profiles.items()):
            full[name] = each if name not in full else full[name].merge_slowest(each)
        merged = c._inputs(None, S).profiles
        assert merged == full and list(merged) == list(full)


# ---- mixed fleets (issue 16): slot classes by device -------------------------------------------

SLOW = profile_from_sleep_spec("sleep:1000,60000", 32)  # a batch of one takes 61 ms on the slow class
MIXED_MODELS = [ModelSettings(name="loose", slo_ms=500, kind="sleep:1000,60000", batch_size_max=32),
                ModelSettings(name="tight", slo_ms=50, kind="sleep:1000,60000", batch_size_max=32)]
MIXED_AGENTS = {"fast": ("h200", ["z0", "z1"]), "slow": ("t4", ["a0", "a1", "a2", "a3"])}  # slow ones first by name


def join_mixed(c: core.CoordinatorCore, now_ns: int, revision: int = 1) -> None:
    for shard in ("shard-0", "shard-1"):
        beat = ShardHeartbeat(shard_id=shard, models={"loose": ModelLoad(rate_rps=20, pending=0),
                                                      "tight": ModelLoad(rate_rps=20, pending=0)})
        c.handle(core.MemberUpdate(key=f"shard.{shard}", heartbeat=beat, revision=revision), now_ns)
    for agent, (device, slots) in MIXED_AGENTS.items():
        beat = AgentHeartbeat(agent_id=agent, device=device,
                              slots=[AgentSlot(slot_id=s, models=["loose", "tight"]) for s in slots])
        c.handle(core.MemberUpdate(key=f"agent.{agent}", heartbeat=beat, revision=revision), now_ns)
        for name in ("loose", "tight"):
            profile = SLOW if agent == "slow" else SLOW.at_speed(2.0)
            c.handle(core.ProfileUpdate(model=name, agent=agent, profile=profile), now_ns)


def test_profiles_are_merged_per_device_class_besides_the_slowest_over_all() -> None:
    c = core.CoordinatorCore("c0", MIXED_MODELS, TIMING, core=CoreConfig(), placement=PlacementConfig(), now_ns=0)
    join_mixed(c, 0)
    inputs = c._inputs(None, S)
    assert inputs.profiles["tight"].forward_mean_us == SLOW.forward_mean_us  # merged: device "slowest"
    assert inputs.class_profiles["tight"] == {"h200": SLOW.at_speed(2.0), "t4": SLOW}


def test_a_model_that_misses_its_slo_on_the_slow_class_gets_only_fast_slots() -> None:
    """`tight` (50 ms SLO) cannot run a batch of one in time on the slow class (61 ms), and can
    on the fast one (30.5 ms): its shard holds only fast slots; `loose` gets the slow ones."""
    c = core.CoordinatorCore("c0", MIXED_MODELS, TIMING, core=CoreConfig(), placement=PlacementConfig(), now_ns=0)
    join_mixed(c, 0)
    lead(c, 0)
    first = epoch(c, 3 * S, None)
    assert first is not None
    tight, loose = first.models["tight"], first.models["loose"]
    assert tight != loose
    assert {s for s, shard in first.slots.items() if shard == tight} <= {"z0", "z1"}
    assert {s for s, shard in first.slots.items() if shard == loose} >= {"a0", "a1", "a2", "a3"}


def test_one_device_class_decides_as_the_homogeneous_fleet_did() -> None:
    """Every agent on one device: the per-class profiles equal the merged ones and every
    epoch's assignment is the one a coordinator without class profiles writes."""
    def run(classes: bool) -> list:
        c = new_core()
        join(c, 0)
        for agent, model in (("jax", "jax_model"), ("sleep", "sleep_model")):
            c.handle(core.ProfileUpdate(model=model, agent=agent, profile=profile_from_sleep_spec(
                "sleep:800,3000", 32)), 0)
        lead(c, 0)
        if not classes:
            c._merged_profiles = lambda agents: (  # type: ignore[method-assign]
                core.CoordinatorCore._merged_profiles(c, agents)[0], {})
        written, current = [], None
        for k in range(6):
            now = 3 * S + k * TIMING.epoch_ns
            join(c, now, revision=k + 2)
            current = epoch(c, now, current, revision=1) or current
            written.append(current)
        return written

    assert run(True) == run(False)


@st.composite
def mixed_fleet(draw: st.DrawFn) -> tuple:
    """Models with random SLOs and linear profiles, agents of random device classes (speeds
    0.5-3x) hosting random subsets of the models, each reporting its class's profile, and
    shards that report random rates."""
    speed_of = {"slow": 0.5, "mid": 1.0, "fast": draw(st.sampled_from([1.5, 3.0]))}
    names = [f"m{i}" for i in range(draw(st.integers(1, 5)))]
    models = [ModelSettings(name=n, slo_ms=draw(st.sampled_from([8.0, 25.0, 100.0])), kind="sleep:1000,5000",
                            batch_size_max=16) for n in names]
    base = {n: profile_from_sleep_spec(f"sleep:{draw(st.integers(100, 2000))},{draw(st.integers(1000, 12000))}", 16)
            for n in names}
    agents, profiles = {}, []
    for a in range(draw(st.integers(1, 5))):
        device = draw(st.sampled_from(sorted(speed_of)))
        slots = [AgentSlot(slot_id=f"g{a}s{k}", models=sorted(draw(st.sets(st.sampled_from(names), min_size=1))))
                 for k in range(draw(st.integers(1, 3)))]
        agents[f"agent-{a}"] = AgentHeartbeat(agent_id=f"agent-{a}", device=device, slots=slots)
        for n in sorted({m for s in slots for m in s.models}):
            profiles.append((n, device, base[n].at_speed(speed_of[device])))
    merged: dict[str, ModelProfile] = {}
    for n, _device, p in profiles:
        merged[n] = merged[n].merge_slowest(p) if n in merged else p
    by_class = {n: core.merge_by_class([(d, p) for m, d, p in profiles if m == n]) for n in merged}
    shards = {f"shard-{i}": ShardHeartbeat(shard_id=f"shard-{i}", models={
        n: ModelLoad(rate_rps=draw(st.sampled_from([0.0, 50.0, 500.0])), pending=0) for n in names})
        for i in range(draw(st.integers(1, 3)))}
    return models, EpochInputs(shards=shards, agents=agents, drains=frozenset(), previous=None,
                               rates=shard_rates(shards), profiles=merged, class_profiles=by_class)


@settings(max_examples=150, deadline=None)
@given(mixed_fleet())
def test_a_mixed_fleet_gets_a_valid_assignment_and_no_model_on_a_class_that_misses_its_slo(case: tuple) -> None:
    models, inputs = case
    decision = decide_epoch(models, inputs, core=CoreConfig(), placement=PlacementConfig(), coordinator_id="c0")
    assert decision.reason == "changed" and not decision.errors, decision.errors
    configs = {m.name: m for m in model_configs(models, inputs.profiles, inputs.class_profiles)}
    classes = slot_classes(inputs.agents)
    served = decision.assignment.models_by_shard()
    for slot, shard in decision.assignment.slots.items():
        for name in served.get(shard, ()):
            speeds = class_speeds(configs[name], CoreConfig())
            assert speeds.get(classes[slot], 1.0) > 0, f"{name} on {slot} ({classes[slot]}): {speeds}"
    one_class = {a: msgspec.structs.replace(beat, device="mid") for a, beat in inputs.agents.items()}
    if all(len(by) == 1 for by in inputs.class_profiles.values()):
        plain = msgspec.structs.replace(inputs, class_profiles={}, agents=one_class)
        again = decide_epoch(models, plain, core=CoreConfig(), placement=PlacementConfig(), coordinator_id="c0")
        assert again == decision, "one class per model: decided as without classes"


def test_the_autoscaler_counts_fast_slots_as_more_and_ranks_them_first() -> None:
    """Two fast slots (2x) and four slow ones, a load that keeps 2.8 slow slots busy at 70%:
    four slow slots' worth, which two fast slots cover. The fast slots are kept, the slow ones
    drained, though by name they come first."""
    from coordinator.autoscale import AutoscaleConfig

    settings_ = [ModelSettings(name="loose", slo_ms=500, kind="sleep:1000,60000", batch_size_max=32)]
    slots = ["a0", "a1", "a2", "a3", "z0", "z1"]
    c = core.CoordinatorCore("c0", settings_, TIMING, core=CoreConfig(), placement=PlacementConfig(), now_ns=0,
                             autoscale=AutoscaleConfig(target_utilization=0.7, min_slots=1, down_cooldown_s=0,
                                                       down_window_s=0), slots=slots)
    for agent, (device, names) in MIXED_AGENTS.items():
        beat = AgentHeartbeat(agent_id=agent, device=device,
                              slots=[AgentSlot(slot_id=s, models=["loose"]) for s in names])
        c.view.observe(f"agent.{agent}", beat, 1, now_ns=0)
        c.handle(core.ProfileUpdate(model="loose", agent=agent,
                                    profile=SLOW if agent == "slow" else SLOW.at_speed(2.0)), 0)
    per_slot = 1 / (SLOW.forward_mean_us[31] / 32 / 1e6)  # requests a slow slot serves a second at batch 32
    shard = ShardHeartbeat(shard_id="shard-0", models={"loose": ModelLoad(rate_rps=2.8 * per_slot, pending=0)})
    c.view.observe("shard.shard-0", shard, 1, now_ns=0)
    inputs = c._inputs(None, S)
    c._autoscale(inputs, now_ns=S)
    status = c.autoscale_status
    assert 3.9 < status.need_slots < 4.1, status.need_slots  # in reference (slow) slots
    assert status.target_slots == 2
    assert status.active == ["z0", "z1"] and status.draining == ["a0", "a1", "a2", "a3"]


def test_classes_a_few_percent_apart_count_as_one_and_a_class_that_misses_the_slo_as_none() -> None:
    """Agents on the same hardware measure a few percent apart: that noise is no speed."""
    from shard.core.config import ModelConfig

    def config(slo_ms: float, **classes: ModelProfile) -> ModelConfig:
        merged = SLOW
        for p in classes.values():
            merged = merged.merge_slowest(p)
        return ModelConfig(name="m", slo_ns=int(slo_ms * 1e6), profile=merged, class_profiles=classes)

    assert class_speeds(config(500, a=SLOW, b=SLOW.at_speed(1.03)), CoreConfig()) == {"a": 1.0, "b": 1.0}
    fast = class_speeds(config(500, a=SLOW, b=SLOW.at_speed(2.0)), CoreConfig())
    assert fast["a"] == 1.0 and 1.99 < fast["b"] < 2.01
    assert class_speeds(config(50, a=SLOW, b=SLOW.at_speed(2.0)), CoreConfig())["a"] == 0.0
    nowhere = class_speeds(config(20, a=SLOW, b=SLOW.at_speed(2.0)), CoreConfig())
    assert nowhere["a"] == 1.0 and 1.99 < nowhere["b"] < 2.01, "fits nowhere: on every host, at a batch of one"
