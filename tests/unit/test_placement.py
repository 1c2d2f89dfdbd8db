"""The coordinator's epoch math: placement by host class, balance, stickiness, slot quotas and
the load-proportional signal."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.placement import (
    ModelDemand,
    PlacementConfig,
    allocate_slots,
    delay_quotas,
    erlang_c,
    late_rate,
    plan_assignment,
    rank_slots,
    weighted_count,
)
from schemas.control import Assignment

ALL = [f"s{i}" for i in range(8)]


def model(name: str, rate: float, cost: float = 0.001, hosts: list[str] = ALL, slo_s: float = 0.1,
          batch_s: float = 0.0) -> ModelDemand:
    return ModelDemand(name=name, rate_rps=rate, cost_s=cost, hosts=hosts, slo_s=slo_s, batch_s=batch_s)


def test_every_model_and_slot_is_placed_and_shards_are_balanced() -> None:
    models = [model(f"m{i}", 100 * (i + 1)) for i in range(6)]
    a = plan_assignment(None, models, ["A", "B", "C"], ALL)
    assert set(a.models) == {m.name for m in models}
    assert set(a.slots) == set(ALL)
    loads = list(a.demand.values())
    assert max(loads) <= 1.5 * (sum(loads) / 3)
    assert a.epoch == 1


def test_slots_follow_demand_with_at_least_one_each() -> None:
    models = [model("big", 5000), model("small", 10)]
    a = plan_assignment(None, models, ["A", "B"], ALL)
    owners = list(a.slots.values())
    big = a.models["big"]
    assert owners.count(big) == 7 and len(set(owners)) == 2


def test_placement_is_sticky_when_nothing_changes() -> None:
    models = [model(f"m{i}", 100 * (i + 1)) for i in range(6)]
    first = plan_assignment(None, models, ["A", "B", "C"], ALL)
    second = plan_assignment(first, models, ["A", "B", "C"], ALL)
    assert second.models == first.models and second.slots == first.slots
    assert second.epoch == first.epoch + 1


def test_a_dead_shard_models_move_and_the_rest_stay() -> None:
    models = [model(f"m{i}", 100 * (i + 1)) for i in range(6)]
    first = plan_assignment(None, models, ["A", "B", "C"], ALL)
    second = plan_assignment(first, models, ["A", "B"], ALL)
    assert set(second.models.values()) <= {"A", "B"}
    kept = [m for m, s in first.models.items() if s in ("A", "B")]
    moved_among_kept = [m for m in kept if second.models[m] != first.models[m]]
    assert len(moved_among_kept) <= PlacementConfig().moves_max


def test_models_on_different_slots_never_share_a_shard_when_shards_allow() -> None:
    gpu = ["g0", "g1"]
    cpu = ["c0", "c1", "c2"]
    models = [model("jax_a", 50, hosts=gpu), model("jax_b", 50, hosts=gpu), model("sleep", 500, hosts=cpu)]
    # A previous epoch that mixed the classes is repaired.
    mixed = Assignment(epoch=3, models={"jax_a": "A", "sleep": "A", "jax_b": "B"})
    a = plan_assignment(mixed, models, ["A", "B"], gpu + cpu)
    assert a.models["jax_a"] == a.models["jax_b"] != a.models["sleep"]
    for slot, shard in a.slots.items():
        for name, owner in a.models.items():
            if owner == shard:
                assert slot in next(m.hosts for m in models if m.name == name)


def test_a_class_keeps_its_shard_when_demand_shifts() -> None:
    gpu, cpu = ["g0"], ["c0", "c1"]
    first = plan_assignment(None, [model("jax", 500, hosts=gpu), model("sleep", 50, hosts=cpu)], ["A", "B"], gpu + cpu)
    models = [model("jax", 5, hosts=gpu), model("sleep", 5000, hosts=cpu)]
    second = plan_assignment(first, models, ["A", "B"], gpu + cpu)
    assert second.models == first.models


def test_similar_slos_are_grouped_on_a_fresh_placement() -> None:
    tight = [model(f"t{i}", 1000, slo_s=0.025) for i in range(3)]
    loose = [model(f"l{i}", 100, cost=0.01, slo_s=0.5) for i in range(3)]
    a = plan_assignment(None, tight + loose, ["A", "B"], ALL)
    assert len({a.models[m.name] for m in tight}) == 1
    assert len({a.models[m.name] for m in loose}) == 1


def test_desired_and_surplus_slots_are_the_load_proportional_signal() -> None:
    a = plan_assignment(None, [model("m", 2000, cost=0.001)], ["A"], ALL, PlacementConfig(target_utilization=0.8))
    assert a.desired_slots == 3  # 2 busy slots / 0.8 = 2.5 -> 3
    assert a.surplus_slots == 5
    quiet = plan_assignment(a, [model("m", 0.0)], ["A"], ALL)
    assert quiet.desired_slots == 0 and quiet.surplus_slots == 8


@pytest.mark.parametrize("shards", [[], ["A"]])
def test_degenerate_inputs(shards: list[str]) -> None:
    a = plan_assignment(None, [model("m", 10)], shards, ALL)
    assert (a.models == {}) == (not shards)


def test_erlang_c_matches_known_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: the chance of waiting is the utilisation
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(4, 4.0) == 1.0 and erlang_c(4, 0.0) == 0.0


def test_late_rate_falls_with_slots_and_rises_with_tighter_slos() -> None:
    loose = [model("m", 3000, cost=0.001, slo_s=0.3, batch_s=0.02)]  # 3 slots busy
    tight = [model("m", 3000, cost=0.001, slo_s=0.03, batch_s=0.02)]
    assert late_rate(tight, 3) == 3000  # cannot keep up: all late
    assert late_rate(tight, 4) > late_rate(tight, 5) > late_rate(tight, 6) > 0
    assert late_rate(loose, 4) < late_rate(tight, 4)


def test_delay_quotas_give_tight_slos_more_headroom_than_demand_shares() -> None:
    """Two shards of equal demand: the one whose SLOs leave little time to wait for a slot gets
    the spare slots; proportional shares would split them evenly."""
    twelve = [f"s{i}" for i in range(12)]
    tight = model("tight", 3000, cost=0.001, slo_s=0.03, batch_s=0.02, hosts=twelve)
    loose = model("loose", 3000, cost=0.001, slo_s=0.5, batch_s=0.02, hosts=twelve)
    placement = {"tight": "A", "loose": "B"}
    quota = delay_quotas(placement, {"tight": tight, "loose": loose}, ["A", "B"], 12)
    assert sum(quota.values()) == 12 and quota["B"] >= 4  # both keep up
    assert quota["A"] > quota["B"]
    a = plan_assignment(None, [tight, loose], ["A", "B"], twelve)
    owners = list(a.slots.values())
    assert owners.count(a.models["tight"]) == quota["A"]
    even = plan_assignment(None, [tight, loose], ["A", "B"], twelve, PlacementConfig(quotas="demand"))
    assert sorted(list(even.slots.values()).count(s) for s in ("A", "B")) == [6, 6]


def test_delay_quotas_fall_back_to_demand_shares_when_slots_cannot_keep_up() -> None:
    models = {"a": model("a", 6000, batch_s=0.02), "b": model("b", 2000, batch_s=0.02)}
    quota = delay_quotas({"a": "A", "b": "B"}, models, ["A", "B"], 6)
    assert quota == {"A": 4, "B": 2}


def _scan_quotas(placement: dict[str, str], models: dict[str, ModelDemand], shards: list[str],
                 slots: int) -> dict[str, int]:
    """delay_quotas as first written: every shard's key recomputed at every greedy step."""
    members = {s: [models[m] for m, owner in placement.items() if owner == s] for s in shards}
    quota = {s: max(1, math.floor(sum(m.demand for m in members[s])) + 1) for s in shards}
    if sum(quota.values()) > slots:
        return delay_quotas(placement, models, shards, slots)  # the fallback is not the greedy
    late = {s: late_rate(members[s], quota[s]) for s in shards}
    after = {s: late_rate(members[s], quota[s] + 1) for s in shards}
    for _ in range(slots - sum(quota.values())):
        best = max(shards, key=lambda s: (late[s] - after[s], sum(m.demand for m in members[s]) / quota[s], s))
        quota[best] += 1
        late[best], after[best] = after[best], late_rate(members[best], quota[best] + 1)
    return quota


