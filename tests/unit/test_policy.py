"""The step contract as the drivers use it (shard/core/policy.py), for Symphony, Symphony+ and
every baseline alike, through `handle()` and the protocol's members only: a dispatch the shell
could not send frees its slot at once, exactly as a batch finished the moment it was granted
(the shell's fake completion before `DispatchFailed`) would; `stats()` counts what each model
holds; `resp_ns` is the configured reply trip."""

import heapq
from collections.abc import Callable
from itertools import count

import pytest

from shard.core.actions import DispatchBatch, DropRequests, Step
from shard.core.config import CoreConfig
from shard.core.events import WAKE_UP, BatchCompleted, DispatchFailed, Event, RequestArrived, SlotAdded
from shard.core.policies import POLICIES, make_policy
from tests.factories import MS, model_config

ALL = sorted(POLICIES)
US = 1000


def dispatches(step: Step) -> list[DispatchBatch]:
    return [a for a in step.actions if isinstance(a, DispatchBatch)]


def trace_with_first_plan_unsent(name: str, unsent: Callable[[DispatchBatch, int], Event]) -> list[Step]:
    """One slot kept busy by a request every 0.5 ms for 40 ms; the first plan gets
    `unsent(plan, now)` at once, every later plan completes at its predicted finish. Returns
    every step, in order."""
    policy = make_policy(name, [model_config()])
    trace: list[Step] = []
    seq = count()
    events = [(k * MS // 2, next(seq), RequestArrived(k, "resnet")) for k in range(80)]
    wake: int | None = None
    first = True

    def absorb(step: Step, now: int) -> None:
        nonlocal wake, first
        trace.append(step)
        wake = step.wake_at_ns
        for plan in dispatches(step):
            if first:
                first = False
                absorb(policy.handle(unsent(plan, now), now), now)
            else:
                done = BatchCompleted(plan.slot_id, plan.plan_id, plan.exec_at_ns, plan.finish_at_ns)
                heapq.heappush(events, (plan.finish_at_ns, next(seq), done))

    absorb(policy.handle(SlotAdded(0), 0), 0)
    while events or wake is not None:
        if wake is not None and (not events or wake < events[0][0]):
            now, event = wake, WAKE_UP
        else:
            now, _, event = heapq.heappop(events)
        absorb(policy.handle(event, now), now)
    assert not first, "no plan was dispatched"
    return trace


@pytest.mark.parametrize("name", ALL)
def test_a_failed_dispatch_frees_the_slot_as_a_batch_finished_at_once_would(name: str) -> None:
    failed = trace_with_first_plan_unsent(name, lambda plan, _now: DispatchFailed(plan.slot_id, plan.plan_id))
    finished = trace_with_first_plan_unsent(
        name, lambda plan, now: BatchCompleted(plan.slot_id, plan.plan_id, now, now))
    assert failed == finished
    assert sum(len(dispatches(step)) for step in failed) > 1


@pytest.mark.parametrize("name", ["eager", "clockwork", "shepherd", "shepherd-fixed"])
def test_a_waiting_request_runs_at_once_on_the_slot_a_failed_dispatch_gave_back(name: str) -> None:
    policy = make_policy(name, [model_config()])
    policy.handle(SlotAdded(0), 0)
    (unsent,) = dispatches(policy.handle(RequestArrived(0, "resnet"), 0))
    assert dispatches(policy.handle(RequestArrived(1, "resnet"), 1 * MS)) == []  # the slot is busy
    (second,) = dispatches(policy.handle(DispatchFailed(0, unsent.plan_id), 1 * MS))
    assert second.request_ids == [1]
    assert second.exec_at_ns < unsent.finish_at_ns


@pytest.mark.parametrize("name", ALL)
def test_a_failed_dispatch_of_a_plan_the_policy_does_not_know_changes_nothing(name: str) -> None:
    policy = make_policy(name, [model_config()])
    policy.handle(SlotAdded(0), 0)
    assert policy.handle(DispatchFailed(0, 999), 0).actions == []
    assert policy.handle(DispatchFailed(7, 1), 0).actions == []


@pytest.mark.parametrize("name", ALL)
def test_stats_count_the_requests_each_model_holds(name: str) -> None:
    policy = make_policy(name, [model_config(), model_config("other", slo_ms=200)])
    policy.handle(SlotAdded(0), 0)
    held: set[int] = set()
    for k in range(6):
        held.add(k)
        step = policy.handle(RequestArrived(k, "resnet"), k * US)
        for action in step.actions:
            if isinstance(action, (DispatchBatch, DropRequests)):
                held -= set(action.request_ids)
    stats = policy.stats()
    assert set(stats) == {"resnet", "other"}
    assert stats["resnet"].pending == len(held)
    assert stats["other"].pending == 0
    pending, target, rate = stats["resnet"]  # a plain tuple for the drivers that unpack it
    assert target >= 0 and rate >= 0.0


@pytest.mark.parametrize("name", ALL)
def test_every_policy_reports_the_configured_reply_trip(name: str) -> None:
    assert make_policy(name, [model_config()], CoreConfig(resp_ns=3_000_000)).resp_ns == 3_000_000
