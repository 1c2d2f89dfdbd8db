"""Baselines behave as their systems do (reference §4), through `handle()` only."""

import math

import pytest

from schemas.profile import profile_from_sleep_spec
from shard.core.actions import DispatchBatch, DropReason, DropRequests, PreemptBatch
from shard.core.baselines.nexus_plan import NexusModel, compute_batch_size
from shard.core.baselines.shepherd import ShepherdPolicy
from shard.core.baselines.triton import TritonModelSettings, TritonPolicy
from shard.core.config import CoreConfig, ModelConfig, SlotProfiles
from shard.core.events import WAKE_UP, BatchCompleted, RequestArrived, SlotAdded
from shard.core.latency import LatencyModel
from shard.core.policies import make_policy
from tests.factories import MS, model_config, resnet_latency

US = 1000


def of_type(step, kind):
    return [a for a in step.actions if isinstance(a, kind)]


# ---- Triton -------------------------------------------------------------------------------
def triton(delay_ms: float = 10, batch_max: int = 4, timeout_ms: float = 0) -> TritonPolicy:
    settings = TritonModelSettings(
        batch_size_max=batch_max, max_queue_delay_ns=int(delay_ms * MS), queue_timeout_ns=int(timeout_ms * MS)
    )
    policy = TritonPolicy([model_config()], settings={"resnet": settings})
    policy.handle(SlotAdded(0), 0)
    return policy


def test_triton_sends_a_full_batch_at_once() -> None:
    policy = triton(batch_max=3)
    for i in range(2):
        assert of_type(policy.handle(RequestArrived(i, "resnet"), i), DispatchBatch) == []
    (plan,) = of_type(policy.handle(RequestArrived(2, "resnet"), 2), DispatchBatch)
    assert plan.request_ids == [0, 1, 2]


def test_triton_sends_a_partial_batch_after_the_max_queue_delay() -> None:
    policy = triton(delay_ms=10)
    step = policy.handle(RequestArrived(0, "resnet"), 0)
    assert step.wake_at_ns == 10 * MS
    (plan,) = of_type(policy.handle(WAKE_UP, 10 * MS), DispatchBatch)
    assert plan.request_ids == [0]


def test_triton_rejects_requests_that_waited_past_the_queue_timeout() -> None:
    policy = triton(delay_ms=1, batch_max=1, timeout_ms=5)
    (busy,) = of_type(policy.handle(RequestArrived(0, "resnet"), 0), DispatchBatch)
    policy.handle(RequestArrived(1, "resnet"), 1 * MS)  # waits: the only slot is busy
    step = policy.handle(WAKE_UP, 6 * MS)
    assert of_type(step, DropRequests) == [DropRequests("resnet", [1], DropReason.QUEUE_TIMEOUT)]


def test_triton_default_settings_fit_half_the_slo() -> None:
    policy = make_policy("triton", [model_config()])
    policy.handle(SlotAdded(0), 0)
    step = policy.handle(RequestArrived(0, "resnet"), 0)
    # largest b with E(b) + Dctrl + Ddata*b <= 49 ms is 38; the delay is what that batch leaves
    assert step.wake_at_ns == (98 * MS - resnet_latency().exec(38) - 100 * US - 38 * 50 * US)


# ---- Shepherd and Clockwork ---------------------------------------------------------------
def test_shepherd_dispatches_eagerly_to_an_idle_slot() -> None:
    policy = ShepherdPolicy([model_config()])
    policy.handle(SlotAdded(0), 0)
    (plan,) = of_type(policy.handle(RequestArrived(0, "resnet"), 0), DispatchBatch)
    assert plan.exec_at_ns == 100 * US  # Shepherd's Dctrl 25 us + Ddata 75 us


def test_shepherd_preempts_when_the_new_batch_is_lambda_times_larger() -> None:
    policy = ShepherdPolicy([model_config("small", slo_ms=400), model_config("big", slo_ms=400)])
    policy.handle(SlotAdded(0), 0)
    (running,) = of_type(policy.handle(RequestArrived(0, "small"), 0), DispatchBatch)
    for i in range(1, 4):  # 3 < 3.03 x 1: no preemption yet
        assert of_type(policy.handle(RequestArrived(i, "big"), 1 * MS), PreemptBatch) == []
    step = policy.handle(RequestArrived(4, "big"), 1 * MS)
    assert of_type(step, PreemptBatch) == [PreemptBatch(0, running.plan_id)]
    (plan,) = of_type(step, DispatchBatch)
    assert plan.model == "big" and plan.request_ids == [1, 2, 3, 4]