@pytest.mark.parametrize("seed", range(40))
def test_delay_quotas_pick_what_a_scan_of_every_shard_picks(seed: int) -> None:
    """The greedy steps keep a heap of the shards' keys: the quotas are the ones a scan of every
    shard at every step gives, ties (idle shards, equal demands) included."""
    rng = random.Random(seed)
    shards = [f"s{k}" for k in range(rng.randrange(1, 12))]
    models = {f"m{k}": model(f"m{k}", rng.choice((0.0, 400.0, 400.0, rng.uniform(0, 3000))),
                             slo_s=rng.choice((0.03, 0.5)), batch_s=rng.choice((0.0, 0.0, 0.02)))
              for k in range(rng.randrange(1, 30))}
    # Often one model a shard, so that equal models make equal keys and names break the tie.
    names = list(models)
    placement = {name: shards[k] if k < len(shards) and seed % 2 else rng.choice(shards)
                 for k, name in enumerate(names)}
    busy = sorted(set(placement.values()))
    slots = rng.randrange(len(busy), 80)
    assert delay_quotas(placement, models, busy, slots) == _scan_quotas(placement, models, busy, slots)


def test_delay_quotas_give_a_tied_slot_to_the_later_name() -> None:
    """Equal keys (no late requests either way, equal demand per slot): the later name wins, as
    the scan's `max` over (gain, demand per slot, name) chose."""
    equal = {"a": model("a", 400.0), "b": model("b", 400.0), "c": model("c", 400.0)}
    assert delay_quotas({"a": "A", "b": "B"}, equal, ["A", "B"], 3) == {"A": 1, "B": 2}
    assert delay_quotas({"a": "A", "b": "B", "c": "C"}, equal, ["A", "B", "C"], 5) == {"A": 1, "B": 2, "C": 2}


