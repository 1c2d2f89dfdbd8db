"""Property tests: on random workloads every policy gives every request exactly one outcome,
never overlaps batches on a slot, never exceeds a profile's max batch, and (for the policies
that promise it) only dispatches batches predicted to meet their deadline, on the slot it runs on
(a mixed fleet's slots differ in speed). Same seed, same run. The checkers live in
`load.sim.checkers`, outside the engine."""

import random

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from load.sim.kernel import SimOptions, simulate
from load.sim.swarm import draw_case, run_swarm_seed
from load.workload import LoadedWorkload, ModelWorkload, Segment, Workload, with_slot_speeds
from schemas.profile import profile_from_sleep_spec
from shard.core.config import CoreConfig, DropPolicy, SlotChoice, SlotProfiles
from shard.core.policies import POLICIES

models_strategy = st.lists(
    st.tuples(
        st.sampled_from([20, 300, 1082, 4000]),  # slope us
        st.sampled_from([500, 5204, 15000]),  # intercept us
        st.sampled_from([30, 100, 400]),  # slo ms
        st.sampled_from([50, 400, 2000]),  # rps
        st.sampled_from(["const", "poisson", "gamma:0.2"]),
        st.sampled_from([1, 8, 499]),  # max batch
    ),
    min_size=1,
    max_size=4,
)


def _loaded(models, slots: int, seed: int) -> LoadedWorkload:
    entries, profiles = [], {}
    for i, (slope, intercept, slo, rps, arrival, batch_max) in enumerate(models):
        spec = f"sleep:{slope},{intercept}"
        entries.append(ModelWorkload(
            name=f"m{i}", profile=spec, slo_ms=slo, arrival=arrival, batch_size_max=batch_max,
            warmup=[Segment(rps=rps, seconds=0.2)], bench=[Segment(rps=rps, seconds=0.8)],
        ))
        profiles[f"m{i}"] = profile_from_sleep_spec(spec, batch_max)
    return LoadedWorkload(workload=Workload(seed=seed, slots=slots, models=entries), profiles=profiles)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    models=models_strategy,
    slots=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    policy=st.sampled_from(sorted(POLICIES)),
    drop=st.sampled_from(list(DropPolicy)),
    choice=st.sampled_from(list(SlotChoice)),
    pack_guard_ms=st.sampled_from([0, 5]),
)
def test_every_policy_keeps_the_invariants(models, slots, seed, policy, drop, choice, pack_guard_ms) -> None:
    loaded = _loaded(models, slots, seed)
    core = CoreConfig(drop=drop, slot_choice=choice, pack_guard_ns=pack_guard_ms * 1_000_000)
    options = SimOptions(checks=True, core=core)
    first = simulate(loaded, policy, options)  # raises InvariantViolation on any breach
    assert all(code != 0 for code in first.outcome)
    second = simulate(loaded, policy, options)
    assert first.outcome == second.outcome
    assert first.batches == second.batches


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    models=models_strategy,
    slots=st.integers(2, 6),
    seed=st.integers(0, 10_000),
    policy=st.sampled_from(sorted(POLICIES)),
    mode=st.sampled_from(list(SlotProfiles)),
)
def test_every_policy_keeps_the_invariants_on_a_mixed_fleet(models, slots, seed, policy, mode) -> None:
    """Slot speeds from {1, 0.5, 0.25}, drawn from the seed's own `:speeds` generator (as the swarm
    draws them)."""
    rng = random.Random(f"{seed}:speeds")
    loaded = with_slot_speeds(_loaded(models, slots, seed), [rng.choice([1.0, 0.5, 0.25]) for _ in range(slots)])
    options = SimOptions(checks=True, core=CoreConfig(slot_profiles=mode))
    first = simulate(loaded, policy, options)
    assert all(code != 0 for code in first.outcome)
    assert first.batches == simulate(loaded, policy, options).batches


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_swarm_seeds_hold(seed: int) -> None:
    assert run_swarm_seed(seed) is None, f"replay: symphony sim fuzz --seed {seed}"


def test_swarm_draws_are_reproducible() -> None:
    assert msgspec.json.encode(draw_case(5)) == msgspec.json.encode(draw_case(5))