def test_clockwork_never_preempts_and_takes_the_largest_batch_when_a_slot_frees() -> None:
    policy = make_policy("clockwork", [model_config("a", slo_ms=400), model_config("b", slo_ms=400)])
    policy.handle(SlotAdded(0), 0)
    (running,) = of_type(policy.handle(RequestArrived(0, "a"), 0), DispatchBatch)
    policy.handle(RequestArrived(1, "a"), 1 * MS)
    for i in range(2, 6):
        assert of_type(policy.handle(RequestArrived(i, "b"), 1 * MS), PreemptBatch) == []
    step = policy.handle(BatchCompleted(0, running.plan_id, running.exec_at_ns, running.finish_at_ns),
                         running.finish_at_ns)
    (plan,) = of_type(step, DispatchBatch)
    assert plan.model == "b" and plan.request_ids == [2, 3, 4, 5]


def _stall_setup(fixed: bool):
    policy = ShepherdPolicy([model_config(slo_ms=100)], fixed=fixed)
    policy.handle(SlotAdded(0), 0)
    (busy,) = of_type(policy.handle(RequestArrived(0, "resnet"), 0), DispatchBatch)
    policy.handle(RequestArrived(1, "resnet"), 1 * MS)  # will be expired when the slot frees
    # At 98 ms request 1 (deadline 101 ms) can no longer finish even alone; request 2 can.
    arrival = policy.handle(RequestArrived(2, "resnet"), 98 * MS)
    done = policy.handle(BatchCompleted(0, busy.plan_id, busy.exec_at_ns, busy.finish_at_ns), 99 * MS)
    return [*arrival.actions, *done.actions]


def test_faithful_shepherd_stalls_on_an_expired_head() -> None:
    actions = _stall_setup(fixed=False)
    assert actions == []  # nothing dropped, nothing run: line 4 looks at the newest request


def test_fixed_shepherd_drops_the_expired_head_and_serves_the_rest() -> None:
    actions = _stall_setup(fixed=True)
    assert [a for a in actions if isinstance(a, DropRequests)] == [
        DropRequests("resnet", [1], DropReason.DEADLINE)
    ]
    (plan,) = [a for a in actions if isinstance(a, DispatchBatch)]
    assert plan.request_ids == [2]


# ---- Nexus --------------------------------------------------------------------------------
def test_nexus_saturating_plan_runs_max_batch_under_half_the_slo() -> None:
    model = NexusModel.from_latency("r", 100 * MS, resnet_latency())
    inst = compute_batch_size(model, 0.0)
    assert inst.batch == model.max_batch == 40  # l(b) <= (100 - 2) / 2 ms
    assert inst.throughput == pytest.approx(40 / (1082 * 40 + 5204) * 1e6)


def test_nexus_plan_for_a_light_load_waits_for_its_batch_within_the_slo() -> None:
    model = NexusModel.from_latency("r", 100 * MS, resnet_latency())
    inst = compute_batch_size(model, 100.0)
    assert (inst.batch - 1) / 100 * 1e6 + model.l(inst.batch) <= 100_000
    assert (inst.batch) / 100 * 1e6 + model.l(inst.batch + 1) > 100_000


def test_nexus_needs_a_slot_per_model_at_first() -> None:
    policy = make_policy("nexus", [model_config("a"), model_config("b")])
    policy.handle(SlotAdded(0), 0)
    steps = [policy.handle(RequestArrived(i, name), i) for i, name in enumerate(["a", "b"])]
    drops = [a for s in steps for a in of_type(s, DropRequests)]
    assert drops == [DropRequests("b", [1], DropReason.NO_SLOT)]


def test_nexus_warm_plans_several_slots_for_a_heavy_model() -> None:
    heavy = model_config("heavy")
    heavy = type(heavy)(name=heavy.name, slo_ns=heavy.slo_ns, profile=heavy.profile, rate_hint_rps=2000.0)
    policy = make_policy("nexus-warm", [heavy])
    for slot in range(4):
        policy.handle(SlotAdded(slot), 0)
    slots = set()
    now = 0
    for i in range(400):
        now += 500 * US
        step = policy.handle(RequestArrived(i, "heavy"), now)
        while step.wake_at_ns is not None and step.wake_at_ns <= now + 500 * US:
            slots |= {a.slot_id for a in of_type(step, DispatchBatch)}
            step = policy.handle(WAKE_UP, step.wake_at_ns)
        slots |= {a.slot_id for a in of_type(step, DispatchBatch)}
    assert len(slots) >= 3
    assert not math.isnan(now)


# ---- Mixed fleets (issue 16): each slot planned with its own class's profile ---------------
MIXED_SPEC = "sleep:1082,5204,400,400"
SLOW = profile_from_sleep_spec(MIXED_SPEC)
CLASS_PROFILES = {"slow": SLOW, "fast": SLOW.at_speed(2.0)}
SLO_AWARE = ["clockwork", "shepherd", "shepherd-fixed", "nexus", "nexus-warm"]
PER_SLOT, SLOWEST = CoreConfig(), CoreConfig(slot_profiles=SlotProfiles.SLOWEST)
GAP_NS = 500_000  # between arrivals in the mixed run


