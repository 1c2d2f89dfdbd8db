"""The analytic bound: b* and its cost for the reference example profile."""

import pytest

from load.bound import analytic_bound, best_batch
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
