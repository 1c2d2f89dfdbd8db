"""Symphony+ (issue 3): below the utilisation threshold it decides exactly as Symphony does;
above it, a near-target batch runs at once on a free slot instead of at its frontrun time."""

import msgspec

from load.sim.kernel import SimOptions, simulate
from shard.core.actions import DispatchBatch
from shard.core.config import CoreConfig
from shard.core.events import RequestArrived
from shard.core.policies import PLUS, make_policy
from tests.factories import MS, model_config, symphony_with_slots, workload


def test_below_the_threshold_early_dispatch_changes_nothing() -> None:
    loaded = workload(slots=4, rps=400, seconds=3)  # about 12% utilisation
    faithful = simulate(loaded, "symphony", SimOptions())
    early = msgspec.structs.replace(CoreConfig(), **{**PLUS, "drop_beta": 1.0})
    plus = simulate(loaded, "symphony", SimOptions(core=early))
    assert plus.batches == faithful.batches
    assert plus.outcome == faithful.outcome


def test_above_the_threshold_a_near_target_batch_runs_at_once_on_a_free_slot() -> None:
    config = msgspec.structs.replace(
        CoreConfig(), early_dispatch=True, early_utilization_min=0.0, early_cost_slack=10.0
    )
    policy = symphony_with_slots(2, config=config)
    step = policy.handle(RequestArrived(0, "resnet"), 0)
    (plan,) = [a for a in step.actions if isinstance(a, DispatchBatch)]
    assert plan.exec_at_ns == 150_000  # now + Dctrl + Ddata, not the frontrun time (90.5 ms)


def test_early_dispatch_waits_when_the_batch_is_far_costlier_than_the_target() -> None:
    config = msgspec.structs.replace(
        CoreConfig(), early_dispatch=True, early_utilization_min=0.0, early_cost_slack=0.1
    )
    policy = symphony_with_slots(2, config=config)
    step = policy.handle(RequestArrived(0, "resnet"), 0)  # batch 1 vs target 39: 4.7x the cost
    assert step.actions == []
    assert step.wake_at_ns == 90_332_000


def _reservation_case(horizon_ms: int) -> list[DispatchBatch]:
    config = msgspec.structs.replace(
        CoreConfig(), early_dispatch=True, early_utilization_min=0.0, early_cost_slack=0.1,
        reserve_horizon_ns=horizon_ms * MS,
    )
    models = [model_config("tight", slo_ms=60), model_config("flat", slo_ms=300, spec="sleep:1000,0")]
    policy = symphony_with_slots(1, models, config)
    # "tight" (batch 1 costs 4.7x its target's) waits; it falls due at 50.3 ms.
    assert policy.handle(RequestArrived(0, "tight"), 0).actions == []
    # "flat" costs the same per request at any batch size, so it is eligible to go early.
    step = policy.handle(RequestArrived(1, "flat"), 1 * MS)
    return [a for a in step.actions if isinstance(a, DispatchBatch)]


def test_reservation_keeps_the_only_slot_for_a_plan_falling_due_within_the_horizon() -> None:
    assert _reservation_case(horizon_ms=60) == []


def test_without_reservation_the_early_batch_takes_the_slot() -> None:
    (plan,) = _reservation_case(horizon_ms=0)
    assert plan.model == "flat" and plan.exec_at_ns == 1 * MS + 150_000


def test_symphony_plus_is_registered_with_the_tuned_values() -> None:
    policy = make_policy("symphony-plus", [])
    assert policy.name == "symphony-plus"
    assert policy.config.drop_beta == PLUS["drop_beta"]
    assert policy.config.early_dispatch is True
