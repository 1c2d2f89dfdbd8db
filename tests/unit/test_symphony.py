"""The Symphony policy through `handle()` only: deferral to the frontrun time, dispatch timing,
least-slack matching, drops, slot changes and shutdown (reference §1.8-§1.10)."""

import msgspec

from shard.core.actions import DispatchBatch, DropReason, DropRequests
from shard.core.config import CoreConfig, SchedulableCondition, SlotChoice
from shard.core.events import SHUTDOWN, WAKE_UP, BatchCompleted, RequestArrived, SlotAdded, SlotRemoved
from shard.core.symphony import SymphonyPolicy
from tests.factories import MS, model_config, symphony_with_slots

US = 1000


def dispatches(step) -> list[DispatchBatch]:
    return [a for a in step.actions if isinstance(a, DispatchBatch)]


def test_a_lone_request_waits_until_the_frontrun_time_then_runs_on_the_idle_slot() -> None:
    policy = symphony_with_slots(1)
    step = policy.handle(RequestArrived(0, "resnet"), 0)
    # D = 100 - 2 = 98 ms; frontrun = D - J - E(2) - Ddata = 98 - 0.1 - 7.368 - 0.05 = 90.482 ms;
    # the plan is sent Dctrl + Ddata earlier, at 90.332 ms.
    assert step.actions == []
    assert step.wake_at_ns == 90_332 * US
    step = policy.handle(WAKE_UP, step.wake_at_ns)
    (plan,) = dispatches(step)
    assert plan.request_ids == [0]
    assert plan.slot_id == 0
    assert plan.exec_at_ns == 90_482 * US
    assert plan.finish_at_ns == 90_482 * US + 6_286 * US


def test_each_arrival_moves_the_send_time_earlier() -> None:
    policy = symphony_with_slots(1)
    wakes = [policy.handle(RequestArrived(i, "resnet"), i * MS).wake_at_ns for i in range(5)]
    assert wakes == sorted(wakes, reverse=True)


def test_deferred_requests_leave_together_in_one_batch() -> None:
    policy = symphony_with_slots(1)
    step = None
    for i in range(10):
        step = policy.handle(RequestArrived(i, "resnet"), i * MS)
        assert dispatches(step) == []
    step = policy.handle(WAKE_UP, step.wake_at_ns)
    (plan,) = dispatches(step)
    assert plan.request_ids == list(range(10))
    assert plan.finish_at_ns <= 98 * MS  # the head's deadline, recv + SLO - Dresp


def test_waiting_plans_get_the_freed_slot_least_slack_first() -> None:
    immediate = CoreConfig(schedulable=SchedulableCondition.IMMEDIATELY)
    models = [
        model_config("filler", slo_ms=300, spec="sleep:1000,60000"),
        model_config("loose", slo_ms=100),
        model_config("tight", slo_ms=80),
    ]
    policy = symphony_with_slots(1, models, immediate)
    (filler,) = dispatches(policy.handle(RequestArrived(0, "filler"), 0))
    assert policy.handle(RequestArrived(1, "loose"), 1 * MS).actions == []
    step = policy.handle(RequestArrived(2, "tight"), 1 * MS)
    assert step.actions == []
    # The slot timer offers the slot Dctrl + Ddata before it frees, to the least-slack plan.
    assert step.wake_at_ns == filler.finish_at_ns - 150 * US
    step = policy.handle(WAKE_UP, step.wake_at_ns)
    (first,) = dispatches(step)
    assert first.model == "tight"
    assert first.exec_at_ns == filler.finish_at_ns
    step = policy.handle(WAKE_UP, step.wake_at_ns)
    (second,) = dispatches(step)
    assert second.model == "loose"
    assert second.exec_at_ns == first.finish_at_ns


def test_a_request_that_cannot_meet_its_deadline_is_dropped_with_a_reason() -> None:
    policy = symphony_with_slots(1)
    step = policy.handle(RequestArrived(0, "resnet", slo_ns=5 * MS), 0)  # E(1) alone is 6.3 ms
    assert step.actions == [DropRequests("resnet", [0], DropReason.DEADLINE)]


def test_unknown_model_is_dropped_at_once() -> None:
    policy = symphony_with_slots(1)
    step = policy.handle(RequestArrived(0, "nope"), 0)
    assert step.actions == [DropRequests("nope", [0], DropReason.UNKNOWN_MODEL)]


def test_full_queue_rejects_as_overloaded() -> None:
    policy = symphony_with_slots(0, config=CoreConfig(queue_len_max=2))
    for i in range(2):
        assert policy.handle(RequestArrived(i, "resnet"), i).actions == []
    step = policy.handle(RequestArrived(2, "resnet"), 2)
    assert step.actions == [DropRequests("resnet", [2], DropReason.OVERLOADED)]


def test_without_slots_requests_are_dropped_when_their_deadline_passes() -> None:
    policy = symphony_with_slots(1)
    policy.handle(SlotRemoved(0), 0)
    step = policy.handle(RequestArrived(0, "resnet"), 0)
    dropped: list[int] = []
    while step.wake_at_ns is not None:
        step = policy.handle(WAKE_UP, step.wake_at_ns)
        dropped += [rid for a in step.actions if isinstance(a, DropRequests) for rid in a.request_ids]
    assert dropped == [0]


def test_a_slot_added_later_serves_waiting_requests() -> None:
    policy = symphony_with_slots(0)
    step = policy.handle(RequestArrived(0, "resnet"), 0)
    step = policy.handle(WAKE_UP, step.wake_at_ns)  # due, but no slot: the plan waits
    assert dispatches(step) == []
    step = policy.handle(SlotAdded(3), 91 * MS)
    (plan,) = dispatches(step)
    assert plan.slot_id == 3


