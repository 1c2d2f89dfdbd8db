"""Slots of different speed (issue 16): the Symphony core plans each slot with its own class's
profile; with one class, or `slot_profiles = slowest`, it plans exactly as before."""

import random

import msgspec
import pytest

from shard.core.actions import DispatchBatch
from shard.core.config import CoreConfig, ModelConfig, SlotProfiles
from shard.core.events import WAKE_UP, RequestArrived, SlotAdded, SlotRemoved
from shard.core.policies import plus_config
from shard.core.symphony import SymphonyPolicy
from tests.factories import MS, model_config
from tests.mixed_driver import MixedRun


def two_speed(name: str = "m", *, slo_ms: float = 100, spec: str = "sleep:1082,5204", slow: float = 0.5) -> ModelConfig:
    """A model whose `slow` class runs at `slow` x the speed of its `fast` class."""
    base = model_config(name, slo_ms=slo_ms, spec=spec)
    fast, slower = base.profile, base.profile.at_speed(slow)
    return msgspec.structs.replace(base, profile=slower, class_profiles={"fast": fast, "slow": slower})


def poisson(rate_rps: float, seconds: float, model: str = "m", seed: int = 1) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    at, arrivals = 0, []
    while at < seconds * 1e9:
        at += int(rng.expovariate(rate_rps) * 1e9)
        arrivals.append((at, model))
    return arrivals


def by_class(run: MixedRun) -> dict[str, list[int]]:
    sizes: dict[str, list[int]] = {}
    for plan in run.dispatches:
        sizes.setdefault(run.slot_classes[plan.slot_id], []).append(len(plan.request_ids))
    return sizes


def dispatches(step) -> list[DispatchBatch]:
    return [a for a in step.actions if isinstance(a, DispatchBatch)]


def test_at_low_load_everything_runs_on_the_fast_slots() -> None:
    run = MixedRun([two_speed()], ["slow", "slow", "fast", "fast"])
    arrivals = poisson(1000, 2.0)
    run.run(arrivals)
    assert run.answered() == len(arrivals) and not run.dropped
    assert set(by_class(run)) == {"fast"}


def test_with_the_fast_slot_booked_the_slow_slot_gets_a_smaller_batch_sent_earlier() -> None:
    run = MixedRun([two_speed()], ["fast", "slow"], plus_config(CoreConfig()))
    arrivals = poisson(1500, 2.0)
    run.run(arrivals)
    sizes = by_class(run)
    assert run.answered() == len(arrivals)
    assert sizes["slow"] and sizes["fast"]
    assert max(sizes["slow"]) < max(sizes["fast"])


def test_a_head_too_late_for_the_slow_class_waits_for_the_fast_one() -> None:
    # SLO 30 ms: E_fast(1) = 6.3 ms, E_slow(1) = 12.6 ms. The fast slot is busy until 20 ms; the
    # request (deadline 28 ms) cannot wait for it on the slow slot's terms but can on the fast's.
    policy = SymphonyPolicy([two_speed(slo_ms=30)], CoreConfig())
    policy.handle(SlotAdded(0, slot_class="fast", free_at_ns=20 * MS), 0)
    policy.handle(SlotAdded(1, slot_class="slow", free_at_ns=20 * MS), 0)
    step = policy.handle(RequestArrived(0, "m"), 0)
    assert step.actions == []
    plans = []
    while step.wake_at_ns is not None and not plans:
        step = policy.handle(WAKE_UP, step.wake_at_ns)
        plans = dispatches(step)
        assert all(not hasattr(a, "reason") for a in step.actions), "dropped a request the fast slot can serve"
    (plan,) = plans
    assert plan.slot_id == 0 and plan.finish_at_ns <= 28 * MS