# ---- mixed fleets (issue 16): slots weighted by the reference slots they are worth ----------

@st.composite
def placement_case(draw: st.DrawFn) -> tuple:
    """Models with random rates, costs, SLOs and hosts, shards, slots and maybe a previous
    assignment (with owners that may no longer be live)."""
    slots = [f"s{i}" for i in range(draw(st.integers(1, 14)))]
    models = []
    for i in range(draw(st.integers(1, 7))):
        hosts = draw(st.lists(st.sampled_from(slots), min_size=1, unique=True))
        models.append(model(f"m{i}", draw(st.floats(0, 3000)), cost=draw(st.floats(1e-5, 0.01)), hosts=sorted(hosts),
                            slo_s=draw(st.sampled_from([0.05, 0.1, 0.5])), batch_s=draw(st.sampled_from([0.0, 0.01]))))
    shards = [f"sh{i}" for i in range(draw(st.integers(0, 4)))]
    previous = None
    if draw(st.booleans()) and shards:
        owners = ["sh0", "gone", *shards]
        previous = Assignment(epoch=3, models={m.name: draw(st.sampled_from(owners)) for m in models},
                              slots={s: draw(st.sampled_from(owners)) for s in slots})
    quotas = draw(st.sampled_from(["delay", "demand"]))
    return previous, models, shards, slots, PlacementConfig(quotas=quotas)


@settings(max_examples=300, deadline=None)
@given(placement_case())
def test_weights_of_one_reproduce_the_homogeneous_assignment(case: tuple) -> None:
    """Every slot worth one reference slot: the weighted arithmetic (quotas by summed weight,
    desired slots by weighted count) decides exactly what the integer one does."""
    previous, models, shards, slots, config = case
    plain = plan_assignment(previous, models, shards, slots, config)
    weighted = plan_assignment(previous, models, shards, slots, config, weights=dict.fromkeys(slots, 1.0))
    assert weighted == plain


@given(st.floats(0, 50), st.integers(0, 20))
def test_weighted_count_of_ones_is_the_ceiling(need: float, slots: int) -> None:
    assert weighted_count(need, [1.0] * slots) == math.ceil(need - 1e-9)


def test_weighted_count_takes_the_first_slots_whose_weights_cover_the_need() -> None:
    assert weighted_count(3.0, [2.0, 2.0, 1.0]) == 2
    assert weighted_count(4.0, [2.0, 2.0, 1.0]) == 2
    assert weighted_count(4.5, [2.0, 2.0, 1.0]) == 3
    assert weighted_count(7.2, [2.0, 2.0, 1.0]) == 6, "past the slots listed, reference slots"
    assert weighted_count(0.0, [2.0]) == 0


def test_fast_slots_rank_first_and_equal_weights_keep_the_order() -> None:
    ranked = ["gpu-1", "gpu-2", "gpu-10"]
    assert rank_slots(ranked, {}) == ranked
    assert rank_slots(ranked, dict.fromkeys(ranked, 1.0)) == ranked
    assert rank_slots(ranked, {"gpu-1": 1.0, "gpu-2": 1.0, "gpu-10": 2.0}) == ["gpu-10", "gpu-1", "gpu-2"]


def test_one_fast_slot_covers_the_demand_of_two_slow_ones() -> None:
    """Desired slots: demand of 1.6 reference slots at 80% needs two slow slots or one twice as
    fast. Quotas: a shard whose quota is two reference slots is full with the fast slot."""
    slots = ["fast", "slow0", "slow1", "slow2"]
    weights = {"fast": 2.0, "slow0": 1.0, "slow1": 1.0, "slow2": 1.0}
    models = [model("m", 1600, cost=0.001, hosts=slots)]
    assert plan_assignment(None, models, ["A"], slots).desired_slots == 2
    mixed = plan_assignment(None, models, ["A"], slots, weights=weights)
    assert mixed.desired_slots == 1 and mixed.surplus_slots == 3
    pair = [model("a", 1000, hosts=slots), model("b", 1000, hosts=slots)]
    owners = allocate_slots({}, {"a": "A", "b": "B"}, {m.name: m for m in pair}, {"A": 1.0, "B": 1.0},
                            slots, {"A": 2, "B": 2}, weights)
    held = {shard: sum(weights[s] for s, o in owners.items() if o == shard) for shard in ("A", "B")}
    assert held["A"] >= 2 and held["B"] >= 2
    counts = sorted(list(owners.values()).count(shard) for shard in ("A", "B"))
    assert counts == [1, 3], "one shard holds the fast slot alone, the other the three slow ones"