def test_a_late_completion_pushes_the_next_plan_back() -> None:
    policy = symphony_with_slots(1, config=CoreConfig(schedulable=SchedulableCondition.IMMEDIATELY))
    (first,) = dispatches(policy.handle(RequestArrived(0, "resnet"), 0))
    late = first.finish_at_ns + 3 * MS
    policy.handle(RequestArrived(1, "resnet"), first.finish_at_ns - 1 * MS)  # waits for the slot
    step = policy.handle(BatchCompleted(0, first.plan_id, first.exec_at_ns, late), first.finish_at_ns)
    assert dispatches(step) == []
    step = policy.handle(WAKE_UP, step.wake_at_ns)
    (second,) = dispatches(step)
    assert second.exec_at_ns >= late


def test_shutdown_releases_every_held_request() -> None:
    policy = symphony_with_slots(1)
    for i in range(3):
        policy.handle(RequestArrived(i, "resnet"), i)
    step = policy.handle(SHUTDOWN, 10)
    assert step.actions == [DropRequests("resnet", [0, 1, 2], DropReason.SHUTDOWN)]
    assert step.wake_at_ns is None


def test_eager_dispatches_at_once_to_an_idle_slot() -> None:
    from shard.core.policies import make_policy

    policy = make_policy("eager", [model_config()])
    policy.handle(SlotAdded(0), 0)
    (plan,) = dispatches(policy.handle(RequestArrived(0, "resnet"), 0))
    assert plan.exec_at_ns == 150 * US  # now + Dctrl + Ddata


def test_actions_are_msgspec_records() -> None:
    policy = symphony_with_slots(1)
    step = policy.handle(RequestArrived(0, "resnet", slo_ns=1), 0)
    assert msgspec.json.decode(msgspec.json.encode(step.actions[0]))["reason"] == "deadline"


def _slots_used(config: CoreConfig, ranks: list[int] | None = None) -> list[int]:
    """Sixty lone requests, 20 ms apart, on four slots: which slot ran each batch."""
    policy = SymphonyPolicy([model_config()], config)
    for slot in range(4):
        policy.handle(SlotAdded(slot, rank=None if ranks is None else ranks[slot]), 0)
    used, wake = [], None
    for i in range(60):
        at = i * 20 * MS
        while wake is not None and wake <= at:
            step = policy.handle(WAKE_UP, wake)
            used += [p.slot_id for p in dispatches(step)]
            wake = step.wake_at_ns
        step = policy.handle(RequestArrived(i, "resnet"), at)
        used += [p.slot_id for p in dispatches(step)]
        wake = step.wake_at_ns
    return used


def test_grants_pack_onto_the_most_preferred_free_slot() -> None:
    """Issue 13: at light load every batch runs on the first slot; the reference's choice (the
    earliest-free slot, among idle ones the longest idle) spreads them round robin."""
    assert set(_slots_used(CoreConfig())) == {0}
    assert set(_slots_used(CoreConfig(slot_choice=SlotChoice.EARLIEST))) == {0, 1, 2, 3}
    assert set(_slots_used(CoreConfig(), ranks=[3, 1, 0, 2])) == {2}  # rank 0 is slot 2


def test_a_busy_preferred_slot_passes_the_grant_to_the_next_free_one() -> None:
    policy = symphony_with_slots(3, config=CoreConfig(schedulable=SchedulableCondition.IMMEDIATELY))
    first = dispatches(policy.handle(RequestArrived(0, "resnet"), 0))
    second = dispatches(policy.handle(RequestArrived(1, "resnet"), 1 * US))
    assert [p.slot_id for p in first + second] == [0, 1]
    policy.handle(BatchCompleted(0, first[0].plan_id, 0, 7 * MS), 7 * MS)
    third = dispatches(policy.handle(RequestArrived(2, "resnet"), 8 * MS))
    assert [p.slot_id for p in third] == [0]  # free again, and preferred over the idle slot 2


def _slot_of_a_plan_starting_after_the_first_finishes(pack_guard_ns: int, after_ns: int) -> int:
    """Two slots; the second plan starts `after_ns` after the first plan's predicted finish,
    whose completion has not been reported (it is overrunning once that time has passed)."""
    config = CoreConfig(schedulable=SchedulableCondition.IMMEDIATELY, pack_guard_ns=pack_guard_ns)
    policy = symphony_with_slots(2, config=config)
    (first,) = dispatches(policy.handle(RequestArrived(0, "resnet"), 0))
    send_ns = first.exec_at_ns  # Dctrl + Ddata: the first plan was sent at 0
    (second,) = dispatches(policy.handle(RequestArrived(1, "resnet"), first.finish_at_ns - send_ns + after_ns))
    assert first.slot_id == 0 and second.exec_at_ns == first.finish_at_ns + after_ns
    return second.slot_id


def test_a_plan_packs_behind_a_busy_slot_only_with_the_guard_to_spare() -> None:
    """A batch that overruns its profile by a few ms (live, on a busy host) would expire the plan
    packed right behind it while the other slot sat idle (a fresh clone's CI saw it)."""
    assert _slot_of_a_plan_starting_after_the_first_finishes(pack_guard_ns=0, after_ns=1 * US) == 0
    assert _slot_of_a_plan_starting_after_the_first_finishes(pack_guard_ns=5 * MS, after_ns=1 * US) == 1
    # Overdue: sent 1 ms after the first plan should have finished, which it has not reported.
    assert _slot_of_a_plan_starting_after_the_first_finishes(pack_guard_ns=5 * MS, after_ns=1 * MS) == 1