def test_a_grant_on_the_fast_class_takes_a_larger_batch_than_the_slow_class_could() -> None:
    policy = SymphonyPolicy([two_speed()], CoreConfig())
    policy.handle(SlotAdded(0, slot_class="slow"), 0)
    policy.handle(SlotAdded(1, slot_class="fast", free_at_ns=60 * MS), 0)
    step = None
    for i in range(60):
        step = policy.handle(RequestArrived(i, "m"), i * MS // 2)
        sent = dispatches(step)
        if sent:
            break
    while step.wake_at_ns is not None and not sent:
        step = policy.handle(WAKE_UP, step.wake_at_ns)
        sent = dispatches(step)
    (plan,) = sent
    assert plan.slot_id == 0  # the slow slot, idle, before the fast one frees
    slow = policy._models["m"].by_class[0]  # class 0: the first class to join
    assert plan.finish_at_ns - plan.exec_at_ns == slow.exec_ns[len(plan.request_ids)]


@pytest.mark.parametrize("spec", ["sleep:1082,5204", "sleep:500,20000"])
def test_per_slot_planning_serves_more_than_slowest_near_capacity(spec: str) -> None:
    arrivals = poisson(5000, 3.0)
    served = {}
    for mode in SlotProfiles:
        run = MixedRun([two_speed(spec=spec)], ["fast"] * 4 + ["slow"] * 4,
                       plus_config(CoreConfig(slot_profiles=mode)))
        run.run(arrivals)
        assert run.answered() == len(arrivals)
        served[mode] = len(arrivals) - len(run.dropped)
    assert served[SlotProfiles.PER_SLOT] >= served[SlotProfiles.SLOWEST]


def _dispatch_log(models: list[ModelConfig], config: CoreConfig, slot_classes: list[str],
                  arrivals: list[tuple[int, str]], true_models: list[ModelConfig]) -> list:
    run = MixedRun(models, slot_classes, config, true_models)
    run.run(arrivals)
    return [(d.slot_id, d.request_ids, d.exec_at_ns, d.finish_at_ns) for d in run.dispatches] + [run.dropped]


def test_slowest_mode_plans_exactly_like_the_merged_profile_alone() -> None:
    mixed = two_speed()
    plain = ModelConfig(name="m", slo_ns=mixed.slo_ns, profile=mixed.profile)
    arrivals = poisson(3000, 1.0)
    slowest = CoreConfig(slot_profiles=SlotProfiles.SLOWEST)
    classes = ["fast", "slow", "fast"]
    a = _dispatch_log([mixed], slowest, classes, arrivals, [mixed])
    b = _dispatch_log([plain], CoreConfig(), classes, arrivals, [mixed])  # no class profiles: all slowest
    assert a == b


def test_one_class_plans_exactly_like_that_class_s_profile_alone() -> None:
    mixed = two_speed()
    fast_only = ModelConfig(name="m", slo_ns=mixed.slo_ns, profile=mixed.class_profiles["fast"])
    arrivals = poisson(3000, 1.0)
    a = _dispatch_log([mixed], CoreConfig(), ["fast"] * 3, arrivals, [mixed])
    b = _dispatch_log([fast_only], CoreConfig(), ["fast"] * 3, arrivals, [mixed])
    assert a == b


def test_a_class_that_leaves_and_comes_back_loses_no_request() -> None:
    policy = SymphonyPolicy([two_speed()], plus_config(CoreConfig()))
    for slot, cls in enumerate(["fast", "slow", "slow"]):
        policy.handle(SlotAdded(slot, slot_class=cls), 0)
    answered: set[int] = set()
    wake = None
    arrivals = poisson(800, 1.0)
    for i, (at, model) in enumerate(arrivals):
        while wake is not None and wake <= at:
            step = policy.handle(WAKE_UP, wake)
            answered.update(r for a in step.actions for r in getattr(a, "request_ids", []))
            wake = step.wake_at_ns
        events = [RequestArrived(i, model)]
        if i == len(arrivals) // 3:
            events.insert(0, SlotRemoved(0))  # the only fast slot goes
        if i == 2 * len(arrivals) // 3:
            events.insert(0, SlotAdded(3, slot_class="fast", free_at_ns=at))
        for event in events:
            step = policy.handle(event, at)
            answered.update(r for a in step.actions for r in getattr(a, "request_ids", []))
            wake = step.wake_at_ns
    while wake is not None:
        step = policy.handle(WAKE_UP, wake)
        answered.update(r for a in step.actions for r in getattr(a, "request_ids", []))
        wake = step.wake_at_ns
    assert answered == set(range(len(arrivals)))
