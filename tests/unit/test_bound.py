"""The analytic bound: b* and its cost for the reference example profile."""

import msgspec
import pytest

from load.bound import analytic_bound, best_batch, max_scale
from load.workload import load_workload, with_slot_speeds
from shard.core.config import CoreConfig
from tests.factories import MS, resnet_latency, workload


def test_best_batch_for_the_reference_profile() -> None:
    # E(b) <= 100 - 2 - 0.1 - 0.05*b ms  <=>  1.132*b <= 92.696  <=>  b <= 81
    assert best_batch(resnet_latency(), 100 * MS, CoreConfig()) == 81


def test_bound_scale_is_slots_over_demand() -> None:
    loaded = workload(slots=4, rps=500)
    bound = analytic_bound(loaded, 4)
    cost = (1082 * 81 + 5204) / 81 / 1e6
    assert bound.demand_slots_at_scale_1 == pytest.approx(500 * cost)
    assert bound.bound_scale == pytest.approx(4 / (500 * cost))
    assert bound.needed_slots(2.0) == pytest.approx(1000 * cost)


# ---- mixed fleets (issue 16) ------------------------------------------------------------------
def test_the_lp_equals_the_closed_form_for_one_class() -> None:
    loaded = load_workload("example")
    closed = analytic_bound(loaded, 8)
    costs = [[m.cost_s_per_request] for m in closed.models]
    for rates in ([200, 200], [500, 300], [350, 310]):
        demand = sum(r * row[0] for r, row in zip(rates, costs, strict=True))
        assert max_scale(rates, costs, [8]) == pytest.approx(8 / demand, rel=1e-9)
    # two classes with the same profiles are one class split in two
    same = msgspec.structs.replace(loaded, slot_classes=["a"] * 3 + ["b"] * 5,
                                   class_profiles={"a": loaded.profiles, "b": loaded.profiles})
    assert analytic_bound(same, 8).bound_scale == pytest.approx(closed.bound_scale, rel=1e-9)
    assert analytic_bound(same, 8).needed_slots(2.0) == pytest.approx(closed.needed_slots(2.0), rel=1e-9)


def test_a_uniform_fleet_keeps_the_closed_form_on_its_class_profiles() -> None:
    example = load_workload("example")
    half = with_slot_speeds(example, [0.5] * 8)
    slowed = msgspec.structs.replace(example, profiles={m: p.at_speed(0.5) for m, p in example.profiles.items()})
    assert analytic_bound(half, 8) == analytic_bound(slowed, 8)  # bit for bit


def test_two_classes_by_hand() -> None:
    # model 0 runs only on the fast class (1 ms a request), model 1 anywhere (1 ms fast, 2 ms slow);
    # one slot each, 1000 rps each: the slow slot takes 500 rps of model 1, the fast slot serves
    # lambda x 1000 of model 0 and lambda x 1000 - 500 of model 1 in 1 s: lambda = 0.75.
    costs = [[0.001, float("inf")], [0.001, 0.002]]
    assert max_scale([1000, 1000], costs, [1, 1]) == pytest.approx(0.75)
    assert max_scale([1000, 0], costs, [0, 4]) == 0.0  # model 0 has nowhere to run
    assert max_scale([0, 1000], costs, [4, 4]) == pytest.approx(4 / 0.001 / 1000 + 4 / 0.002 / 1000)


def test_the_mixed_bound_is_the_sum_of_its_classes_for_the_example_mix() -> None:
    mixed = load_workload("mixed")
    bound = analytic_bound(mixed, 8)
    fast = analytic_bound(load_workload("example"), 4).bound_scale
    slow = analytic_bound(with_slot_speeds(load_workload("example"), [0.5] * 4), 4).bound_scale
    # each class serving its closed form's share of every model is feasible, so the LP is at least
    # the sum; it gains a little more by sending each model where it is relatively cheapest
    assert fast + slow <= bound.bound_scale <= (fast + slow) * 1.02
    assert bound.models[0].class_costs["x0.5"] > bound.models[0].class_costs["x1.0"]
