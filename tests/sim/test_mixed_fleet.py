"""Mixed fleets in the simulator (issue 16): speeds 1.0 are the homogeneous fleet byte for byte;
a uniform fleet at one speed schedules exactly as the homogeneous one with every profile slowed;
the core sees each slot's class and every model's per-class profiles (the slowest as `profile`);
every policy keeps the invariants (a plan is never predicted shorter than its slot really takes)
in both slot_profiles modes."""

from collections.abc import Callable

import msgspec
import pytest

from load.schedule import build_schedule
from load.sim.cli import core_config
from load.sim.kernel import Kernel, ShardSpec, SimOptions, model_configs, simulate
from load.sim.partition import partitioned_shards
from load.workload import LoadedWorkload, classes_of_slots, load_workload, with_slot_speeds
from shard.core.actions import Step
from shard.core.config import CoreConfig, SlotProfiles
from shard.core.events import SlotAdded
from shard.core.policies import POLICIES, make_policy
from tests.factories import workload


def _batches(loaded: LoadedWorkload, policy: str, scale: float) -> tuple:
    run = simulate(loaded, policy, SimOptions(scale=scale))
    return run.batches, bytes(run.outcome), run.finish_ns.tobytes()


@pytest.mark.parametrize("policy", ["symphony", "symphony-plus", "nexus"])
def test_speeds_all_one_are_the_homogeneous_fleet(policy: str) -> None:
    example = load_workload("example")
    same = with_slot_speeds(example, [1.0] * 8)
    assert model_configs(same, 4.0) == model_configs(example, 4.0)
    assert _batches(same, policy, 4.0) == _batches(example, policy, 4.0)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_uniform_half_speed_fleet_is_the_fleet_of_slowed_profiles(policy: str) -> None:
    example = load_workload("example")
    half = with_slot_speeds(example, [0.5] * 8)
    slowed = msgspec.structs.replace(example, profiles={m: p.at_speed(0.5) for m, p in example.profiles.items()})
    assert _batches(half, policy, 2.0) == _batches(slowed, policy, 2.0)


def test_the_core_sees_the_classes_and_the_slowest_profile() -> None:
    mixed = load_workload("mixed")
    config = model_configs(mixed, 1.0)[0]
    assert set(config.class_profiles) == {"x1.0", "x0.5"}
    assert config.profile.forward_mean_us == config.class_profiles["x0.5"].forward_mean_us
    assert model_configs(mixed, 1.0, slots=4)[0].class_profiles.keys() == {"x1.0"}  # only the classes present
    models = model_configs(mixed, 1.0)
    policy = make_policy("symphony", models, CoreConfig())
    seen: list[SlotAdded] = []

    def handle(event: object, now_ns: int) -> Step:  # records the slots the policy is given
        if isinstance(event, SlotAdded):
            seen.append(event)
        return policy.handle(event, now_ns)

    sim = Kernel([ShardSpec(policy, [m.name for m in models], list(range(8)))], models,
                 build_schedule(mixed.workload, scale=0.1), SimOptions(), mixed.slot_classes)
    sim.handles = [handle]
    sim.run()
    assert [e.slot_class for e in seen] == ["x1.0"] * 4 + ["x0.5"] * 4


@pytest.mark.parametrize("mode", list(SlotProfiles))
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_keeps_the_invariants_on_a_mixed_fleet(policy: str, mode: SlotProfiles) -> None:
    loaded = with_slot_speeds(workload(slots=4, rps=900, models=2), [1.0, 0.5, 0.25, 1.0])
    options = SimOptions(checks=True, core=CoreConfig(slot_profiles=mode))
    first = simulate(loaded, policy, options)  # raises InvariantViolation on any breach
    assert all(code != 0 for code in first.outcome)
    assert first.batches == simulate(loaded, policy, options).batches


def test_slot_profiles_can_be_set_from_the_command_line() -> None:
    assert core_config(["slot_profiles=slowest"]).slot_profiles is SlotProfiles.SLOWEST
    assert core_config(["slot_profiles=per_slot"]).slot_profiles is SlotProfiles.PER_SLOT
    with pytest.raises(ValueError, match="slot_profiles"):
        core_config(["slot_profiles=fastest"])


# ---- a partitioned mixed fleet (--shards N --epoch-s E): the coordinator's placement by class -----------
def _tight_and_loose() -> LoadedWorkload:
    """m0 at 25 ms meets its SLO at no batch on a quarter-speed slot (one request takes 25 ms
    there), m1 at 300 ms meets it anywhere; three slots at full speed, three at a quarter."""
    loaded = workload(slots=6, rps=300, models=2, slo_ms=300)
    tight = msgspec.structs.replace(loaded.workload.models[0], slo_ms=25)
    loaded = msgspec.structs.replace(loaded, workload=msgspec.structs.replace(
        loaded.workload, models=[tight, *loaded.workload.models[1:]]))
    return with_slot_speeds(loaded, [1.0, 0.25] * 3)


def _classes_seen(loaded: LoadedWorkload, options: SimOptions) -> dict[str, set[str]]:
    """A partitioned run under the checkers: model -> the classes of the slots its shard was
    ever given (at the start and by every epoch's moves)."""
    models = model_configs(loaded, options.scale)
    specs = partitioned_shards(models, loaded.workload.slots, options, "symphony",
                               classes_of_slots(loaded, loaded.workload.slots))
    sim = Kernel(specs, models, build_schedule(loaded.workload, scale=options.scale, seed=options.seed), options,
                 loaded.slot_classes)
    seen: dict[int, set[str]] = {}

    def recording(k: int, handle: Callable[[object, int], Step]) -> Callable[[object, int], Step]:
        def handle_and_record(event: object, now_ns: int) -> Step:
            if isinstance(event, SlotAdded):
                seen.setdefault(k, set()).add(event.slot_class)
            return handle(event, now_ns)
        return handle_and_record

    sim.handles = [recording(k, handle) for k, handle in enumerate(sim.handles)]
    run = sim.run()  # raises InvariantViolation on any breach
    assert sim.epochs and all(code != 0 for code in run.outcome)
    return {name: seen.get(k, set()) for k, spec in enumerate(specs) for name in spec.models}


def test_a_partitioned_mixed_fleet_keeps_a_model_off_the_class_too_slow_for_it() -> None:
    loaded = _tight_and_loose()
    options = SimOptions(checks=True, shards=2, epoch_s=0.5)
    seen = _classes_seen(loaded, options)
    assert seen["m0"] == {"x1.0"}  # never a quarter-speed slot, through every epoch's moves
    assert "x0.25" in seen["m1"]
    # Without the classes the coordinator would hand out slots blind: the first split alone gives
    # m0's shard a quarter-speed slot (slots by quota, in slot order).
    blind = partitioned_shards(model_configs(loaded, 1.0), 6, options, "symphony")
    m0_slots = next(spec.slots for spec in blind if "m0" in spec.models)
    assert any(loaded.slot_classes[s % 2] == "x0.25" for s in m0_slots)


@pytest.mark.parametrize("policy", ["symphony", "symphony-plus"])
def test_the_mixed_workload_partitioned_keeps_the_invariants(policy: str) -> None:
    options = SimOptions(checks=True, shards=2, epoch_s=1.0, scale=0.5)
    run = simulate(load_workload("mixed"), policy, options)
    assert run.epochs and all(code != 0 for code in run.outcome)