def mixed_model(*, classes: bool = True) -> ModelConfig:
    """One model whose `profile` is the slow class's (the slowest), with a class 2x as fast."""
    return ModelConfig(name="resnet", slo_ns=100 * MS, profile=SLOW, rate_hint_rps=2000.0,
                       class_profiles=CLASS_PROFILES if classes else {})


def planned_ns(policy: str, slot_class: str, size: int) -> int:
    """What the policy predicts a batch runs on a slot of this class: Triton E(b) on the
    monotone profile, Shepherd and Nexus l(b) on the raw one (their reference estimates)."""
    profile = CLASS_PROFILES.get(slot_class, SLOW)
    if policy == "triton":
        return LatencyModel(profile).exec(size)
    return LatencyModel(profile, monotone=False).forward(size)


def drive(policy, slots: dict[int, str], arrivals_ns: list[int]) -> list[DispatchBatch]:
    """Exact time: request i arrives at arrivals_ns[i]; every batch finishes as predicted."""
    for slot_id, slot_class in slots.items():
        policy.handle(SlotAdded(slot_id, slot_class=slot_class), 0)
    running: dict[int, DispatchBatch] = {}
    plans: list[DispatchBatch] = []
    wake, index = None, 0
    while index < len(arrivals_ns) or running or wake is not None:
        done = min(running.values(), key=lambda p: (p.finish_at_ns, p.slot_id)) if running else None
        arrival = arrivals_ns[index] if index < len(arrivals_ns) else None
        now = min(t for t in (done.finish_at_ns if done else None, arrival, wake) if t is not None)
        if done is not None and done.finish_at_ns == now:
            del running[done.slot_id]
            step = policy.handle(BatchCompleted(done.slot_id, done.plan_id, done.exec_at_ns, now), now)
        elif arrival == now:
            step = policy.handle(RequestArrived(index, "resnet"), now)
            index += 1
        else:
            step = policy.handle(WAKE_UP, now)
        wake = step.wake_at_ns
        for plan in of_type(step, DispatchBatch):
            running[plan.slot_id] = plan  # replaces a preempted batch
            plans.append(plan)
    return plans


def burst_on(name: str, slot_class: str) -> list[DispatchBatch]:
    """200 requests at once on one slot of `slot_class`."""
    return drive(make_policy(name, [mixed_model()], PER_SLOT), {0: slot_class}, [0] * 200)


@pytest.mark.parametrize("name", [*SLO_AWARE, "triton"])
def test_a_fast_slot_runs_batches_at_least_as_large_and_predicts_its_own_run_time(name: str) -> None:
    sizes = {}
    for slot_class in ("slow", "fast"):
        plans = burst_on(name, slot_class)
        for plan in plans:
            assert plan.finish_at_ns - plan.exec_at_ns == planned_ns(name, slot_class, len(plan.request_ids))
        sizes[slot_class] = max(len(plan.request_ids) for plan in plans)
    if name == "triton":  # SLO-blind: its settings are the slowest profile's on every slot
        assert sizes["fast"] == sizes["slow"]
    else:
        assert sizes["fast"] > sizes["slow"]


def mixed_run(name: str, config: CoreConfig, *, classes: bool, slot_classes: tuple[str, str]) -> list[DispatchBatch]:
    """A slow and a fast slot under a steady load that needs both (2000/s for 0.4 s)."""
    policy = make_policy(name, [mixed_model(classes=classes)], config)
    return drive(policy, dict(enumerate(slot_classes)), [i * GAP_NS for i in range(800)])


@pytest.mark.parametrize("name", [*SLO_AWARE, "triton"])
def test_in_a_mixed_fleet_every_batch_is_timed_on_the_slot_it_runs_on(name: str) -> None:
    plans = mixed_run(name, PER_SLOT, classes=True, slot_classes=("slow", "fast"))
    classes = {0: "slow", 1: "fast"}
    for plan in plans:
        assert plan.finish_at_ns - plan.exec_at_ns == planned_ns(name, classes[plan.slot_id], len(plan.request_ids))
        if name != "triton":  # deadline-aware: predicted to meet recv + SLO on its own slot
            assert plan.finish_at_ns <= min(plan.request_ids) * GAP_NS + 100 * MS
    assert {plan.slot_id for plan in plans} == ({1} if name == "nexus" else {0, 1})  # nexus: one slot until 30 s


@pytest.mark.parametrize("name", [*SLO_AWARE, "triton"])
def test_without_classes_or_in_slowest_mode_batches_are_unchanged(name: str) -> None:
    before = mixed_run(name, PER_SLOT, classes=False, slot_classes=("", ""))
    assert before == mixed_run(name, SLOWEST, classes=True, slot_classes=("slow", "fast"))
    assert before == mixed_run(name, PER_SLOT, classes=True, slot_classes=("", ""))
    assert before == mixed_run(name, PER_SLOT, classes=False, slot_classes=("slow", "fast"))
