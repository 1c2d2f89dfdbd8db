"""Property test of the Symphony core on slots of different speed (issue 16): on random models,
speeds, settings and bursts, every dispatch is predicted with the profile of the slot it runs on
(never a faster one), starts when that slot is free, finishes by every request's deadline, and
every request is answered exactly once (dispatched or dropped) — in per-slot and slowest mode."""

import random

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.profile import profile_from_sleep_spec
from shard.core.config import CoreConfig, DropPolicy, ModelConfig, SchedulableCondition, SlotChoice, SlotProfiles
from shard.core.policies import plus_config
from tests.mixed_driver import MixedRun

SPEEDS = [1.0, 0.5, 0.25]


def _model(i: int, slope_us: int, intercept_us: int, slo_ms: int, batch_max: int, speeds: set[float]) -> ModelConfig:
    base = profile_from_sleep_spec(f"sleep:{slope_us},{intercept_us}", batch_max)
    classes = {f"x{s:g}": base.at_speed(s) for s in speeds}
    return ModelConfig(name=f"m{i}", slo_ns=slo_ms * 1_000_000, profile=base.at_speed(min(speeds)),
                       class_profiles=classes)


def _arrivals(models: list[ModelConfig], rates: list[int], seed: int, seconds: float) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    arrivals = []
    for model, rate in zip(models, rates, strict=True):
        at = 0
        while True:
            at += int(rng.expovariate(rate) * 1e9) if rng.random() > 0.3 else 0  # bursts of ties
            if at >= seconds * 1e9:
                break
            arrivals.append((at, model.name))
    arrivals.sort(key=lambda a: a[0])
    return arrivals


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.tuples(st.sampled_from([20, 300, 1082, 4000]), st.sampled_from([500, 5204, 15000]),
                              st.sampled_from([30, 100, 400]), st.sampled_from([1, 8, 499]),
                              st.sampled_from([50, 400, 2000])), min_size=1, max_size=3),
    speeds=st.lists(st.sampled_from(SPEEDS), min_size=1, max_size=6),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(list(SlotProfiles)),
    plus=st.booleans(),
    drop=st.sampled_from([DropPolicy.WINDOW_DROP, DropPolicy.DROP_TIMEOUT]),
    condition=st.sampled_from([SchedulableCondition.FRONTRUN, SchedulableCondition.IMMEDIATELY,
                               SchedulableCondition.TARGET_BATCH_SIZE]),
    choice=st.sampled_from(list(SlotChoice)),
)
def test_mixed_slots_keep_the_invariants(shapes, speeds, seed, mode, plus, drop, condition, choice) -> None:
    models = [_model(i, slope, intercept, slo, batch_max, set(speeds))
              for i, (slope, intercept, slo, batch_max, _rate) in enumerate(shapes)]
    config = CoreConfig(slot_profiles=mode, drop=drop, schedulable=condition, slot_choice=choice)
    if plus:
        config = plus_config(config)
    arrivals = _arrivals(models, [shape[4] for shape in shapes], seed, 0.6)
    run = MixedRun(models, [f"x{s:g}" for s in speeds], config)
    run.run(arrivals)  # the driver asserts each dispatch on the slot it runs on
    answered = [r for d in run.dispatches for r in d.request_ids] + run.dropped
    assert sorted(answered) == list(range(len(arrivals)))
    again = MixedRun(models, [f"x{s:g}" for s in speeds], config)
    again.run(arrivals)
    assert msgspec.json.encode(again.dispatches) == msgspec.json.encode(run.dispatches)
